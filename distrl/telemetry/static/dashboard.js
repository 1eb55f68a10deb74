// The distrl dashboard: live charts of one or more runs, fed by one server-sent-events stream.
// Text from the server is only ever set with textContent, never parsed as HTML.
"use strict";

const MAX_ROWS = 10000; // per run in the browser; past it the older half is thinned (as the server does)
const MAX_EVENTS = 200;
const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                 "#7f7f7f", "#bcbd22"];
const SKIP = new Set(["index", "env_steps", "time", "wall_time"]);

// Metrics that describe the system rather than the algorithm.
const SYSTEM = /^(env_steps_per_s|updates_per_s|updates|live_actors|learner\/(replay|samples_per_insert|data_wait|update_ms|actor_lag|sample_age|staleness|updates_per_s)|actor\/(steps_per_s|policy_version))/;
const isLearner = k => k.startsWith("learner/") && !SYSTEM.test(k) && !k.startsWith("learner/pretrain/");
const ALGO_GROUPS = [
  {id: "losses", title: "Losses", test: k => /loss/.test(k)},
  {id: "q", title: "Q values and targets", test: k => /(^|[/_])(q|qs|q_\w+|target\w*|value\w*)$|_q_|\/q_/.test(k)},
  {id: "alpha", title: "Temperature, entropy and multipliers", test: k => /alpha|entropy|lagrang|multiplier|lambda|log_std/.test(k)},
  {id: "bc", title: "Behaviour cloning and prior", test: k => /(^|\/)bc|prior|demo/.test(k)},
  {id: "shield", title: "Shield", test: k => /shield|interven|barrier/.test(k)},
];
const algoGroup = k => {
  if (!isLearner(k) && !/shield|interven|barrier/.test(k)) return null;
  const g = ALGO_GROUPS.find(g => g.test(k));
  return g ? g.id : (isLearner(k) ? "algo-other" : null);
};

const PANELS = [
  {id: "return", section: "learning", title: "Episode return (training actors)", keep: true,
   match: k => k === "actor/episode_return"},
  {id: "eval", section: "learning", title: "Evaluation return", keep: true, video: true,
   match: k => k === "eval/return_mean"},
  {id: "success", section: "learning", title: "Success rate",
   match: k => k === "eval/success_rate" || k === "actor/episode_success"},
  {id: "cost", section: "learning", title: "Episode cost and violations",
   match: k => /^(actor|eval)\/.*(cost|violation)/.test(k)},
  ...ALGO_GROUPS.map(g => ({id: g.id, section: "algorithm", title: g.title, match: k => algoGroup(k) === g.id})),
  {id: "algo-other", section: "algorithm", title: "Other learner metrics", match: k => algoGroup(k) === "algo-other"},
  {id: "steps", section: "system", title: "Env steps/s (all actors)", keep: true,
   match: k => k === "env_steps_per_s"},
  {id: "per-actor", section: "system", title: "Env steps/s per actor (last 30 s)", bars: true},
  {id: "updates", section: "system", title: "Learner updates/s", match: k => k === "updates_per_s"},
  {id: "wait", section: "system", title: "Learner time waiting for data (fraction)",
   match: k => k === "learner/data_wait_fraction"},
  {id: "replay", section: "system", title: "Replay size per shard",
   match: k => /^learner\/replay\/\d+\/size$/.test(k) || k === "learner/replay_size"},
  {id: "spi", section: "system", title: "Samples per insert per shard (achieved vs target)",
   match: k => /^learner\/replay\/\d+\/(target_)?samples_per_insert$/.test(k) || k === "learner/samples_per_insert"},
  {id: "lag", section: "system", title: "Policy lag and sample age (policy versions)",
   match: k => /^learner\/(actor_lag|sample_age|staleness)_(mean|max)$/.test(k)},
  {id: "actors", section: "system", title: "Live actors", match: k => k === "live_actors"},
  {id: "any", section: "system", title: "Any metric", pick: true},
];

const state = {
  runs: [],          // [{id, name, live, color, rows, next, keys, snapshot}]
  shown: new Set(),  // run ids
  xaxis: "env_steps",
  smoothing: 0,
  cards: [],
  source: null,
  received: 0,
};

// -- formatting -------------------------------------------------------------------------------

