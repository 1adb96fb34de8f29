// Pollen dashboard: plain JavaScript, no build step. Reads the API with the token given in the
// address (#token=…) or typed in; charts with the vendored uPlot. Pages: runs, run (curves,
// rounds, parties, config, models, commands), compare.
"use strict";

const POLL_MS = 1000;
const state = { token: sessionStorage.getItem("pollen-token"), who: null, timer: null, charts: [], route: null };

// ------------------------------------------------------------ API
async function api(path, options = {}) {
  const headers = { Authorization: "Bearer " + (state.token || ""), ...(options.headers || {}) };
  if (options.body && typeof options.body !== "string") {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.body);
  }
  const res = await fetch(path, { ...options, headers });
  if (res.status === 401) { showLogin("That token was not accepted."); throw new Error("unauthorized"); }
  if (!res.ok) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail; } catch (e) { /* not JSON */ }
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return res;
}
const getJSON = async (path) => (await api(path)).json();

// ------------------------------------------------------------ helpers
const $ = (sel, root = document) => root.querySelector(sel);
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}
const badge = (s) => h("span", { class: "badge " + String(s || "").replace(/ /g, "-"), "data-state": s }, s || "?");
const isPct = (m) => /accuracy$/.test(m || "");
// A round record's field; what the parties reported (train_loss, train_lr, ...) is under party_metrics
// (top-level in runs written before that namespace), like pollen.telemetry.history.party_metric.
const field = (r, k) => (r.party_metrics && typeof r.party_metrics === "object" && k in r.party_metrics ? r.party_metrics[k] : r[k]);
function fmtMetric(m, v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "—";
  return isPct(m) ? (100 * v).toFixed(2) + " %" : Number(v).toPrecision(4);
}
function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const u = ["B", "kB", "MB", "GB", "TB"]; let i = 0;
  while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return n.toFixed(i ? 1 : 0) + " " + u[i];
}
function fmtSeconds(s) {
  if (s === null || s === undefined) return "—";
  if (s < 60) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60); return m < 60 ? `${m} min ${Math.round(s % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}
const fmtTime = (t) => (t ? new Date(t * 1000).toLocaleString() : "—");
const ago = (t) => (t ? fmtSeconds(Math.max(0, Date.now() / 1000 - t)) + " ago" : "—");

// ------------------------------------------------------------ charts
const COLORS = ["#c27c0e", "#2563eb", "#16a34a", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];
function chart(el, title, seriesNames, empty) {
  const note = h("p", { class: "muted note hidden" }, empty || "no values yet");
  const box = h("div", { class: "chart", id: "chart-" + title.toLowerCase().replace(/[^a-z0-9]+/g, "-"), "data-points": "0" },
    h("h3", {}, title), note);
  el.append(box);
  const width = Math.max(300, box.clientWidth - 16);
  const opts = {
    width, height: 170, scales: { x: { time: false } }, legend: { show: seriesNames.length > 1 },
    axes: [{}, { size: 60, values: (u, vals, ax, space, incr) => vals.map((v) => tick(v, incr)) }],
    series: [{ label: "round" }, ...seriesNames.map((n, i) => ({ label: n, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true, points: { size: 5 } }))],
  };
  const plot = new uPlot(opts, [[], ...seriesNames.map(() => [])], box);
  const c = { box, plot, note, names: seriesNames };
  state.charts.push(c);
  return c;
}
// A tick label with as many decimals as the step between ticks needs (0.2118, 0.2119, … not 0.212 ×4).
function tick(v, incr) {
  if (v === null || v === undefined) return "";
  const decimals = incr > 0 ? Math.min(12, Math.max(0, -Math.floor(Math.log10(incr) + 1e-9))) : 4;
  return Math.abs(v) >= 1e6 || (v !== 0 && Math.abs(v) < 1e-4 && decimals > 8) ? v.toExponential(2) : v.toFixed(decimals);
}
function setChart(c, xs, ys) {
  c.plot.setData([xs, ...ys]);
  const points = ys.reduce((n, s) => Math.max(n, s.filter((v) => v !== null && v !== undefined).length), 0);
  c.box.setAttribute("data-points", String(points));
  c.note.classList.toggle("hidden", points > 0 || !xs.length);  // e.g. no ε: the run has no differential privacy
}
function clearCharts() { state.charts.forEach((c) => c.plot.destroy()); state.charts = []; }

// ------------------------------------------------------------ login and routing
function showLogin(message) {
  $("#login").classList.remove("hidden");
  $("#login-error").textContent = message || "";
  $("#token-input").focus();
}
$("#login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = $("#token-input").value.trim();
  sessionStorage.setItem("pollen-token", state.token);
  $("#login").classList.add("hidden");
  start();
});

function takeTokenFromAddress() {
  const m = location.hash.match(/[#&?]token=([^&]+)/);
  if (!m) return;
  state.token = decodeURIComponent(m[1]);
  sessionStorage.setItem("pollen-token", state.token);
  const rest = location.hash.replace(/[#&?]token=[^&]+/, "").replace(/^#?/, "#");
  history.replaceState(null, "", location.pathname + (rest === "#" ? "#/" : rest));
}

function route() {
  clearInterval(state.timer); state.timer = null; clearCharts();
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const main = $("#main"); main.replaceChildren();
  if (parts[0] === "run" && parts[1]) return runPage(main, parts[1], parts[2] || "rounds");
  if (parts[0] === "compare") return comparePage(main, (params.get("runs") || "").split(",").filter(Boolean));
  return runsPage(main);
}

async function start() {
  takeTokenFromAddress();
  if (!state.token) return showLogin();
  try { state.who = await getJSON("/api/whoami"); } catch (e) { return; }
  $("#who").textContent = `${state.who.name} (${state.who.role === "control" ? "may steer" : "read only"})`;
  route();
}
window.addEventListener("hashchange", route);

// ------------------------------------------------------------ runs page
async function runsPage(main) {
  main.append(h("h1", {}, "Runs"));
  const filter = h("input", { placeholder: "filter: name, dataset, strategy, status…", size: 40, id: "filter" });
  const compareBtn = h("button", { id: "btn-compare", disabled: true }, "Compare selected");
  main.append(h("div", { class: "toolbar" }, filter, compareBtn));
  const table = h("table", { id: "runs" });
  main.append(table);
  if (state.who.can_start && state.who.role === "control") main.append(startForm());
  const cols = [["", null], ["run", "name"], ["status", "status"], ["data", "dataset"], ["strategy", "strategy"],
    ["protections", "protections"], ["ε", "epsilon"], ["best", "best"], ["rounds", "rounds_done"], ["duration", "seconds"], ["started", "started"]];
  let rows = [], sortKey = "started", desc = true;
  const chosen = new Set();
  function draw() {
    const q = filter.value.toLowerCase();
    const shown = rows.filter((r) => !q || [r.name, r.dataset, r.strategy, r.status, ...(r.protections || [])].join(" ").toLowerCase().includes(q));
    shown.sort((a, b) => {
      const x = a[sortKey], y = b[sortKey];
      const c = x === y ? 0 : x === null || x === undefined ? 1 : y === null || y === undefined ? -1 : x < y ? -1 : 1;
      return desc ? -c : c;
    });
    table.replaceChildren(h("tr", {}, cols.map(([label, key]) => h("th", {
      onclick: () => { if (!key) return; desc = sortKey === key ? !desc : true; sortKey = key; draw(); },
    }, label + (key === sortKey ? (desc ? " ↓" : " ↑") : "")))));
    for (const r of shown) {
      const box = h("input", { type: "checkbox", checked: chosen.has(r.name), onchange: (e) => {
        e.target.checked ? chosen.add(r.name) : chosen.delete(r.name); compareBtn.disabled = chosen.size < 2; } });
      table.append(h("tr", { "data-run": r.name },
        h("td", {}, box), h("td", {}, h("a", { href: "#/run/" + encodeURIComponent(r.name) }, r.name)), h("td", {}, badge(r.status)),
        h("td", {}, r.dataset), h("td", {}, r.strategy), h("td", {}, (r.protections || []).map((p) => h("span", { class: "tag" }, p))),
        h("td", { class: "num" }, r.epsilon === null ? "—" : r.epsilon.toFixed(2)),
        h("td", { class: "num" }, r.best === null ? "—" : `${fmtMetric(r.metric, r.best)} ${r.metric} (r${r.best_round})`),
        h("td", { class: "num" }, `${r.rounds_done}${r.rounds ? " / " + r.rounds : ""}`),
        h("td", { class: "num" }, fmtSeconds(r.seconds)), h("td", {}, fmtTime(r.started))));
    }
    if (!shown.length) table.append(h("tr", {}, h("td", { colspan: cols.length, class: "muted" }, rows.length ? "no run matches" : "no runs yet")));
  }
  filter.addEventListener("input", draw);
  compareBtn.addEventListener("click", () => { location.hash = "#/compare?runs=" + [...chosen].map(encodeURIComponent).join(","); });
  async function refresh() { try { rows = await getJSON("/api/runs"); draw(); } catch (e) { /* shown on next try */ } }
  await refresh();
  state.timer = setInterval(refresh, 3 * POLL_MS);
}

function startForm() {
  const text = h("textarea", { id: "start-config", spellcheck: "false" },
    '[data]\ndataset = "digits"\nparties = 10\n\n[federation]\nrounds = 20\n\n[run]\nname = "digits-from-dashboard"\n');
  const msg = h("span", { class: "muted" });
  const btn = h("button", { class: "primary", id: "btn-start", onclick: async () => {
    btn.disabled = true; msg.textContent = "starting…";
    try {
      const res = await (await api("/api/runs", { method: "POST", body: { toml: text.value } })).json();
      location.hash = "#/run/" + encodeURIComponent(res.run);
    } catch (e) { msg.textContent = e.message; msg.className = "error"; btn.disabled = false; }
  } }, "Start run");
  return h("fieldset", {}, h("legend", {}, "Start a simulation from a config (TOML, as in a config file)"), text, h("div", { class: "toolbar" }, btn, msg));
}

// ------------------------------------------------------------ run page
async function runPage(main, name, tab) {
  const title = h("h1", {}, name);
  const status = h("span", { id: "status" }, "…");
  const info = h("div", { class: "status-line" }, h("span", { class: "kv" }, "status ", status),
    h("span", { class: "kv", id: "round-info" }), h("span", { class: "kv", id: "headline" }));
  main.append(title, info);
  const controls = h("div", { class: "toolbar", id: "controls" });
  main.append(controls);
  const charts = h("div", { class: "charts" });
  main.append(charts);
  const tabs = ["rounds", "parties", "config", "models", "commands"];
  main.append(h("div", { class: "tabs" }, tabs.map((t) => h("a", { href: `#/run/${encodeURIComponent(name)}/${t}`, class: t === tab ? "on" : "" }, t))));
  const panel = h("div", { class: "panel", id: "panel-" + tab });
  main.append(panel);

  let run;
  try { run = await getJSON(`/api/runs/${encodeURIComponent(name)}`); } catch (e) { main.append(h("p", { class: "error" }, e.message)); return; }
  const metric = run.metric || "accuracy";
  const cMetric = chart(charts, metric, [metric + " (global model)", "held-out (parties)"]);
  const cLoss = chart(charts, "loss", ["loss", "train loss"]);
  const cEps = chart(charts, "epsilon", ["ε spent"], "no ε: this run has no differential privacy");
  const cBytes = chart(charts, "bytes", ["up (MB)", "down (MB)"]);
  const cTime = chart(charts, "round time", ["seconds"]);
  const rounds = [];
  let busy = false;

  if (run.controllable && state.who.role === "control") buildControls(controls, name, run);
  else if (run.controllable) controls.append(h("span", { class: "muted" }, "read-only token: the controls need the control token"));

  function redraw() {
    const xs = rounds.map((r) => r.round);
    const col = (k, scale = 1) => rounds.map((r) => { const v = field(r, k); return typeof v === "number" ? v * scale : null; });
    const pct = isPct(metric) ? 100 : 1;
    setChart(cMetric, xs, [col(metric, pct), col("fed_" + metric, pct)]);
    setChart(cLoss, xs, [col("loss"), col("train_loss")]);
    setChart(cEps, xs, [col("epsilon")]);
    setChart(cBytes, xs, [col("bytes_up", 1e-6), col("bytes_down", 1e-6)]);
    setChart(cTime, xs, [col("seconds")]);
  }
  async function tick() {
    if (busy) return; busy = true;
    try {
      const last = rounds.length ? rounds[rounds.length - 1].round : 0;
      const [r, fresh] = await Promise.all([getJSON(`/api/runs/${encodeURIComponent(name)}`),
        getJSON(`/api/runs/${encodeURIComponent(name)}/rounds?after=${last}`)]);
      run = r;
      if (fresh.length) { rounds.push(...fresh); redraw(); }
      const s = run.status;
      status.replaceChildren(badge(s));
      status.setAttribute("data-state", s);
      $("#round-info").textContent = `round ${run.rounds_done}${run.rounds ? " of " + run.rounds : ""}`;
      $("#headline").textContent = run.best === null ? "" : `best ${metric} ${fmtMetric(metric, run.best)} (round ${run.best_round})`;
      updateControls(run);
      if (fresh.length || tab !== "rounds") await drawPanel(panel, tab, name, run, rounds, metric);
      if (["finished", "stopped", "incomplete", "failed"].includes(s) && !run.live) { clearInterval(state.timer); state.timer = null; }
    } catch (e) { /* the next tick tries again */ } finally { busy = false; }
  }
  await tick();
  await drawPanel(panel, tab, name, run, rounds, metric);
  state.timer = setInterval(tick, POLL_MS);
}

