// fusionserve console: plain JavaScript over the public API. No third-party requests.
"use strict";

const state = { key: localStorage.getItem("fusionserve-key") || "", history: {}, last: null };

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.key) headers["Authorization"] = "Bearer " + state.key;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    document.getElementById("keybox").style.display = "block";
    throw new Error("an API key is needed");
  }
  return response;
}

async function json(path, options) {
  const response = await api(path, options);
  const body = await response.json();
  if (!response.ok) throw new Error((body.error && (body.error.message || body.error)) || response.status);
  return body;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const child of children) node.append(child);
  return node;
}

// --- tabs -------------------------------------------------------------------------------
function show() {
  const tab = (location.hash || "#overview").slice(1);
  document.querySelectorAll("section").forEach(s => s.classList.toggle("on", s.id === tab));
  document.querySelectorAll("header a").forEach(a => a.classList.toggle("on", a.dataset.tab === tab));
  if (tab === "models") loadModels();
  if (tab === "batches") loadBatches();
  if (tab === "playground") loadPlayground();
}

// --- overview ---------------------------------------------------------------------------
async function poll() {
  let body;
  try { body = await json("/v1/stats"); } catch (e) { return; }
  const root = document.getElementById("overview-models");
  for (const [name, m] of Object.entries(body.models)) {
    const before = state.history[name] || [];
    const prev = before[before.length - 1];
    const rate = prev ? Math.max(0, (m.inferences - prev.inferences) / Math.max(0.001, body.time - prev.time)) : 0;
    before.push({ time: body.time, inferences: m.inferences, rate });
    state.history[name] = before.slice(-300);
    let card = document.getElementById("card-" + name);
    if (!card) {
      card = el("div", { class: "card", id: "card-" + name });
      card.innerHTML = `<h3>${name}</h3><div class="grid">
        <div><div class="figure" id="workers-${name}"></div><div class="label">ready workers</div></div>
        <div><div class="figure" id="throughput-${name}"></div><div class="label">rows/s (last second)</div></div>
        <div><div class="figure" id="latency-${name}"></div><div class="label">queue p50 / p99 ms</div></div>
        <div><div class="figure" id="compute-${name}"></div><div class="label">compute p50 / p99 ms</div></div>
        <div><div class="figure" id="depth-${name}"></div><div class="label">queue depth by priority</div></div>
        <div><div class="figure" id="errors-${name}"></div><div class="label">errors by reason</div></div>
        </div><div id="chart-${name}" style="height:220px"></div><div id="sizes-${name}" style="height:200px"></div>`;
      root.append(card);
    }
    const fmt = v => (v === null || v === undefined ? "–" : Number(v).toFixed(1));
    document.getElementById("workers-" + name).textContent = m.ready_workers;
    document.getElementById("throughput-" + name).textContent = rate.toFixed(1);
    document.getElementById("latency-" + name).textContent = fmt(m.queue_ms.p50) + " / " + fmt(m.queue_ms.p99);
    document.getElementById("compute-" + name).textContent = fmt(m.compute_ms.p50) + " / " + fmt(m.compute_ms.p99);
    document.getElementById("depth-" + name).textContent =
      Object.entries(m.queue_depth).map(([p, n]) => p + ": " + n).join("  ");
    const errors = Object.entries(m.outcomes).filter(([k, v]) => k !== "done" && v > 0);
    document.getElementById("errors-" + name).textContent =
      errors.length ? errors.map(([k, v]) => k + " " + v).join(", ") : "none";
    if (window.Plotly && location.hash !== "#playground") {
      const h = state.history[name];
      Plotly.react("chart-" + name, [{ x: h.map(p => new Date(p.time * 1000)), y: h.map(p => p.rate), mode: "lines", name: "rows/s" }],
        { margin: { t: 24, l: 40, r: 10, b: 30 }, title: { text: "throughput, rows/s", font: { size: 12 } } },
        { displayModeBar: false, staticPlot: true });
      const sizes = Object.entries(m.batch_sizes);
      Plotly.react("sizes-" + name, [{ x: sizes.map(s => s[0]), y: sizes.map(s => s[1]), type: "bar" }],
        { margin: { t: 24, l: 40, r: 10, b: 30 }, title: { text: "batches by size", font: { size: 12 } }, xaxis: { type: "category" } },
        { displayModeBar: false, staticPlot: true });
    }
  }
}

