"use strict";
// leaderboard.html: the leaderboard's tables; every cell is text (textContent), a link only to a run's samples page.
(function () {
  const data = JSON.parse(document.getElementById("data").textContent);
  const main = document.getElementById("boards");
  const make = (tag, text) => view.el(tag, "", text);
  data.tables.forEach((board, number) => {
    if (board.title) main.appendChild(make("h2", board.title));
    if (board.note) main.appendChild(make("p", board.note));
    const table = make("table");
    table.id = number === 0 ? "board" : "board-" + (number + 1);
    table.className = "board";
    table.append(make("thead"), make("tbody"));
    const head = make("tr");
    const figures = new Set(board.figures);
    for (const name of board.columns) {
      const th = make("th", name);
      if (!figures.has(name)) th.className = "label-cell";
      head.appendChild(th);
    }
    table.tHead.appendChild(head);
    board.rows.forEach((cells, index) => {
      const tr = make("tr");
      if (board.ours[index]) tr.className = "ours";
      cells.forEach((value, column) => {
        const td = make("td");
        const figure = figures.has(board.columns[column]);
        if (!figure) td.className = "label-cell";
        const text = value === null ? "-" : figure ? Number(value).toFixed(2) : String(value);
        const link = board.links[index];
        if (column === 0 && link) {
          const a = make("a", text);
          a.href = link;
          td.appendChild(a);
        } else {
          td.textContent = text;
        }
        tr.appendChild(td);
      });
      table.tBodies[0].appendChild(tr);
    });
    main.appendChild(table);
  });
})();