function fmt(v) {
  if (v === null || v === undefined || !isFinite(v)) return "-";
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(2) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (a >= 100 || Number.isInteger(v)) return v.toFixed(0);
  if (a === 0) return "0";
  if (a < 1e-3) return v.toExponential(1).replace(".0e", "e");
  return String(parseFloat(v.toPrecision(3)));
}
function dur(s) {
  if (s === null || s === undefined || !isFinite(s)) return "-";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60);
  return h ? h + "h" + String(m).padStart(2, "0") + "m" : m + "m" + String(s % 60).padStart(2, "0") + "s";
}
const pct = f => (f === null || f === undefined) ? "-" : (100 * f).toFixed(1) + "%";
const xfmt = v => state.xaxis === "wall_time" ? dur(v) : fmt(v);
function el(tag, parent, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (cls) e.className = cls;
  if (parent) parent.appendChild(e);
  return e;
}

// -- data -------------------------------------------------------------------------------------

function addRows(run, rows) {
  for (const row of rows) {
    if (row.index < run.next) continue; // already have it (a reconnect re-sent it)
    run.rows.push(row);
    run.next = row.index + 1;
    for (const k in row) if (!SKIP.has(k) && typeof row[k] === "number") run.keys.add(k);
  }
  while (run.rows.length > MAX_ROWS) {
    const half = Math.floor(run.rows.length / 2);
    run.rows = run.rows.slice(0, half).filter((_, i) => i % 2 === 0).concat(run.rows.slice(half));
  }
  state.received += rows.length;
}

function smooth(ys) {
  const w = state.smoothing;
  if (!w) return ys;
  // Exponential moving average with TensorBoard's debiasing, skipping gaps.
  let last = 0, n = 0;
  return ys.map(y => {
    if (y === null) return null;
    last = last * w + (1 - w) * y; n += 1;
    return last / (1 - Math.pow(w, n));
  });
}

function shownRuns() { return state.runs.filter(r => state.shown.has(r.id)); }

function cardKeys(card, run) {
  if (card.spec.pick) return card.select.value && run.keys.has(card.select.value) ? [card.select.value] : [];
  return [...run.keys].filter(card.spec.match).sort();
}

// One uPlot table per run ([x, y1, y2, ...]), joined on x when several runs are shown.
function chartData(card) {
  const runs = shownRuns(), tables = [], series = [];
  const many = runs.length > 1;
  runs.forEach(run => {
    const keys = cardKeys(card, run);
    if (!keys.length) return;
    const rows = run.rows.filter(r => keys.some(k => typeof r[k] === "number"));
    const xs = rows.map(r => r[state.xaxis]);
    const cols = keys.map(k => {
      let ys = rows.map(r => (typeof r[k] === "number" ? r[k] : null));
      if (card.log) ys = ys.map(y => (y !== null && y > 0 ? y : null));
      return smooth(ys);
    });
    tables.push([xs, ...cols]);
    keys.forEach((k, i) => series.push({
      label: many ? run.name + ": " + k : k,
      color: many ? shade(run.color, i) : PALETTE[i % PALETTE.length],
    }));
  });
  if (!tables.length) return {series, data: null};
  const data = tables.length === 1 ? tables[0] : uPlot.join(tables);
  return {series, data};
}

function shade(color, i) {
  if (i === 0) return color;
  const dash = ["cc", "99", "66", "44"][(i - 1) % 4];
  return color + dash;
}

// -- charts -----------------------------------------------------------------------------------

function makeCards() {
  for (const spec of PANELS) {
    const grid = document.querySelector("#" + spec.section + " .grid");
    const card = {spec, log: false, zoom: null, plot: null, sig: "", points: 0};
    card.el = el("div", grid, null, "card");
    card.el.dataset.panel = spec.id;
    const h = el("h3", card.el);
    el("span", h, spec.title, "title");
    if (spec.pick) {
      card.select = el("select", h);
      el("option", card.select, "(pick a metric)").value = "";
      card.select.onchange = () => { card.sig = ""; draw(card); };
    }
    if (!spec.bars) {
      const log = el("button", h, "log");
      log.title = "logarithmic y axis";
      log.onclick = () => { card.log = !card.log; log.classList.toggle("on", card.log); card.sig = ""; draw(card); };
    }
    const body = el("div", card.el, null, "body");
    card.plotEl = el("div", body, null, "plot");
    if (spec.video) {
      card.video = el("video", body);
      card.video.muted = true; card.video.loop = true; card.video.controls = true; card.video.autoplay = true;
      card.video.style.display = "none";
      card.video.title = "the newest evaluation clip";
    }
    state.cards.push(card);
  }
  window.addEventListener("resize", () => state.cards.forEach(c => { if (c.plot) c.plot.setSize(size(c)); }));
}

