// rayft ui, the Sweep tab: a search space added to the form's run (its tune: section), launched as `rayft tune`;
// the trials of a sweep as they train, the metric against each key, and its best trial trained again or served.
"use strict";

function spaceRows() {
  const space = getPath(S.config, "tune.space") || {};
  return Object.entries(space).map(([key, dist]) => { const [kind, values] = Object.entries(dist)[0] || ["choice", []]; return { key, kind, values }; });
}
function setSpace(rows) {
  const space = {};
  for (const r of rows) if (r.key) space[r.key] = { [r.kind]: r.values };
  setPath(S.config, "tune.space", Object.keys(space).length ? space : undefined);
  if (!getPath(S.config, "tune.space")) setPath(S.config, "tune", undefined);
  check({ config: S.config });
}
const parseList = (text) => text.split(",").map((v) => v.trim()).filter((v) => v !== "").map((v) => parseValue({ type: "text" }, v));

function buildSweep(fromConfig = true) {
  if (fromConfig || !S.space) S.space = spaceRows(); // the rows being edited; a row without a key is not saved yet
  $("space-help").textContent = S.fields.fields["tune.space"].description;
  $("space-keys").replaceChildren(...Object.values(S.fields.sections).flat().map((p) => el("option", { value: p })));
  $("space-rows").replaceChildren(...S.space.map((r, i) => {
    const key = el("input", { list: "space-keys", id: `space-key-${i}` });
    key.value = r.key;
    const kind = el("select", { id: `space-kind-${i}` }, ...S.fields.space_kinds.map((k) => el("option", { value: k }, k)));
    kind.value = r.kind;
    const values = el("input", { id: `space-values-${i}`, size: 30 });
    values.value = r.values.join(", ");
    key.onchange = kind.onchange = values.onchange = () => {
      S.space[i] = { key: key.value.trim(), kind: kind.value, values: parseList(values.value) };
      setSpace(S.space);
    };
    const remove = Object.assign(el("button", {}, "✕"), { onclick: () => { S.space.splice(i, 1); setSpace(S.space); buildSweep(false); } });
    return el("tr", {}, el("td", {}, key), el("td", {}, kind), el("td", {}, values), el("td", {}, remove));
  }));
  $("sweep-fields").replaceChildren(...S.fields.sweep.map((path) => {
    const field = S.fields.fields[path];
    return el("div", { class: "field" }, el("label", { for: `field-${path}` }, t(`field.${path}`)), el("code", {}, path),
      input(path, field, getPath(S.config, path), (v) => { setPath(S.config, path, v); check({ config: S.config }); }),
      el("small", {}, field.description), el("span", { class: "error", id: `err-${path}` }));
  }));
}
$("add-space").onclick = () => { S.space.push({ key: "", kind: "choice", values: [] }); buildSweep(false); };
$("no-sweep").onclick = () => { setPath(S.config, "tune", undefined); check({ config: S.config }); buildSweep(); };
$("launch-sweep").onclick = async () => {
  $("sweep-result").textContent = t("run.launching");
  try {
    const job = await api("/api/launch", { config: S.config });
    $("sweep-result").textContent = t("run.launched", { job: job.job_id, output: job.output });
    S.sweep = job.output;
    refreshSweep().catch(() => {});
  } catch (err) { $("sweep-result").textContent = err.message; if (err.problems.length) showProblems(err.problems, ""); }
};

