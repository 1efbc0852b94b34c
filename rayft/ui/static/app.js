// rayft ui: one page over the JSON API of rayft/ui/app.py. No framework, no build step.
"use strict";

const S = { config: {}, fields: null, text: {}, selected: new Set(), runs: [], logsOf: null, chat: { a: [], b: [] } };
const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) k === "class" ? (node.className = v) : node.setAttribute(k, v);
  node.append(...children);
  return node;
};
const esc = (text) => String(text).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]); // for SVG built as text
const t = (key, vars = {}) => (S.text[key] || key).replace(/\{(\w+)\}/g, (_, name) => vars[name] ?? "");

async function api(path, body) {
  const init = body === undefined ? {} : { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, init);
  const json = (response.headers.get("content-type") || "").includes("json");
  const data = json ? await response.json() : await response.text();
  if (!response.ok) throw Object.assign(new Error(data.error || data), { problems: data.problems || [] });
  return data;
}

// ---- languages: every visible word comes from locales/<code>.json
async function setLanguage(code) {
  S.text = await api(`/api/locale/${code}`);
  document.documentElement.lang = code;
  localStorage.setItem("rayft-language", code);
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  if (S.fields) buildForm();
  if (S.fields && $("sweep").classList.contains("active")) buildSweep();
  renderRuns();
}

// ---- configure: the form and the YAML are two views of S.config, checked by the server at every change
const getPath = (obj, path) => path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
function setPath(obj, path, value) {
  const keys = path.split(".");
  const last = keys.pop();
  const parents = [obj];
  for (const k of keys) parents.push((parents.at(-1)[k] ??= {}));
  if (value === undefined) delete parents.at(-1)[last];
  else parents.at(-1)[last] = value;
  for (let i = keys.length - 1; i >= 0; i--) if (!Object.keys(parents[i + 1]).length) delete parents[i][keys[i]];
}
function parseValue(field, raw) {
  if (raw === "" || raw === null) return undefined;
  if (field.type === "bool") return raw;
  if (/^-?\d+(\.\d+)?(e-?\d+)?$/i.test(raw)) return Number(raw);
  if (raw === "true" || raw === "false") return raw === "true";
  return raw;
}

function input(path, field, value, onChange) {
  let node;
  if (field.type === "bool") {
    node = el("input", { type: "checkbox" });
    node.checked = value ?? field.default ?? false;
    node.onchange = () => onChange(node.checked);
  } else if (field.type === "choice") {
    node = el("select", {}, el("option", { value: "" }, field.default == null ? "" : `(${field.default})`));
    for (const c of field.choices) node.append(el("option", { value: String(c) }, String(c)));
    node.value = value == null ? "" : String(value);
    node.onchange = () => onChange(parseValue(field, node.value));
  } else {
    node = el("input", { placeholder: field.default == null ? "" : String(field.default) });
    if (field.choices.length) node.setAttribute("list", `choices-${path}`);
    node.value = value == null ? "" : Array.isArray(value) ? value.join(", ") : String(value);
    node.onchange = () => onChange(parseValue(field, node.value.trim()));
  }
  node.id = `field-${path}`;
  if (/^data\.train\.\d+\.dataset$/.test(path)) node.setAttribute("list", "dataset-names");
  node.title = field.description;
  return node;
}

function buildForm() {
  const form = $("form");
  form.querySelectorAll("fieldset.section").forEach((n) => n.remove());
  form.append($("datasets"));
  for (const [section, paths] of Object.entries(S.fields.sections)) {
    const set = el("fieldset", { class: "section" }, el("legend", {}, t(`section.${section}`)));
    for (const path of paths) {
      const field = S.fields.fields[path];
      const row = el("div", { class: "field" },
        el("label", { for: `field-${path}` }, t(`field.${path}`)), el("code", {}, path),
        input(path, field, getPath(S.config, path), (v) => { setPath(S.config, path, v); check({ config: S.config }); }),
        el("small", {}, field.description), el("span", { class: "error", id: `err-${path}` }));
      if (field.choices.length && field.type !== "choice")
        row.append(el("datalist", { id: `choices-${path}` }, ...field.choices.map((c) => el("option", { value: String(c) }))));
      set.append(row);
    }
    form.insertBefore(set, section === "model" ? $("datasets") : null);
    if (section === "model") set.append(el("div", { class: "model-facts" }, Object.assign(el("button", { id: "load-model" }, t("model.load")), { onclick: readModel }), " ", el("span", { id: "model-facts" })));
  }
  buildDatasets();
}

