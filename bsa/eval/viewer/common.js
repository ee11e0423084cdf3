"use strict";
// Helpers the viewer's pages share (put before each page's own script). Text is only ever set with
// textContent; an image is shown only from a data:image URL or a path relative to the page.
const view = (function () {
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function ratio(hits, scored, k) {
    if (scored === 0) return el("span", "unscored", "-/" + k + " (unscored)");
    const span = el("span", hits === k ? "all" : hits === 0 ? "none" : "some", hits + "/" + k);
    if (scored < k) span.textContent += " (" + (k - scored) + " unscored)";
    return span;
  }

  function imageOf(src, className) {
    // anything else (another scheme, an absolute URL) is not shown
    if (!src || (!/^data:image\//i.test(src) && (/^[a-z][a-z0-9+.-]*:/i.test(src) || src.startsWith("/")))) return null;
    const img = el("img", className || "image");
    img.alt = "the item's image";
    img.loading = "lazy";
    img.src = src;
    return img;
  }

  function addOptions(select, pairs) {
    for (const [value, text] of pairs) {
      const option = el("option", "", text);
      option.value = value;
      select.appendChild(option);
    }
  }

  function field(name, text, className) {
    const box = el("div", "field");
    box.appendChild(el("div", "name", name));
    box.appendChild(text === "" ? el("div", "text empty", "(empty)") : el("div", className || "text", text));
    return box;
  }

  // a sample's reasoning, folded when long (over 1,500 characters)
  function reasoning(summary, text) {
    const box = el("details", "field reasoning");
    box.appendChild(el("summary", "name as-written", summary));
    box.appendChild(text === "" ? el("div", "text empty", "(empty)") : el("div", "text", text));
    box.open = text.length <= 1500;
    return box;
  }

  // the run's header (run_header.html): title, the toy-judge warning, a line about the run, its figures
  function runHeader(run, line) {
    document.getElementById("title").textContent = "Samples: " + run.model;
    document.getElementById("toy").hidden = !run.judge_is_toy;
    document.getElementById("run-line").textContent = line;
    const headRow = el("tr"), valueRow = el("tr");
    for (const [name, value] of Object.entries(run.figures)) {
      headRow.appendChild(el("th", "", name));
      valueRow.appendChild(el("td", "", value === null || value === undefined ? "-" : value.toFixed(2)));
    }
    document.getElementById("figures").append(headRow, valueRow);
  }

  return { el, ratio, imageOf, addOptions, field, reasoning, runHeader };
})();
