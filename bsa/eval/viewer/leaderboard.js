"use strict";
// leaderboard.html: the leaderboard's table; every cell is text (textContent), a link only to a run's samples page.
(function () {
  const data = JSON.parse(document.getElementById("data").textContent);
  const table = document.getElementById("board");
  const head = document.createElement("tr");
  const figures = new Set(data.figures);
  for (const name of data.columns) {
    const th = document.createElement("th");
    if (!figures.has(name)) th.className = "label-cell";
    th.textContent = name;
    head.appendChild(th);
  }
  table.tHead.appendChild(head);
  data.rows.forEach((cells, index) => {
    const tr = document.createElement("tr");
    if (data.ours[index]) tr.className = "ours";
    cells.forEach((value, column) => {
      const td = document.createElement("td");
      const figure = figures.has(data.columns[column]);
      if (!figure) td.className = "label-cell";
      const text = value === null ? "-" : figure ? Number(value).toFixed(2) : String(value);
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