function size(card) {
  return {width: Math.max(200, card.plotEl.clientWidth), height: 220};
}

function eventMarkers(u) {
  const run = shownRuns()[0];
  if (!run || !run.snapshot) return;
  const ctx = u.ctx, key = state.xaxis;
  ctx.save();
  ctx.strokeStyle = "rgba(230, 120, 0, 0.7)"; ctx.setLineDash([4, 4]); ctx.lineWidth = 1;
  for (const ev of run.snapshot.events || []) {
    const x = ev[key];
    if (typeof x !== "number" || x < u.scales.x.min || x > u.scales.x.max) continue;
    const px = Math.round(u.valToPos(x, "x", true));
    ctx.beginPath(); ctx.moveTo(px, u.bbox.top); ctx.lineTo(px, u.bbox.top + u.bbox.height); ctx.stroke();
  }
  ctx.restore();
}

function buildPlot(card, series, data) {
  if (card.plot) { card.plot.destroy(); card.plot = null; }
  card.plotEl.textContent = "";
  const opts = {
    ...size(card),
    scales: {x: {time: false}, y: {distr: card.log ? 3 : 1}},
    series: [
      {label: state.xaxis === "wall_time" ? "wall time" : "env steps", value: (u, v) => xfmt(v)},
      ...series.map(s => ({label: s.label, stroke: s.color, width: 1.5, spanGaps: true,
                           points: {size: 4}, value: (u, v) => fmt(v)})),
    ],
    axes: [
      {values: (u, vals) => vals.map(xfmt), size: 32},
      {values: (u, vals) => vals.map(fmt), size: 56},
    ],
    cursor: {drag: {x: true, y: false, setScale: true}},
    legend: {live: true},
    hooks: {
      setSelect: [u => {
        if (u.select.width > 2) card.zoom = [u.posToVal(u.select.left, "x"), u.posToVal(u.select.left + u.select.width, "x")];
      }],
      draw: [eventMarkers],
    },
  };
  card.plot = new uPlot(opts, data, card.plotEl);
  card.plot.over.addEventListener("dblclick", () => { card.zoom = null; });
}

function draw(card) {
  if (card.spec.bars) return drawBars(card);
  const {series, data} = chartData(card);
  const sig = state.xaxis + "|" + card.log + "|" + series.map(s => s.label).join(",");
  card.points = data ? data[0].length : 0;
  if (!data || !data[0].length) {
    if (card.plot) { card.plot.destroy(); card.plot = null; }
    card.sig = "";
    card.plotEl.textContent = "";
    el("div", card.plotEl, "no data yet", "empty-note");
    card.el.classList.toggle("hidden", !card.spec.keep && !card.spec.pick);
    return;
  }
  card.el.classList.remove("hidden");
  if (sig !== card.sig || !card.plot) {
    buildPlot(card, series, data);
    card.sig = sig;
  } else {
    card.plot.setData(data, card.zoom === null);
  }
  if (card.zoom !== null) card.plot.setScale("x", {min: card.zoom[0], max: card.zoom[1]});
}

// Each actor's rate from its cumulative env_steps over the last RATE_SPAN_S of snapshots: the
// same measure as the run's total, steadier than an actor's own last one-second window.
const RATE_SPAN_S = 30;
function trackActorRates(run, snap) {
  const now = Date.now() / 1000, hist = run.actorSteps || (run.actorSteps = {});
  for (const [source, values] of Object.entries(snap.sources || {})) {
    if (!source.startsWith("actor/") || typeof values.env_steps !== "number") continue;
    const h = hist[source] || (hist[source] = []);
    if (h.length && values.env_steps < h[h.length - 1][1]) h.length = 0; // the actor restarted
    h.push([now, values.env_steps]);
    while (h.length > 2 && now - h[0][0] > RATE_SPAN_S) h.shift();
  }
  for (const source of Object.keys(hist)) if (!(snap.sources || {})[source]) delete hist[source];
}
function actorRate(run, source) {
  const h = (run.actorSteps || {})[source], values = run.snapshot.sources[source];
  if (h && h.length >= 2 && h[h.length - 1][0] > h[0][0]) {
    return (h[h.length - 1][1] - h[0][1]) / (h[h.length - 1][0] - h[0][0]);
  }
  return typeof values.steps_per_s === "number" ? values.steps_per_s : null;
}