async function datasetNames() {
  const dir = getPath(S.config, "data.dataset_dir") || S.fields.fields["data.dataset_dir"].default;
  const names = await api(`/api/datasets?dir=${encodeURIComponent(dir)}`).catch(() => []);
  $("dataset-names").replaceChildren(...names.map((n) => el("option", { value: n })));
}

function buildDatasets() {
  datasetNames();
  const names = ["dataset", "path", "format", "ranking", "num_samples"];
  $("dataset-head").replaceChildren(...names.map((n) => el("th", { title: S.fields.fields[`data.train.${n}`].description }, t(`dataset.${n}`))), el("th"));
  const rows = getPath(S.config, "data.train") || [];
  $("dataset-rows").replaceChildren(...rows.map((spec, i) => el("tr", {},
    ...names.map((n) => el("td", {}, input(`data.train.${i}.${n}`, S.fields.fields[`data.train.${n}`], spec[n], (v) => {
      v === undefined ? delete spec[n] : (spec[n] = v);
      check({ config: S.config });
    }))),
    el("td", {}, Object.assign(el("button", {}, "✕"), { onclick: () => { rows.splice(i, 1); buildDatasets(); check({ config: S.config }); } })))));
}

let checking = 0;
async function check(body) {
  const mine = ++checking;
  const result = await api("/api/check", body);
  if (mine !== checking) return; // a newer edit's answer is on its way
  if (body.config) $("yaml").value = result.yaml;
  if (body.yaml !== undefined && result.config) { S.config = result.config; buildForm(); } // the form follows the YAML
  showProblems(result.problems, result.summary);
}

function showProblems(problems, summary) {
  document.querySelectorAll("[id^=err-]").forEach((n) => (n.textContent = ""));
  $("problems").replaceChildren(...problems.map((p) => el("li", {}, p.path ? `${p.path}: ${p.message}` : p.message)));
  for (const p of problems) {
    let path = p.path;
    while (path && !$(`err-${path}`)) path = path.includes(".") ? path.slice(0, path.lastIndexOf(".")) : "";
    if (path) $(`err-${path}`).textContent = p.message;
  }
  $("summary").textContent = problems.length ? t("yaml.invalid", { n: problems.length }) : `${t("yaml.valid")} (${summary})`;
  $("summary").className = problems.length ? "error" : "ok";
}

let typing;
$("yaml").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => check({ yaml: $("yaml").value }), 400); });
$("add-dataset").onclick = () => {
  if (!getPath(S.config, "data.train")) setPath(S.config, "data.train", []);
  getPath(S.config, "data.train").push({ path: "" });
  buildDatasets();
  check({ config: S.config });
};
$("save-yaml").onclick = () => {
  const link = el("a", { href: URL.createObjectURL(new Blob([$("yaml").value], { type: "text/yaml" })), download: `${getPath(S.config, "output.name") || "run"}.yaml` });
  link.click();
};
$("load-yaml").onchange = async (e) => { $("yaml").value = await e.target.files[0].text(); check({ yaml: $("yaml").value }); };
$("import-lf").onchange = async (e) => {
  try {
    const result = await api("/api/import-llamafactory", { yaml: await e.target.files[0].text() });
    $("yaml").value = result.yaml;
    check({ yaml: result.yaml });
  } catch (err) { showProblems([{ path: "", message: err.message }], ""); }
};
async function readModel() {
  $("model-facts").textContent = "…";
  try {
    const m = await api(`/api/model?path=${encodeURIComponent(getPath(S.config, "model.name_or_path") || "")}`);
    $("model-facts").textContent = t("model.facts", { architecture: m.architecture, parameters: m.parameters.toLocaleString(), layers: m.layers });
  } catch (err) { $("model-facts").textContent = err.message; }
}
$("validate").onclick = async () => {
  $("launch-result").textContent = t("yaml.validating");
  try {
    const result = await api("/api/validate", { config: S.config });
    showProblems(result.problems, result.summary);
    $("launch-result").textContent = t("yaml.checked");
  } catch (err) {
    $("launch-result").textContent = err.problems.length ? "" : err.message;
    showProblems(err.problems.length ? err.problems : [{ path: "", message: err.message }], "");
  }
};
$("launch").onclick = async () => {
  $("launch-result").textContent = t("run.launching");
  try {
    const job = await api("/api/launch", { config: S.config });
    $("launch-result").textContent = t("run.launched", { job: job.job_id, output: job.output });
    showTab("runs");
  } catch (err) {
    $("launch-result").textContent = err.message;
    if (err.problems.length) showProblems(err.problems, "");
  }
};