// --- models -------------------------------------------------------------------------------
async function loadModels() {
  const table = document.getElementById("model-table");
  const body = await json("/v1/models");
  table.replaceChildren(el("tr", {}, el("th", {}, "model"), el("th", {}, "versions"), el("th", {}, "workers"), el("th", {}, "")));
  for (const m of body.models) {
    const detail = el("button", { "data-model": m.name }, "details");
    detail.onclick = () => showModel(m.name);
    table.append(el("tr", { id: "model-" + m.name }, el("td", {}, m.name), el("td", {}, m.versions.join(", ")),
      el("td", {}, String(m.workers)), el("td", {}, detail)));
  }
}

async function showModel(name) {
  const m = await json("/v1/models/" + encodeURIComponent(name));
  const box = document.getElementById("model-detail");
  const load = el("button", {}, "load"), unload = el("button", {}, "unload");
  const status = el("span");
  load.onclick = () => repository(name, "load", status);
  unload.onclick = () => repository(name, "unload", status);
  box.replaceChildren(el("div", { class: "card" }, el("h3", {}, name), load, " ", unload, " ", status,
    el("h4", {}, "Signature"), el("pre", {}, JSON.stringify({ inputs: m.inputs, outputs: m.outputs }, null, 1)),
    el("h4", {}, "Config"), el("pre", {}, JSON.stringify(m.config, null, 1))));
}

async function repository(name, action, status) {
  const response = await api(`/v2/repository/models/${encodeURIComponent(name)}/${action}`, { method: "POST" });
  status.textContent = response.ok ? action + "ed" : (await response.json()).error;
}

// --- batches ------------------------------------------------------------------------------
const batchRows = new Map();

// One row per batch, built once and updated in place: the refresh each second must not
// replace a button the user is about to click, nor a results link already fetched.
function batchRow(batchId) {
  if (batchRows.has(batchId)) return batchRows.get(batchId);
  const bar = el("progress", { "data-batch": batchId });
  const percent = document.createTextNode("");
  const cells = { status: el("td"), counts: el("td"), eta: el("td") };
  const cancel = el("button", {}, "cancel");
  cancel.onclick = async () => { await api("/v1/batches/" + batchId, { method: "DELETE" }); loadBatches(); };
  const download = el("button", { "data-results": batchId }, "results");
  download.onclick = () => downloadResults(batchId, download);
  const row = el("tr", { id: "batch-" + batchId }, el("td", {}, batchId), cells.status,
    el("td", {}, bar, percent), cells.counts, cells.eta, el("td", {}, cancel, " ", download));
  row.update = b => {
    const c = b.counts, settled = c.total - c.queued;
    bar.setAttribute("max", String(c.total));
    bar.setAttribute("value", String(settled));
    percent.textContent = " " + Math.round(100 * settled / Math.max(1, c.total)) + " %";
    cells.status.textContent = b.status;
    cells.counts.textContent = `${c.done} / ${c.failed} / ${c.total}`;
    cells.eta.textContent = b.eta_s === null ? "–" : String(b.eta_s);
    cancel.disabled = b.finished_at !== null;
  };
  batchRows.set(batchId, row);
  return row;
}

async function loadBatches() {
  const table = document.getElementById("batch-table");
  let body;
  try { body = await json("/v1/batches?limit=50"); } catch (e) { return; }
  const rows = body.batches.map(b => { const row = batchRow(b.batch_id); row.update(b); return row; });
  const listed = new Set(body.batches.map(b => b.batch_id));
  for (const id of [...batchRows.keys()]) if (!listed.has(id)) batchRows.delete(id);
  table.replaceChildren(el("tr", {}, ...["batch", "status", "progress", "done / failed / total", "ETA s", ""].map(h => el("th", {}, h))), ...rows);
  table.dataset.refreshes = String(Number(table.dataset.refreshes || 0) + 1);
}

async function downloadResults(batchId, button) {
  const response = await api(`/v1/batches/${batchId}/results`);
  const text = await response.text();
  const link = el("a", { href: URL.createObjectURL(new Blob([text], { type: "application/jsonl" })),
    download: batchId + ".jsonl", id: "download-" + batchId, "data-lines": String(text.trim().split("\n").length) },
    "save " + batchId + ".jsonl");
  button.replaceWith(link);
}

