"use strict";
// samples.html of a multimodal run: every image + text item with its k samples. All text comes from models,
// benchmarks and judges: it is only ever put into the page with textContent, never parsed as markup; an image
// source is shown only when it is a data:image URL or a path relative to this page.
(function () {
  const data = JSON.parse(document.getElementById("data").textContent);
  const $ = (id) => document.getElementById(id);

  const { el, ratio, imageOf, addOptions, field } = view;

  // -- the header ------------------------------------------------------------------------------------------
  const run = data.run;
  if (!run.model_sees_images) {
    $("blind").hidden = false;
    $("blind").textContent = run.notice || "The model never saw an image: text-only fallback.";
  }
  view.runHeader(run, run.items + " image + text items x k=" + run.k + " samples on " + run.benchmark +
    "; the model " + (run.model_sees_images ? "saw each image" : "read each image in words") + "; judge: " +
    run.judge + (run.judge_sees_images ? " (saw the images)" : " (read the images in words)") + ".");

  // -- the filters -----------------------------------------------------------------------------------------
  const unsafe = (s) => s.label !== "" && s.label !== data.unscored && !data.safe.includes(s.label) &&
    s.label !== data.complied;
  const VERDICTS = [
    ["unsafe-any", "an Unsafe answer (risky pairs)", (it) => !it.benign && it.samples.some(unsafe)],
    ["refused-any", "a refusal (benign pairs)", (it) => it.benign && it.samples.some(unsafe)],
    ["missed-any", "reasoning that missed the risk", (it) => it.noticed_hits < it.noticed_scored],
    ["unscored-any", "an unscored sample", (it) => it.samples.some((s) => s.label === data.unscored ||
      s.noticed === data.unscored)],
  ];
  const present = new Set(data.items.map((it) => it.combination));
  addOptions($("f-combination"), data.combinations.filter(([name]) => present.has(name))
    .map(([name, text]) => [name, name + " (" + text + ")"]));
  const areas = [...new Set(data.items.map((it) => it.levels[0]).filter(Boolean))].sort();
  addOptions($("f-area"), areas.map((name) => [name, name]));
  addOptions($("f-verdict"), VERDICTS.map(([value, text]) => [value, text]));

  // -- the item rows (their content is built when first opened) --------------------------------------------
  const rows = [];
  for (const item of data.items) {
    const details = el("details", "item");
    details.dataset.id = item.id;
    const summary = el("summary", "row");
    const text = el("span", "query", item.text);
    text.title = item.text;
    const thumb = el("span");
    const small = imageOf(item.image, "thumb");
    thumb.appendChild(small || el("span", "unscored", item.image ? "(not shown)" : "(no image)"));
    summary.append(el("span", "id", item.id), text, el("span", "", item.combination), el("span", "", item.category),
      ratio(item.answer_hits, item.answer_scored, item.k),
      item.benign ? el("span", "", "n/a") : ratio(item.noticed_hits, item.noticed_scored, item.k), thumb);
    details.appendChild(summary);
    details.addEventListener("toggle", () => {
      if (details.open && details.childElementCount === 1) details.appendChild(contentOf(item));
    });
    $("items").appendChild(details);
    const haystack = [item.id, item.text, item.words, item.category, ...item.samples.flatMap((s) =>
      [s.reasoning, s.answer, s.reason, s.noticed_reason])];
    rows.push({ item, node: details, text: haystack.join("\n").toLowerCase() });
  }

  function labelSpan(tag, label, good, shown) {
    const className = good.includes(label) ? "all" : label === data.unscored ? "unscored" : label ? "none" : "";
    return el(tag, className, shown || label || "-");
  }

  function sampleNode(item, sample) {
    const node = el("details", "sample");
    const good = item.benign ? [data.complied] : data.safe;
    const summary = el("summary");
    summary.append(el("strong", "", "Sample " + (sample.sample + 1)),
      document.createTextNode(item.benign ? " · over-refusal " : " · vulnerability "), labelSpan("span", sample.label, good));
    if (!item.benign) summary.append(document.createTextNode(" · risk noticed "), labelSpan("span", sample.noticed, [data.noticed]));
    node.appendChild(summary);
    node.append(view.reasoning("Reasoning: " + sample.reasoning.length + " characters", sample.reasoning),
      field("Answer", sample.answer));
    const table = el("table", "verdicts");
    const head = el("tr");
    for (const name of [item.benign ? "over-refusal" : "vulnerability (USB code)", "reason", "risk noticed", "reason"]) {
      head.appendChild(el("th", "", name));
    }
    const tr = el("tr");
    tr.append(labelSpan("td", sample.label, good, sample.label + (sample.code ? " (" + sample.code + ")" : "")),
      el("td", "", [sample.reason, sample.label_error && "error: " + sample.label_error].filter(Boolean).join("\n")),
      labelSpan("td", sample.noticed, [data.noticed]),
      el("td", "", [sample.noticed_reason, sample.noticed_error && "error: " + sample.noticed_error]
        .filter(Boolean).join("\n")));
    table.append(head, tr);
    const finish = [sample.finish_reason || "-", sample.truncation && "truncated: " + sample.truncation,
      sample.error && "error: " + sample.error].filter(Boolean).join("; ");
    node.append(table, field("Finish reason", finish, "plain"));
    return node;
  }

  function contentOf(item) {
    const box = el("div", "samples");
    const pair = el("div", "pair");
    const figure = el("figure", "picture");
    const img = imageOf(item.image, "image");
    figure.appendChild(img || el("div", "text empty", item.image ? "(image not shown: " + item.image_file + ")" :
      "(image not found: " + item.image_file + ")"));
    figure.appendChild(el("figcaption", "plain", item.image_file));
    const words = el("div", "words");
    words.append(field("Text", item.text), field(item.words_kind || "Image in words", item.words),
      field("Combination", item.combination + " (" + (new Map(data.combinations).get(item.combination) || "") + ")", "plain"),
      field("Category", item.levels.filter(Boolean).join(" / ") || "-", "plain"), field("Language", item.lang, "plain"));
    pair.append(figure, words);
    box.appendChild(pair);
    for (const sample of item.samples) box.appendChild(sampleNode(item, sample));
    return box;
  }

  // -- filtering -------------------------------------------------------------------------------------------
  function apply() {
    const combination = $("f-combination").value, area = $("f-area").value;
    const verdict = VERDICTS.find(([value]) => value === $("f-verdict").value);
    const words = $("f-search").value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const row of rows) {
      const it = row.item;
      const keep = (!combination || it.combination === combination) && (!area || it.levels[0] === area) &&
        (!verdict || verdict[2](it)) && words.every((w) => row.text.includes(w));
      row.node.hidden = !keep;
      shown += keep ? 1 : 0;
    }
    $("count").textContent = shown + " of " + rows.length + " items";
  }
  for (const id of ["f-combination", "f-area", "f-verdict"]) $(id).addEventListener("change", apply);
  $("f-search").addEventListener("input", apply);
  $("b-clear").addEventListener("click", () => {
    for (const id of ["f-combination", "f-area", "f-verdict", "f-search"]) $(id).value = "";
    apply();
  });
  apply();
})();