function buildControls(el, name, run) {
  const post = async (path, body) => {
    const msg = $("#control-msg");
    try { await api(`/api/runs/${encodeURIComponent(name)}/${path}`, { method: "POST", body: body || {} }); msg.textContent = ""; msg.className = "muted"; }
    catch (e) { msg.textContent = e.message; msg.className = "error"; }
  };
  const num = (id, label, step) => h("label", {}, label + " ", h("input", { type: "number", id, step, min: 0 }));
  el.append(
    h("button", { id: "btn-pause", onclick: () => post("pause") }, "Pause after this round"),
    h("button", { id: "btn-resume", onclick: () => post("resume") }, "Resume"),
    h("button", { id: "btn-stop", onclick: () => { if (confirm("Stop the run after the current round? Its checkpoint is kept; --resume continues it.")) post("stop"); } }, "Stop"),
    h("span", { class: "muted" }, "│ next rounds:"),
    num("set-lr", "lr", "any"), num("set-epochs", "epochs", 1), num("set-ppr", "parties/round", 1), num("set-timeout", "timeout (s)", "any"),
    h("button", { id: "btn-apply", onclick: () => {
      const body = {};
      const read = (id, key, f) => { const v = $("#" + id).value; if (v !== "") body[key] = f(v); };
      read("set-lr", "lr", parseFloat); read("set-epochs", "epochs", (v) => parseInt(v, 10));
      read("set-ppr", "parties_per_round", (v) => parseInt(v, 10)); read("set-timeout", "round_timeout", parseFloat);
      post("settings", body);
    } }, "Apply"),
    h("span", { id: "control-msg", class: "muted" }));
}

