// crispedit preview: renders window.CRISPEDIT_PREVIEW (data.js) into the page.
// Plain DOM, no libraries, no network. Text from the build is only ever set as textContent.
(function () {
  "use strict";
  const data = window.CRISPEDIT_PREVIEW;
  const main = document.getElementById("main");
  const status = document.getElementById("status");

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children || []) if (child) node.appendChild(child);
    return node;
  }

  function fmt(value) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "number") return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(4)));
    return String(value);
  }

  // A score's verdict against its kept range [lo, hi] (either side may be open).
  function verdict(column, value) {
    const bounds = data.thresholds[column];
    if (!bounds || value === null || value === undefined) return "";
    const [lo, hi] = bounds;
    if (lo !== null && value < lo) return "fail";
    if (hi !== null && value > hi) return "fail";
    return "pass";
  }

  function boundsText(column) {
    const bounds = data.thresholds[column];
    if (!bounds) return "";
    const [lo, hi] = bounds;
    const parts = [];
    if (lo !== null) parts.push("≥ " + fmt(lo));
    if (hi !== null) parts.push("≤ " + fmt(hi));
    return parts.join(", ");
  }

  function scoreChips(scores) {
    const box = el("div", { className: "scores" });
    for (const [column, value] of Object.entries(scores || {})) {
      const range = boundsText(column);
      box.appendChild(el("span", {
        className: "score " + verdict(column, value),
        title: range ? column + " kept when " + range : column,
        text: column + " " + fmt(value) + (range ? " (" + range + ")" : ""),
      }));
    }
    return box;
  }

  function images(entry) {
    const box = el("div", { className: "images" });
    for (const role of ["source", "target", "mask"]) {
      const src = entry.images && entry.images[role];
      const label = role === "mask" ? "mask overlay" : role;
      box.appendChild(el("figure", {}, [
        src ? el("img", { src: src, alt: label + " " + entry.id }) : el("div", { className: "empty", text: "no " + role }),
        el("figcaption", { text: label }),
      ]));
    }
    return box;
  }

  function provenanceButton(entry) {
    const wrap = el("div");
    const button = el("button", { className: "prov", type: "button", text: "provenance" });
    button.addEventListener("click", function () {
      const open = wrap.querySelector("pre");
      if (open) { open.remove(); return; }
      wrap.appendChild(el("pre", { className: "provenance", text: JSON.stringify(entry.provenance, null, 2) }));
    });
    wrap.appendChild(button);
    return wrap;
  }

  function card(entry, extra) {
    const node = el("article", { className: "pair", "data-task": entry.task || "", "data-branch": entry.branch || "", "data-id": entry.id });
    node.appendChild(images(entry));
    node.appendChild(el("div", { className: "instruction", text: entry.instruction || "(no instruction)" }));
    const meta = el("div", { className: "meta" }, [
      el("span", { className: "tag", text: "task: " + (entry.task || "–") }),
      el("span", { className: "tag", text: "branch: " + (entry.branch || "–") }),
      el("span", { text: entry.id }),
    ]);
    node.appendChild(meta);
    for (const [label, key] of [["inverse", "inverse_instruction"], ["source caption", "source_caption"], ["target caption", "target_caption"]]) {
      if (entry[key]) node.appendChild(el("div", { className: "meta", text: label + ": " + entry[key] }));
    }
    if (entry.edit_objects && entry.edit_objects.length) node.appendChild(el("div", { className: "meta", text: "objects: " + entry.edit_objects.join(", ") }));
    if (extra) node.appendChild(extra);
    node.appendChild(scoreChips(entry.scores));
    node.appendChild(provenanceButton(entry));
    return node;
  }

  function select(label, id, values) {
    const node = el("select", { id: id });
    node.appendChild(el("option", { value: "", text: "all" }));
    for (const value of values) node.appendChild(el("option", { value: value, text: value }));
    return el("label", { text: label }, [node]);
  }

  function renderPairs() {
    const pairs = data.pairs;
    const tasks = [...new Set(pairs.map((p) => p.task || ""))].sort();
    const branches = [...new Set(pairs.map((p) => p.branch || ""))].sort();
    const filters = el("div", { className: "filters" }, [select("task", "filter-task", tasks), select("branch", "filter-branch", branches)]);
    for (const column of data.score_columns) {
      filters.appendChild(el("label", { text: column + " min" }, [el("input", { type: "number", step: "any", id: "min-" + column, "data-column": column, "data-side": "min" })]));
      filters.appendChild(el("label", { text: column + " max" }, [el("input", { type: "number", step: "any", id: "max-" + column, "data-column": column, "data-side": "max" })]));
    }
    const count = el("span", { id: "count" });
    filters.appendChild(count);
    main.appendChild(filters);
    const grid = el("div", { className: "grid", id: "pairs" });
    const cards = pairs.map((entry) => { const node = card(entry); grid.appendChild(node); return [entry, node]; });
    main.appendChild(grid);
    if (!pairs.length) main.appendChild(el("p", { className: "empty", text: "No committed pairs yet." }));

    function apply() {
      const task = document.getElementById("filter-task").value;
      const branch = document.getElementById("filter-branch").value;
      const ranges = [...filters.querySelectorAll("input")].filter((i) => i.value !== "").map((i) => [i.dataset.column, i.dataset.side, Number(i.value)]);
      let shown = 0;
      for (const [entry, node] of cards) {
        let ok = (!task || (entry.task || "") === task) && (!branch || (entry.branch || "") === branch);
        for (const [column, side, limit] of ranges) {
          const value = entry.scores[column];
          if (value === null || value === undefined) { ok = false; break; }
          if (side === "min" ? value < limit : value > limit) { ok = false; break; }
        }
        node.classList.toggle("hidden", !ok);
        if (ok) shown += 1;
      }
      count.textContent = "showing " + shown + " of " + pairs.length;
    }
    filters.addEventListener("input", apply);
    filters.addEventListener("change", apply);
    apply();
  }

  function renderRejects() {
    if (!data.reject_groups.length) { main.appendChild(el("p", { className: "empty", text: "No rejects." })); return; }
    const table = el("table", {}, [el("tr", {}, ["stage", "reason", "rejects"].map((h) => el("th", { text: h })))]);
    for (const group of data.reject_groups) {
      table.appendChild(el("tr", {}, [el("td", { text: group.stage }), el("td", { className: "text", text: group.category }), el("td", { text: fmt(group.count) })]));
    }
    main.appendChild(table);
    for (const group of data.reject_groups) {
      const grid = el("div", { className: "grid" });
      for (const entry of group.examples) {
        grid.appendChild(card(entry, el("div", { className: "meta", text: "reason: " + (entry.reason || "–") + (entry.source_ref ? " · source " + entry.source_ref : "") })));
      }
      main.appendChild(el("section", { className: "group" }, [el("h2", { text: group.stage + " · " + group.category + " (" + group.count + ")" }), grid]));
    }
  }

  function renderSummary() {
    const summary = data.summary;
    const head = ["stage", "seen", "passed", "rejected", "drops by reason", "seconds", ...summary.usage_keys];
    const table = el("table", { id: "summary-table" }, [el("tr", {}, head.map((h) => el("th", { text: h })))]);
    for (const stage of summary.stages) {
      const drops = Object.entries(stage.rejected).map(([reason, n]) => reason + ": " + n).join(", ");
      const rejected = Object.values(stage.rejected).reduce((a, b) => a + b, 0);
      const cells = [stage.stage, fmt(stage.seen), fmt(stage.passed), fmt(rejected), drops, fmt(stage.seconds), ...summary.usage_keys.map((k) => fmt(stage.usage[k]))];
      table.appendChild(el("tr", {}, cells.map((c, i) => el("td", { className: i === 4 ? "text" : "", text: c }))));
    }
    main.appendChild(table);
    const totals = el("table", {}, Object.entries(summary.totals).filter(([, v]) => v !== null && v !== undefined)
      .map(([k, v]) => el("tr", {}, [el("th", { text: k }), el("td", { text: fmt(v) })])));
    main.appendChild(totals);
    const pipeline = el("table", {}, [el("tr", {}, ["stage", "kind", "parameters", "models", "thresholds"].map((h) => el("th", { text: h })))]);
    for (const stage of data.pipeline) {
      const thresholds = Object.entries(stage.thresholds).map(([c, [lo, hi]]) => c + " in [" + fmt(lo) + ", " + fmt(hi) + "]").join("; ");
      pipeline.appendChild(el("tr", {}, [stage.name, stage.kind, JSON.stringify(stage.params), Object.values(stage.models).join(", "), thresholds]
        .map((c) => el("td", { className: "text", text: c }))));
    }
    main.appendChild(pipeline);
    const plots = el("div", { className: "plots" });
    for (const plot of data.plots) plots.appendChild(el("img", { src: plot.file, alt: plot.column.startsWith("survival of ") ? plot.column : "histogram of " + plot.column }));
    main.appendChild(plots);
  }

  const page = document.body.dataset.page;
  status.textContent = fmt(data.rows) + " pairs, " + fmt(data.rejects) + " rejects, " + data.shards + "/" + data.shards_total + " shards" +
    (data.complete ? "" : " (partial build)") + " · showing a seeded sample of " + data.pairs.length + " pairs (seed " + data.sample_seed + ")";
  if (page === "rejects") renderRejects();
  else if (page === "summary") renderSummary();
  else renderPairs();
})();
