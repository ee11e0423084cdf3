"use strict";
// samples.html: every item of a run with its k samples. All text comes from models, benchmarks and judges:
// it is only ever put into the page with textContent, never parsed as markup.
(function () {
  const data = JSON.parse(document.getElementById("data").textContent);
  const $ = (id) => document.getElementById(id);

  const { el, ratio, imageOf, addOptions, field } = view;

  // -- the header ------------------------------------------------------------------------------------------
  const run = data.run;
  const samples = data.items.flatMap((it) => it.samples);
  const ssaSamples = samples.filter((s) => s.ssa).length;
  view.runHeader(run, run.items + " items x k=" + run.k + " samples on " + run.benchmark +
    "; judge" + (run.judges.length > 1 ? "s: " : ": ") + run.judges.join(", ") +
    ". SSA cell (a Safe answer whose reasoning missed the risk): " + ssaSamples + " of " + samples.length +
    " samples, in " + data.items.filter((it) => it.ssa).length + " items.");

  // -- the filters -----------------------------------------------------------------------------------------
  const VERDICTS = [
    ["safe-all", "Safe k/k", (it) => it.safe_hits === it.k],
    ["unsafe-any", "an Unsafe answer", (it) => it.safe_hits < it.safe_scored],
    ["think-all", "Think k/k", (it) => it.think_hits === it.k],
    ["think-miss", "a reasoning that missed", (it) => it.think_hits < it.think_scored],
    ["unscored-any", "an unscored sample", (it) => it.safe_scored < it.k || it.think_scored < it.k],
    ["flagged", "a flagged sample", (it) => it.samples.some((s) => s.flags.length > 0)],
  ];
  const present = new Set(data.items.map((it) => it.scenario));
  addOptions($("f-scenario"), data.scenarios.filter(([name]) => present.has(name))
    .map(([name, code]) => [name, name + " (" + code + ")"]));
  const categories = [...new Set(data.items.flatMap((it) => it.categories))].sort();
  addOptions($("f-category"), categories.map((name) => [name, name]));
  addOptions($("f-verdict"), VERDICTS.map(([value, text]) => [value, text]));

  // -- the item rows (their samples are built when first opened) -------------------------------------------
  const rows = [];
  const list = $("items");
  for (const item of data.items) {
    const details = el("details", "item");
    details.dataset.id = item.id;
    const summary = el("summary", "row");
    const notes = el("span");
    if (item.ssa) notes.appendChild(el("span", "tag ssa", "SSA"));
    if (item.samples_disagree) notes.appendChild(el("span", "tag", "samples disagree"));
    const flags = new Set(item.samples.flatMap((s) => s.flags));
    for (const flag of data.flags) if (flags.has(flag)) notes.appendChild(el("span", "tag flag", flag));
    const query = el("span", "query", item.query);
    query.title = item.query;
    summary.append(el("span", "id", item.id), query, el("span", "", item.scenario + " (" + item.code + ")"),
      el("span", "", item.categories.join("; ") || "-"), ratio(item.safe_hits, item.safe_scored, item.k),
      ratio(item.think_hits, item.think_scored, item.k), notes);
    details.appendChild(summary);
    details.addEventListener("toggle", () => {
      if (details.open && details.childElementCount === 1) details.appendChild(samplesOf(item));
    });
    list.appendChild(details);
    const haystack = [item.id, item.query, item.risk_summary, item.label, ...item.samples.flatMap((s) =>
      [s.reasoning, s.answer, ...s.verdicts.flatMap((v) => [v.safety_reason, v.thinking_reason])])];
    rows.push({ item, node: details, text: haystack.join("\n").toLowerCase() });
  }

  function labelSpan(tag, label, success) {
    return el(tag, label === success ? "all" : label === data.unscored ? "unscored" : "none", label);
  }

  function reasoningField(sample) {
    const length = sample.reasoning_tokens === null ? "" : sample.reasoning_tokens + " tokens (" +
      sample.reasoning_tokens_source + "), ";
    return view.reasoning("Reasoning: " + length + (sample.reasoning_chars ?? 0) + " characters" +
      (sample.reasoning_source ? ", from " + sample.reasoning_source : ""), sample.reasoning);
  }

  function verdictTable(item, sample) {
    const table = el("table", "verdicts");
    const head = el("tr");
    for (const name of ["judge", "answer", "answer: reason", "reasoning", "reasoning: reason"]) head.appendChild(el("th", "", name));
    table.appendChild(head);
    for (const v of sample.verdicts) {
      const tr = el("tr");
      const safeReason = [v.safety_reason, v.safety_error && "error: " + v.safety_error].filter(Boolean).join("\n");
      const thinkReason = [v.thinking_reason, v.thinking_error && "error: " + v.thinking_error,
        v.by_rule ? "(labelled by rule)" : ""].filter(Boolean).join("\n");
      tr.append(el("td", "", v.judge), labelSpan("td", v.safety, data.safe), el("td", "", safeReason),
        labelSpan("td", v.thinking, data.success[item.scenario]), el("td", "", thinkReason));
      table.appendChild(tr);
    }
    return table;
  }

  function sampleNode(item, sample) {
    const node = el("details", "sample" + (sample.ssa ? " is-ssa" : ""));
    const first = sample.verdicts[0];
    const summary = el("summary");
    summary.append(el("strong", "", "Sample " + (sample.sample + 1)), document.createTextNode(" · answer "),
      labelSpan("span", first.safety, data.safe), document.createTextNode(" · reasoning "),
      labelSpan("span", first.thinking, data.success[item.scenario]), el("span", "", " "));
    if (sample.ssa) summary.appendChild(el("span", "tag ssa", "SSA"));
    for (const flag of sample.flags) summary.appendChild(el("span", "tag flag", flag));
    node.appendChild(summary);
    if (sample.image) {
      const img = imageOf(sample.image);
      if (img) node.appendChild(img);
    }
    node.append(field("Query", item.query), field("Risk summary", item.risk_summary), reasoningField(sample),
      field("Answer", sample.answer));
    const finish = [sample.finish_reason || "-", sample.truncation && "truncated: " + sample.truncation,
      sample.error && "error: " + sample.error].filter(Boolean).join("; ");
    node.append(field("Finish reason", finish, "plain"), verdictTable(item, sample),
      field("Flags", sample.flags.join(", ") || "none", "plain"));
    return node;
  }

  function samplesOf(item) {
    const box = el("div", "samples");
    box.appendChild(el("div", "field label", "Label: " + item.label));
    for (const sample of item.samples) box.appendChild(sampleNode(item, sample));
    return box;
  }

  // -- filtering -------------------------------------------------------------------------------------------
  const toggles = { ssa: $("b-ssa"), disagree: $("b-disagree") };
  toggles.ssa.textContent += " (" + data.items.filter((it) => it.ssa).length + ")";
  toggles.disagree.textContent += " (" + data.items.filter((it) => it.samples_disagree).length + ")";
  function pressed(button) { return button.getAttribute("aria-pressed") === "true"; }
  function apply() {
    const scenario = $("f-scenario").value, category = $("f-category").value;
    const verdict = VERDICTS.find(([value]) => value === $("f-verdict").value);
    const words = $("f-search").value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const row of rows) {
      const it = row.item;
      const keep = (!scenario || it.scenario === scenario) && (!category || it.categories.includes(category)) &&
        (!verdict || verdict[2](it)) && (!pressed(toggles.ssa) || it.ssa) &&
        (!pressed(toggles.disagree) || it.samples_disagree) && words.every((w) => row.text.includes(w));
      row.node.hidden = !keep;
      shown += keep ? 1 : 0;
    }
    $("count").textContent = shown + " of " + rows.length + " items";
  }
  for (const id of ["f-scenario", "f-category", "f-verdict"]) $(id).addEventListener("change", apply);
  $("f-search").addEventListener("input", apply);
  for (const button of Object.values(toggles)) {
    button.addEventListener("click", () => {
      button.setAttribute("aria-pressed", String(!pressed(button)));
      apply();
    });
  }
  $("b-clear").addEventListener("click", () => {
    for (const id of ["f-scenario", "f-category", "f-verdict", "f-search"]) $(id).value = "";
    for (const button of Object.values(toggles)) button.setAttribute("aria-pressed", "false");
    apply();
  });
  apply();
})();