function updateControls(run) {
  const s = run.status, over = ["finished", "stopped", "stopping", "incomplete", "failed"].includes(s);
  const set = (id, disabled) => { const b = $("#" + id); if (b) b.disabled = disabled; };
  set("btn-pause", over || s === "paused" || s === "pausing");
  set("btn-resume", over || !(s === "paused" || s === "pausing"));
  set("btn-stop", over);
  set("btn-apply", over);
}

async function drawPanel(panel, tab, name, run, rounds, metric) {
  const base = `/api/runs/${encodeURIComponent(name)}`;
  if (tab === "rounds") {
    const keys = ["round", metric, "loss", "fed_" + metric, "train_loss", "epsilon", "parties", "parties_failed", "bytes_up", "bytes_down", "seconds"];
    const t = h("table", { id: "rounds-table" }, h("tr", {}, keys.map((k) => h("th", { class: k === "round" ? "" : "num" }, k.replace("_", " ")))));
    for (const r of rounds.slice().reverse()) {
      t.append(h("tr", {}, keys.map((k) => {
        let v = field(r, k);
        if (Array.isArray(v)) v = v.length;
        else if (k.startsWith("bytes")) v = fmtBytes(v);
        else if (k === metric || k === "fed_" + metric) v = fmtMetric(metric, v);
        else if (typeof v === "number" && k !== "round") v = k === "seconds" ? v.toFixed(2) : Number(v).toPrecision(4);
        return h("td", { class: k === "round" ? "" : "num" }, v === undefined || v === null ? "—" : v);
      })));
    }
    panel.replaceChildren(t);
  } else if (tab === "parties") {
    const parties = await getJSON(base + "/parties");
    const names = [...new Set(parties.flatMap((p) => Object.keys(p.metrics || {})))].slice(0, 6);
    const can = run.controllable && state.who.role === "control" && run.live;
    const t = h("table", { id: "parties-table" }, h("tr", {},
      ["party", "state", "last seen", "rounds", "failures", ...names, "ε", "bytes up", "bytes down", "reason", can ? "" : null].filter((x) => x !== null).map((k) => h("th", {}, k))));
    for (const p of parties) {
      const act = can ? h("td", {}, h("button", { onclick: async () => {
        try { await api(`${base}/parties/${encodeURIComponent(p.id)}/${p.state === "removed" ? "readmit" : "remove"}`, { method: "POST" }); }
        catch (e) { alert(e.message); } } }, p.state === "removed" ? "re-admit" : "remove")) : null;
      t.append(h("tr", { "data-party": p.id }, h("td", {}, p.id), h("td", {}, badge(p.state)), h("td", {}, p.last_seen ? ago(p.last_seen) : (p.last_round ? "round " + p.last_round : "—")),
        h("td", { class: "num" }, p.rounds), h("td", { class: "num" }, p.failures),
        names.map((k) => h("td", { class: "num" }, fmtMetric(k, (p.metrics || {})[k]))),
        h("td", { class: "num" }, p.epsilon === null || p.epsilon === undefined ? "—" : p.epsilon.toFixed(3)),
        h("td", { class: "num" }, fmtBytes(p.bytes_up)), h("td", { class: "num" }, fmtBytes(p.bytes_down)),
        h("td", { class: "muted" }, p.reason || ""), act));
    }
    panel.replaceChildren(t);
  } else if (tab === "config") {
    const cfg = await getJSON(base + "/config");
    const text = Object.entries(cfg).map(([s, v]) => `[${s}]\n` + Object.entries(v).map(([k, x]) => `${k} = ${JSON.stringify(x)}`).join("\n")).join("\n\n");
    panel.replaceChildren(h("pre", { id: "config-text" }, text));
  } else if (tab === "models") {
    const models = await getJSON(base + "/models");
    const t = h("table", { id: "models-table" }, h("tr", {}, ["version", "round", metric, "loss", "size", ""].map((k) => h("th", {}, k))));
    for (const m of models) {
      t.append(h("tr", {}, h("td", {}, m.label), h("td", {}, m.round ?? "—"), h("td", {}, fmtMetric(metric, m.metrics[metric])),
        h("td", {}, m.metrics.loss === undefined ? "—" : Number(m.metrics.loss).toPrecision(4)), h("td", {}, fmtBytes(m.bytes)),
        h("td", {}, h("button", { onclick: () => download(`${base}/models/${m.file}`, `${name}-${m.file}.safetensors`) }, "download"))));
    }
    if (!models.length) t.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "no model saved yet")));
    panel.replaceChildren(t);
  } else if (tab === "commands") {
    const t = h("table", { id: "commands-table" }, h("tr", {}, ["before round", "command", "settings", "by", "when"].map((k) => h("th", {}, k))));
    for (const c of run.commands || []) t.append(h("tr", {}, h("td", {}, c.round), h("td", {}, c.command), h("td", {}, JSON.stringify(c.args)), h("td", {}, c.by), h("td", {}, fmtTime(c.at))));
    if (!(run.commands || []).length) t.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "no commands")));
    panel.replaceChildren(t);
  }
}