async function refreshSweep() {
  const sweeps = (await api("/api/runs")).filter((r) => r.kind === "sweep");
  S.sweep ??= sweeps[0]?.output;
  $("sweep-select").replaceChildren(...sweeps.map((r) => el("option", { value: r.output }, `${r.name} (${t(`state.${r.state}`)})`)));
  if (!S.sweep) return;
  $("sweep-select").value = S.sweep;
  let v;
  try {
    v = await api(`/api/sweep?output=${encodeURIComponent(S.sweep)}`);
  } catch (err) { $("sweep-state").textContent = err.message; return; } // a sweep still starting has no folder yet
  S.sweepView = v;
  $("sweep-state").textContent = t(v.finished ? "sweep.finished" : "sweep.running", { n: v.trials.length, metric: v.metric, mode: v.mode });
  $("trial-table").querySelector("thead").replaceChildren(el("tr", {}, ...["trial", ...v.keys, v.metric, "steps", "state"].map((h) => el("th", {}, h))));
  $("trial-table").querySelector("tbody").replaceChildren(...v.trials.map((tr) => el("tr", { class: v.best && tr.trial === v.best.trial ? "best" : "" },
    el("td", {}, tr.trial), ...v.keys.map((k) => el("td", {}, String(tr.values[k] ?? ""))), el("td", {}, number(tr.metric, 4)),
    el("td", {}, tr.steps ?? ""), el("td", {}, tr.state))));
  const key = $("sweep-key").value && v.keys.includes($("sweep-key").value) ? $("sweep-key").value : v.keys[0];
  $("sweep-key").replaceChildren(...v.keys.map((k) => el("option", { value: k }, k)));
  $("sweep-key").value = key;
  scatter($("sweep-chart"), v, key);
  $("train-best").disabled = !v.best_run;
  $("serve-best").disabled = !(v.finished && v.best);
}

function scatter(svg, v, key) {
  const scored = v.trials.filter((tr) => tr.metric != null);
  if (!scored.length) { svg.innerHTML = `<text x="260" y="150" text-anchor="middle">${esc(t("runs.no_points", { metric: v.metric }))}</text>`; return; }
  const numeric = scored.every((tr) => typeof tr.values[key] === "number");
  const labels = numeric ? null : [...new Set(scored.map((tr) => String(tr.values[key])))];
  const xs = scored.map((tr) => (numeric ? tr.values[key] : labels.indexOf(String(tr.values[key])))), ys = scored.map((tr) => tr.metric);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const X = (x) => 60 + ((x - x0) / (x1 - x0 || 1)) * 420, Y = (y) => 260 - ((y - y0) / (y1 - y0 || 1)) * 230;
  const ticks = numeric ? `<text x="60" y="290">${+x0.toPrecision(3)}</text><text x="480" y="290" text-anchor="end">${+x1.toPrecision(3)}</text>`
    : labels.map((l, i) => `<text x="${X(i)}" y="290" text-anchor="middle">${esc(l)}</text>`).join("");
  svg.innerHTML = `<line x1="60" y1="270" x2="500" y2="270" class="axis"/><line x1="60" y1="20" x2="60" y2="270" class="axis"/>${ticks}`
    + `<text x="56" y="264" text-anchor="end">${+y0.toPrecision(4)}</text><text x="56" y="34" text-anchor="end">${+y1.toPrecision(4)}</text>`
    + `<text x="500" y="16" text-anchor="end">${esc(v.metric)} / ${esc(key)}</text>`
    + scored.map((tr, i) => `<circle class="trial" cx="${X(xs[i])}" cy="${Y(ys[i])}" r="5" fill="${v.best && tr.trial === v.best.trial ? "#16a34a" : "#2563eb"}"><title>${esc(tr.trial)}: ${tr.metric}</title></circle>`).join("");
}
$("sweep-select").onchange = () => { S.sweep = $("sweep-select").value; refreshSweep(); };
$("sweep-key").onchange = () => scatter($("sweep-chart"), S.sweepView, $("sweep-key").value);
$("train-best").onclick = async () => {
  try {
    const job = await api("/api/launch", { config: S.sweepView.best_run });
    $("best-result").textContent = t("run.launched", { job: job.job_id, output: job.output });
  } catch (err) { $("best-result").textContent = err.message; }
};
$("serve-best").onclick = async () => {
  try {
    const job = await api("/api/serve", { model: S.sweepView.best.run_dir });
    $("best-result").textContent = t("sweep.serving", { job: job.job_id, model: job.output });
  } catch (err) { $("best-result").textContent = err.message; }
};
setInterval(() => { if ($("sweep").classList.contains("active")) refreshSweep().catch(() => {}); }, 2000);
