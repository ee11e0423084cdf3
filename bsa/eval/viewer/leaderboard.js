"use strict";
// leaderboard.html: the leaderboard's table; every cell is text (textContent), a link only to a run's samples page.
(function () {
  const data = JSON.parse(document.getElementById("data").textContent);
  const table = document.getElementById("board");
  const head = document.createElement("tr");
  for (const name of data.columns) {
    const th = document.createElement("th");
    th.textContent = name;
    head.appendChild(th);
  }
  table.tHead.appendChild(head);
  data.rows.forEach((cells, index) => {
    const tr = document.createElement("tr");
    cells.forEach((value, column) => {
      const td = document.createElement("td");
      if (typeof value !== "number") td.className = "text";
      const text = value === null ? "-" : String(value);
      const link = data.links[index];
      if (column === 0 && link) {
        const a = document.createElement("a");
        a.href = link;
        a.textContent = text;
        td.appendChild(a);
      } else {
        td.textContent = text;
      }
      tr.appendChild(td);
    });
    table.tBodies[0].appendChild(tr);
  });
})();