function drawBars(card) {
  const run = shownRuns().find(r => r.snapshot && r.snapshot.sources);
  const sources = run ? run.snapshot.sources : {};
  const actors = Object.keys(sources).filter(s => s.startsWith("actor/") && actorRate(run, s) !== null)
    .sort((a, b) => Number(a.split("/")[1]) - Number(b.split("/")[1]));
  card.plotEl.textContent = "";
  card.points = actors.length;
  card.el.classList.toggle("hidden", !actors.length);
  if (!actors.length) return;
  const rates = Object.fromEntries(actors.map(a => [a, actorRate(run, a)]));
  const top = Math.max(...Object.values(rates), 1);
  const bars = el("div", card.plotEl, null, "bars");
  for (const a of actors.slice(0, 64)) {
    const v = rates[a], row = el("div", bars, null, "row");
    el("span", row, a, "name");
    const track = el("span", row, null, "track");
    el("div", track, null, "fill").style.width = (100 * v / top).toFixed(1) + "%";
    el("span", row, fmt(v), "value");
  }
  if (actors.length > 64) el("div", bars, "... and " + (actors.length - 64) + " more");
}

function updatePicker() {
  const card = state.cards.find(c => c.spec.pick), sel = card.select;
  const have = new Set([...sel.options].map(o => o.value));
  const keys = new Set();
  shownRuns().forEach(r => r.keys.forEach(k => keys.add(k)));
  for (const k of [...keys].sort()) if (!have.has(k)) el("option", sel, k).value = k;
}

let pending = false;
function redraw() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    updatePicker();
    state.cards.forEach(draw);
    for (const section of ["learning", "algorithm", "system"]) {
      const visible = document.querySelectorAll("#" + section + " .card:not(.hidden)").length;
      document.getElementById(section).classList.toggle("empty", visible === 0);
    }
  });
}

// -- header, events, videos -------------------------------------------------------------------

function showRuns() {
  const box = document.getElementById("runs");
  box.textContent = "";
  for (const run of state.runs) {
    const chip = el("span", box, null, "run-chip" + (state.shown.has(run.id) ? " on" : ""));
    chip.dataset.run = run.id;
    el("span", chip, null, "dot").style.background = run.color;
    el("span", chip, run.name);
    el("span", chip, run.snapshot && run.snapshot.live === false ? "done" : "", "state");
    chip.onclick = () => {
      if (state.shown.has(run.id)) { if (state.shown.size > 1) state.shown.delete(run.id); }
      else state.shown.add(run.id);
      showRuns(); connect(); state.cards.forEach(c => { c.sig = ""; }); redraw(); showStats();
    };
  }
}

function showStats() {
  const run = shownRuns()[0], box = document.getElementById("stats");
  box.textContent = "";
  const s = run && run.snapshot;
  if (!s) { el("span", box, "waiting for data..."); return; }
  const last = s.last || {};
  const success = last["eval/success_rate"] ?? last["actor/episode_success"];
  const items = [
    ["run", run.name + (s.live === false ? " (finished)" : "")],
    ["env steps", fmt(s.env_steps) + (s.total_env_steps ? " / " + fmt(s.total_env_steps) + " (" + pct(s.fraction_done) + ")" : "")],
    ["ETA", dur(s.eta_s)],
    ["steps/s", fmt(s.env_steps_per_s)],
    ["updates", fmt(s.updates) + " (" + fmt(s.updates_per_s) + "/s)"],
    ["return", fmt(last["actor/episode_return"])],
    ["eval", fmt(last["eval/return_mean"])],
    ["success", success === undefined ? "-" : pct(success)],
    ["policy lag", fmt(last["learner/actor_lag_mean"] ?? last["learner/staleness_mean"])],
    ["actors", String(s.live_actors)],
    ["wall", dur(s.wall_time)],
  ];
  for (const [name, value] of items) {
    const item = el("span", box);
    el("span", item, name + " ");
    el("b", item, value);
  }
  document.querySelector("#bar div").style.width = (100 * (s.fraction_done || 0)) + "%";
  showEvents(run);
  showVideo(run);
}