// ---- data: `rayft data preview` of the form's run
function bars(histogram) {
  const top = Math.max(1, ...histogram.map((b) => b.rows));
  const h = (b) => (100 * b.rows) / top;
  const box = el("div");
  box.innerHTML = `<svg viewBox="0 0 ${histogram.length * 40} 130" class="histogram">` + histogram.map((b, i) =>
    `<rect x="${i * 40 + 4}" y="${110 - h(b)}" width="32" height="${h(b)}"><title>${b.from}-${b.to}: ${b.rows}</title></rect>`
    + `<text x="${i * 40 + 20}" y="125">${b.from}</text><text x="${i * 40 + 20}" y="${106 - h(b)}">${b.rows || ""}</text>`).join("") + "</svg>";
  return box;
}
$("preview").onclick = async () => {
  $("preview-status").textContent = t("data.reading");
  try {
    const p = await api("/api/preview", { config: S.config, examples: 3 });
    const table = el("table", {}, el("tr", {}, ...["dataset", "examples", "rows", "tokens", "bad"].map((k) => el("th", {}, t(`data.${k}`)))),
      ...p.datasets.map((d) => el("tr", {}, el("td", {}, d.label), ...[d.examples, d.rows, d.tokens, d.bad].map((n) => el("td", {}, n.toLocaleString())))));
    const rows = p.rows.map((row, i) => el("div", { class: "row" },
      ...row.parts.map((part) => el("div", {}, el("h4", {}, t("data.row", { n: i + 1, part: part.part, tokens: part.tokens })),
        el("pre", {}, ...part.spans.map(([, trained, text]) => (trained ? el("mark", {}, text) : text)))))));
    $("preview-out").replaceChildren(table,
      el("p", {}, t(p.packing ? "data.packed" : "data.unpacked", { fill: (100 * p.fill).toFixed(1), rows: p.rows_total.toLocaleString(), tokens: p.tokens_total.toLocaleString() })),
      el("h3", {}, t("data.lengths")), bars(p.histogram),
      el("h3", {}, t("data.bad_rows", { n: p.bad_total })), el("pre", { class: "bad" }, p.bad_rows.join("\n")),
      el("h3", {}, t("data.rendered")), el("p", { class: "hint" }, t("data.legend")), ...rows);
    $("preview-status").textContent = "";
  } catch (err) { $("preview-status").textContent = err.message; }
};

// ---- runs: the table from the job API and the storage folder, the curves of the ticked runs, the logs of one
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];
const clock = (s) => (s == null ? "" : new Date(s * 1000).toLocaleString());
const span = (s) => (s == null ? "" : s < 60 ? `${s.toFixed(0)} s` : `${Math.floor(s / 60)} min ${(s % 60).toFixed(0)} s`);
const number = (x, digits) => (x == null ? "" : Number(x).toFixed(digits));

function renderRuns() {
  const body = document.querySelector("#run-table tbody");
  body.replaceChildren(...S.runs.map((r) => {
    const tick = el("input", { type: "checkbox" });
    tick.checked = S.selected.has(r.output);
    tick.onchange = () => { tick.checked ? S.selected.add(r.output) : S.selected.delete(r.output); refreshChart(); };
    const actions = el("td");
    const button = (key, fn) => actions.append(Object.assign(el("button", {}, t(key)), { onclick: fn }));
    if (r.job_id) button("runs.logs", () => { S.logsOf = r; refreshLogs(); });
    if (r.job_id && !["SUCCEEDED", "FAILED", "STOPPED"].includes(r.state)) button("runs.stop", () => api("/api/stop", { job_id: r.job_id }).then(refreshRuns));
    if (r.resumable && r.state !== "SUCCEEDED" && r.state !== "FINISHED") button("runs.resume", () => api("/api/resume", { output: r.output }).then(refreshRuns).catch((e) => alert(e.message)));
    return el("tr", { "data-output": r.output }, el("td", {}, tick), el("td", { title: r.output }, r.name, r.kind === "run" ? "" : el("span", { class: "kind" }, ` ${t(`kind.${r.kind}`)}`)),
      el("td", { class: `state ${r.state}`, title: r.message || "" }, t(`state.${r.state}`)), el("td", {}, r.step ?? ""),
      el("td", {}, number(r.loss, 4)), el("td", {}, number(r.tokens_per_s, 0)), el("td", {}, clock(r.start)), el("td", {}, span(r.duration)), actions);
  }));
  $("run-outputs").replaceChildren(...S.runs.map((r) => el("option", { value: r.output })));
}