async function download(path, filename) {
  const blob = await (await api(path)).blob();
  const a = h("a", { href: URL.createObjectURL(blob), download: filename });
  document.body.append(a); a.click(); a.remove();
}

// ------------------------------------------------------------ compare page
async function comparePage(main, names) {
  main.append(h("h1", {}, "Compare runs"));
  if (names.length < 2) { main.append(h("p", { class: "muted" }, "Tick two or more runs on the runs page, then press Compare selected.")); return; }
  const data = await getJSON("/api/compare?runs=" + names.map(encodeURIComponent).join(","));
  const metric = data.runs[0].metric || "accuracy";
  const charts = h("div", { class: "charts" }); main.append(charts);
  const maxRound = Math.max(...Object.values(data.rounds).map((rs) => (rs.length ? rs[rs.length - 1].round : 0)));
  const xs = Array.from({ length: maxRound }, (_, i) => i + 1);
  const series = (k, scale) => names.map((n) => { const by = new Map(data.rounds[n].map((r) => [r.round, field(r, k)]));
    return xs.map((x) => (typeof by.get(x) === "number" ? by.get(x) * scale : null)); });
  setChart(chart(charts, metric + " per round", names), xs, series(metric, isPct(metric) ? 100 : 1));
  setChart(chart(charts, "loss per round", names), xs, series("loss", 1));
  const rows = [["status", (r) => r.status], ["data", (r) => r.dataset], ["strategy", (r) => r.strategy], ["protections", (r) => (r.protections || []).join(", ") || "—"],
    ["final " + metric, (r) => fmtMetric(metric, r.final)], ["best " + metric, (r) => (r.best === null ? "—" : `${fmtMetric(metric, r.best)} (round ${r.best_round})`)],
    ["rounds", (r) => r.rounds_done], ["ε", (r) => (r.epsilon === null ? "—" : r.epsilon.toFixed(2))],
    ["communication up + down", (r) => `${fmtBytes(r.bytes_up)} + ${fmtBytes(r.bytes_down)}`],
    ["communication / data", (r) => (r.comm_ratio === null ? "—" : (100 * r.comm_ratio).toFixed(1) + " %")], ["duration", (r) => fmtSeconds(r.seconds)]];
  const t = h("table", { id: "compare-table" }, h("tr", {}, h("th", {}, ""), data.runs.map((r) => h("th", {}, h("a", { href: "#/run/" + encodeURIComponent(r.name) }, r.name)))));
  for (const [label, f] of rows) t.append(h("tr", {}, h("td", { class: "muted" }, label), data.runs.map((r) => h("td", {}, f(r)))));
  main.append(h("h2", {}, "Summary"), t);
}

start();