function showEvents(run) {
  const box = document.getElementById("events");
  const events = (run.snapshot.events || []).slice(-MAX_EVENTS).reverse();
  box.textContent = "";
  if (!events.length) { el("div", box, "no events (restarts, scaling and other notes appear here)"); return; }
  for (const ev of events) {
    const row = el("div", box, null, "event");
    const when = new Date(ev.time * 1000).toLocaleTimeString();
    el("span", row, when + "  @" + fmt(ev.env_steps) + " steps", "when");
    el("span", row, ev.message);
  }
}

function showVideo(run) {
  const card = state.cards.find(c => c.spec.video);
  const videos = run.snapshot.videos || [];
  if (!videos.length) { card.video.style.display = "none"; return; }
  const newest = videos[videos.length - 1];
  const src = "videos/" + encodeURIComponent(run.id) + "/" + encodeURIComponent(newest.name);
  if (card.video.dataset.src !== src) {
    card.video.dataset.src = src;
    card.video.src = src;
    card.video.title = "newest evaluation clip: " + newest.name;
  }
  card.video.style.display = "";
}

// -- the stream -------------------------------------------------------------------------------

function connect() {
  if (state.source) state.source.close();
  const runs = shownRuns();
  const query = runs.map(r => "run=" + encodeURIComponent(r.id) + "&since=" + r.next).join("&");
  const source = new EventSource("api/stream?" + query);
  const status = document.getElementById("connection");
  state.source = source;
  source.addEventListener("open", () => { status.textContent = "live"; status.classList.remove("bad"); });
  source.addEventListener("rows", e => {
    const msg = JSON.parse(e.data), run = state.runs.find(r => r.id === msg.run);
    if (run) { addRows(run, msg.rows); redraw(); }
  });
  source.addEventListener("snapshot", e => {
    const msg = JSON.parse(e.data), run = state.runs.find(r => r.id === msg.run);
    if (!run) return;
    const wasLive = run.snapshot ? run.snapshot.live : undefined;
    run.snapshot = msg;
    trackActorRates(run, msg);
    if (wasLive !== msg.live) showRuns();
    if (run === shownRuns()[0]) showStats();
    const bars = state.cards.find(c => c.spec.bars);
    drawBars(bars);
  });
  source.onerror = () => {
    // Reconnect with our own cursors (the browser's automatic retry would resend old rows).
    status.textContent = "disconnected; retrying...";
    status.classList.add("bad");
    source.close();
    if (state.source === source) setTimeout(() => { if (state.source === source) connect(); }, 2000);
  };
}

async function start() {
  makeCards();
  const xaxis = document.getElementById("xaxis");
  xaxis.onchange = () => { state.xaxis = xaxis.value; state.cards.forEach(c => { c.zoom = null; c.sig = ""; }); redraw(); };
  const slider = document.getElementById("smoothing");
  slider.oninput = () => {
    state.smoothing = Number(slider.value);
    document.getElementById("smoothing-value").textContent = slider.value;
    redraw();
  };
  let runs = [];
  for (;;) {
    try { runs = await (await fetch("api/runs", {cache: "no-store"})).json(); break; }
    catch (e) { document.getElementById("connection").textContent = "cannot reach the dashboard server"; }
    await new Promise(r => setTimeout(r, 2000));
  }
  state.runs = runs.map((r, i) => ({...r, color: PALETTE[i % PALETTE.length], rows: [], next: 0,
                                    keys: new Set(), snapshot: null}));
  state.runs.forEach(r => state.shown.add(r.id));
  showRuns();
  connect();
  redraw();
}

// For tests and for poking around in the browser console.
window.distrlDashboard = {
  state,
  stats: () => ({
    received: state.received,
    runs: state.runs.map(r => ({id: r.id, name: r.name, rows: r.rows.length, next: r.next})),
    cards: Object.fromEntries(state.cards.map(c => [c.spec.id, {
      points: c.points, visible: !c.el.classList.contains("hidden"),
      series: c.plot ? c.plot.series.length - 1 : 0}])),
  }),
};

start();