async function refreshRuns() {
  S.runs = await api("/api/runs");
  if (!S.selected.size && S.runs.length) S.selected.add(S.runs[0].output);
  renderRuns();
  refreshChart();
  if (S.logsOf) refreshLogs();
  const c = await api("/api/cluster").catch(() => null);
  if (c) $("cluster").textContent = t("runs.cluster", { nodes: c.nodes, cpu_used: c.CPU?.used ?? 0, cpu: c.CPU?.total ?? 0, gpu_used: c.GPU?.used ?? 0, gpu: c.GPU?.total ?? 0 });
}

async function refreshChart() {
  const metric = $("metric").value;
  const series = await Promise.all([...S.selected].map(async (output, i) => ({
    name: output.split("/").pop(), color: COLORS[i % COLORS.length],
    points: (await api(`/api/metrics?output=${encodeURIComponent(output)}`)).filter((m) => m[metric] != null).map((m) => [m.step, m[metric]]),
  })));
  drawChart($("chart"), series, metric);
}

function drawChart(svg, series, metric) {
  const all = series.flatMap((s) => s.points);
  const [W, H, L, B] = [720, 300, 60, 30];
  if (!all.length) { svg.innerHTML = `<text x="360" y="150" text-anchor="middle">${esc(t("runs.no_points", { metric }))}</text>`; return; }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const X = (x) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - 20), Y = (y) => H - B - ((y - y0) / (y1 - y0 || 1)) * (H - B - 20);
  const axis = `<line x1="${L}" y1="${H - B}" x2="${W - 10}" y2="${H - B}" class="axis"/><line x1="${L}" y1="10" x2="${L}" y2="${H - B}" class="axis"/>`
    + `<text x="${L}" y="${H - 8}">${x0}</text><text x="${W - 20}" y="${H - 8}" text-anchor="end">${esc(t("runs.step"))} ${x1}</text>`
    + `<text x="${L - 4}" y="${H - B}" text-anchor="end">${+y0.toPrecision(4)}</text><text x="${L - 4}" y="20" text-anchor="end">${+y1.toPrecision(4)}</text>`;
  const lines = series.map((s, i) => `<polyline fill="none" stroke="${s.color}" stroke-width="2" points="${s.points.map((p) => `${X(p[0])},${Y(p[1])}`).join(" ")}"/>`
    + s.points.map((p) => `<circle class="point" cx="${X(p[0])}" cy="${Y(p[1])}" r="2.5" fill="${s.color}"><title>${esc(s.name)} ${p[0]}: ${p[1]}</title></circle>`).join("")
    + `<text x="${W - 20}" y="${24 + 16 * i}" text-anchor="end" fill="${s.color}">${esc(s.name)}</text>`).join("");
  svg.innerHTML = axis + lines;
}

async function refreshLogs() {
  $("logs-title").textContent = t("runs.logs_of", { name: S.logsOf.name });
  $("logs").textContent = (await api(`/api/logs?job_id=${encodeURIComponent(S.logsOf.job_id)}`)).split("\n").slice(-200).join("\n");
  $("logs").scrollTop = $("logs").scrollHeight; // the newest lines
}
$("metric").onchange = refreshChart;