// --- playground ---------------------------------------------------------------------------
// A classifier answers labels (/infer, then the job); a model whose config says
// task = "generate" writes text, streamed token by token (/generate with stream: true).
const playground = { image: null, audio: null };

async function loadPlayground() {
  const select = document.getElementById("pg-model");
  if (select.options.length) return;
  const body = await json("/v1/models");
  for (const m of body.models) select.append(el("option", { value: m.name }, m.name));
  await selectModel();
}

const writesText = m => Boolean(m.config && m.config.task === "generate");

// Show the generation controls for a model that writes text, with its token cap.
async function selectModel() {
  const select = document.getElementById("pg-model"), name = select.value;
  const controls = document.getElementById("pg-gen");
  controls.hidden = true;
  delete controls.dataset.model;
  if (!name) return;
  let m;
  try { m = await json("/v1/models/" + encodeURIComponent(name)); } catch (e) { return; }
  if (select.value !== name) return;  // another model was chosen meanwhile
  controls.hidden = !writesText(m);
  if (writesText(m)) {
    const max = document.getElementById("pg-max-tokens"), cap = m.config.generation.max_new_tokens;
    max.max = String(cap);
    max.placeholder = "up to " + cap;
  }
  controls.dataset.model = name;  // settled for this model
}

function readFile(input, then) {
  const file = input.files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => then(String(reader.result).split(",", 2)[1]);
  reader.readAsDataURL(file);
}

async function sample() {
  const model = document.getElementById("pg-model").value;
  const seed = document.getElementById("pg-seed").value;
  const s = await json(`/console/sample?model=${encodeURIComponent(model)}&seed=${seed}`);
  document.getElementById("pg-question").value = s.question;
  playground.image = s.image;
  playground.audio = s.audio || null;
  const img = document.getElementById("pg-image");
  img.src = "data:image/png;base64," + s.image;
  img.style.display = "block";
  img.dataset.expected = s.answer;
}

function showError(out, message) {
  out.append(el("p", { class: "error", id: "pg-error" }, message));
}

async function ask() {
  const model = document.getElementById("pg-model").value;
  const item = { text: document.getElementById("pg-question").value };
  if (playground.image) item.image = playground.image;
  if (playground.audio) item.audio = playground.audio;
  const button = document.getElementById("pg-submit");
  const status = document.getElementById("pg-status"), out = document.getElementById("pg-result");
  status.textContent = "…";
  out.replaceChildren();
  button.disabled = true;
  try {
    const m = await json("/v1/models/" + encodeURIComponent(model));
    await (writesText(m) ? generate : classify)(model, item, status, out);
  } catch (e) {
    status.textContent = "";
    showError(out, String(e.message || e));
  } finally {
    button.disabled = false;
  }
}

async function classify(model, item, status, out) {
  const job = await json(`/v1/models/${encodeURIComponent(model)}/infer`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(item) });
  const result = await json(`/v1/jobs/${job.job_id}?wait=20`);
  status.textContent = result.status;
  const rows = (result.labels || []).map(l => el("tr", {}, el("td", {}, l.label), el("td", {}, l.score.toFixed(4))));
  const t = result.timings || {};
  out.replaceChildren(
    el("p", {}, "Answer: ", el("strong", { id: "pg-answer" }, result.labels ? result.labels[0].label : result.status)),
    el("table", { id: "pg-labels" }, ...rows),
    el("p", { id: "pg-timings" }, `queue ${t.queue_ms} ms · compute ${t.compute_ms} ms · batch of ${t.batch_size}`));
}

// The generation parameters typed in; an empty field is left to the server's default.
function generationParameters() {
  const body = {};
  for (const [id, name] of [["pg-max-tokens", "max_new_tokens"], ["pg-temperature", "temperature"], ["pg-gen-seed", "seed"]]) {
    const value = document.getElementById(id).value.trim();
    if (value !== "") body[name] = Number(value);
  }
  return body;
}

async function errorMessage(response) {
  const text = await response.text();
  let message = text.trim() || response.statusText;
  try {
    const body = JSON.parse(text);
    message = (body.error && (body.error.message || body.error)) || message;
  } catch (e) { /* not JSON: a proxy's page, say */ }
  return `HTTP ${response.status}: ${message}`;
}