// ---- chat: the same engines as `rayft chat`, streamed; a second model answers the same turns beside it
async function say(side, model) {
  const history = S.chat[side];
  const pane = $(`conversation-${side}`);
  const bubble = el("div", { class: "assistant" });
  pane.append(bubble);
  const system = $("chat-system").value.trim();
  const response = await fetch("/api/chat", {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, messages: system ? [{ role: "system", content: system }, ...history] : history,
      max_new_tokens: +$("chat-max").value, temperature: +$("chat-temperature").value, top_p: +$("chat-top-p").value }),
  });
  if (!response.ok) { bubble.remove(); throw new Error((await response.json()).error); }
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let reply = "";
  for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
    reply += decoder.decode(chunk.value, { stream: true });
    bubble.textContent = reply;
  }
  history.push({ role: "assistant", content: reply });
}
$("chat-form").onsubmit = async (e) => {
  e.preventDefault();
  const text = $("chat-input").value.trim();
  const models = { a: $("chat-model").value.trim(), b: $("chat-model-b").value.trim() };
  if (!text) return;
  $("chat-input").value = "";
  $("chat-error").textContent = "";
  const sides = models.b ? ["a", "b"] : ["a"];
  $("conversations").classList.toggle("compare", sides.length === 2);
  try {
    for (const side of sides) {
      S.chat[side].push({ role: "user", content: text });
      $(`conversation-${side}`).append(el("div", { class: "user" }, text));
      await say(side, models[side]);
    }
  } catch (err) { $("chat-error").textContent = err.message; }
};
$("chat-reset").onclick = () => { S.chat = { a: [], b: [] }; $("conversation-a").replaceChildren(); $("conversation-b").replaceChildren(); };

// ---- evaluate: `rayft eval mc` and `rayft eval similarity`, in this process
const scoreTable = (header, rows) => el("table", {}, el("tr", {}, ...header.map((h) => el("th", {}, h))), ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c)))));
$("eval-mc-go").onclick = async () => {
  $("eval-mc-out").textContent = t("eval.working");
  try {
    const r = await api("/api/eval/mc", { model: $("eval-model").value.trim(), task_dir: $("eval-task").value.trim(),
      n_shot: +$("eval-shots").value, lang: $("eval-lang").value, split: $("eval-split").value });
    const pct = (e) => `${(100 * e.accuracy).toFixed(1)}%`;
    $("eval-mc-out").replaceChildren(scoreTable([t("eval.subject"), t("eval.questions"), t("eval.accuracy")],
      [...Object.values(r.subjects).map((s) => [s.name, s.questions, pct(s)]), [t("eval.average"), r.overall.questions, pct(r.overall)]]));
  } catch (err) { $("eval-mc-out").textContent = err.message; }
};
$("eval-sim-go").onclick = async () => {
  $("eval-sim-out").textContent = t("eval.working");
  try {
    const r = await api("/api/eval/similarity", { predictions: $("eval-predictions").value.trim() });
    const names = Object.keys(r).filter((k) => typeof r[k] === "number" && k !== "rows");
    $("eval-sim-out").replaceChildren(scoreTable([...names, t("data.rows")], [[...names.map((k) => r[k].toFixed(2)), r.rows]]));
  } catch (err) { $("eval-sim-out").textContent = err.message; }
};

// ---- export
$("export-go").onclick = async () => {
  $("export-result").textContent = t("export.working");
  try {
    const r = await api("/api/export", { run_dir: $("export-run").value.trim(), output: $("export-output").value.trim(),
      dtype: $("export-dtype").value, max_shard_size: $("export-shard").value.trim(), ollama: $("export-ollama").checked });
    $("export-result").textContent = t("export.done", { output: r.output });
  } catch (err) { $("export-result").textContent = err.message; }
};

// ---- tabs and start
function showTab(name) {
  document.querySelectorAll(".tab, #tabs button").forEach((n) => n.classList.toggle("active", n.id === name || n.dataset.tab === name));
  if (name === "runs") refreshRuns();
  if (name === "sweep") { buildSweep(); refreshSweep().catch(() => {}); }
}
document.querySelectorAll("#tabs button").forEach((b) => (b.onclick = () => showTab(b.dataset.tab)));
setInterval(() => { if ($("runs").classList.contains("active")) refreshRuns().catch(() => {}); }, 2000);

(async () => {
  const languages = await api("/api/languages");
  $("language").replaceChildren(...Object.entries(languages).map(([code, name]) => el("option", { value: code }, name)));
  const saved = localStorage.getItem("rayft-language");
  $("language").value = saved in languages ? saved : navigator.language.slice(0, 2) in languages ? navigator.language.slice(0, 2) : "en";
  $("language").onchange = () => setLanguage($("language").value);
  S.fields = await api("/api/fields");
  S.config = structuredClone(S.fields.starter);
  await setLanguage($("language").value);
  await check({ config: S.config });
  api("/api/runs").then((runs) => { S.runs = runs; renderRuns(); }).catch(() => {});
})();