// Server-Sent Events from a fetch body, as {id, event, data} (data parsed as JSON).
// EventSource cannot POST, so the stream is read and split here.
async function* serverSentEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buffer = (buffer + decoder.decode(value, { stream: !done })).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const event = { id: "", event: "message", data: [] };
        for (const line of block.split("\n")) {
          if (!line || line.startsWith(":")) continue;  // ": keep-alive"
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let text = colon < 0 ? "" : line.slice(colon + 1);
          if (text.startsWith(" ")) text = text.slice(1);
          if (field === "data") event.data.push(text);
          else if (field === "event") event.event = text;
          else if (field === "id") event.id = text;
        }
        if (event.data.length) yield { id: event.id, event: event.event, data: JSON.parse(event.data.join("\n")) };
      }
      if (done) return;
    }
  } finally {
    reader.cancel().catch(() => {});  // a reader that stopped early closes the connection
  }
}

const ms = v => (v === null || v === undefined ? "–" : Number(v).toFixed(1));

async function generate(model, item, status, out) {
  const body = Object.assign({}, item, generationParameters(), { stream: true });
  const response = await api(`/v1/models/${encodeURIComponent(model)}/generate`, {
    method: "POST", headers: { "Content-Type": "application/json", "Accept": "text/event-stream" },
    body: JSON.stringify(body) });
  if (!response.ok) throw new Error(await errorMessage(response));
  const job = response.headers.get("X-Job-Id") || "";
  // data-tokens: token events making the text shown (a restart starts it again).
  const answer = el("div", { id: "pg-answer", class: "written", "data-job-id": job, "data-tokens": "0", "data-restarts": "0" });
  const summary = el("p", { id: "pg-timings" });
  out.replaceChildren(el("p", {}, "Answer", job ? ` (job ${job})` : "", ":"), answer, summary);
  status.textContent = "writing…";
  let final = null;
  for await (const event of serverSentEvents(response.body)) {
    const d = event.data;
    if (event.event === "token") {
      answer.append(d.text);
      answer.dataset.tokens = String(Number(answer.dataset.tokens) + 1);
    } else if (event.event === "restart") {
      answer.textContent = "";
      answer.dataset.tokens = "0";
      answer.dataset.restarts = String(Number(answer.dataset.restarts) + 1);
      status.textContent = "its worker was lost; writing again…";
    } else if (event.event === "done" || event.event === "error") {
      final = event;
      break;
    }
  }
  if (final === null) {
    status.textContent = "";
    answer.dataset.status = "interrupted";
    showError(out, `the stream ended before the answer was complete; the job: /v1/jobs/${job}`);
    return;
  }
  const d = final.data;
  if (final.event === "error") {
    status.textContent = "failed";
    answer.dataset.status = "failed";
    showError(out, `error ${d.code || ""}: ${d.message || JSON.stringify(d)}`);
    return;
  }
  if (typeof d.text === "string" && d.text !== answer.textContent) {
    answer.textContent = d.text;  // the job's text is the answer (a cancel flushes held-back text)
    answer.dataset.replaced = "true";
  }
  status.textContent = d.status;
  answer.dataset.status = d.status;
  const t = d.timings || {};
  summary.replaceChildren("finish: ", el("strong", { id: "pg-finish" }, String(d.finish_reason)),
    ` · first token after ${ms(t.time_to_first_token_ms)} ms · ${t.tokens_per_s ?? "–"} tokens/s`,
    ` · ${(d.tokens || []).length} tokens · version ${d.version ?? "–"}`);
  if (d.status !== "done") showError(out, (d.error && d.error.message) || `the request ended ${d.status}`);
}

// --- wiring -------------------------------------------------------------------------------
document.getElementById("savekey").onclick = () => {
  state.key = document.getElementById("key").value.trim();
  localStorage.setItem("fusionserve-key", state.key);
  document.getElementById("keybox").style.display = "none";
  show();
};
document.getElementById("pg-sample").onclick = sample;
document.getElementById("pg-submit").onclick = ask;
document.getElementById("pg-model").onchange = selectModel;
document.getElementById("pg-image-file").onchange = e => readFile(e.target, b => {
  playground.image = b;
  const img = document.getElementById("pg-image");
  img.src = "data:image/*;base64," + b;
  img.style.display = "block";
});
document.getElementById("pg-audio-file").onchange = e => readFile(e.target, b => { playground.audio = b; });
window.addEventListener("hashchange", show);
show();
poll();
setInterval(poll, 1000);
setInterval(() => { if (location.hash === "#batches") loadBatches(); }, 1000);
