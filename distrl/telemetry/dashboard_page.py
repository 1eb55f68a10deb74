"""The dashboard's single page: HTML, CSS and JS inline (the machines may have no internet).

It polls `/api/metrics?since=N` (new rows only) and `/api/snapshot` every two
seconds and draws each chart on a canvas over env steps. Text from the server
is only ever set with `textContent`, never parsed as HTML.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>distrl</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 14px system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #222; }
  header { padding: 10px 16px; background: #1f2933; color: #fff; display: flex; flex-wrap: wrap; gap: 18px; }
  header b { font-weight: 600; }
  header .stale { color: #f7b955; }
  #bar { height: 4px; background: #3e4c59; } #bar div { height: 4px; background: #4caf50; width: 0; }
  main { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr));
         gap: 12px; padding: 12px; }
  .card { background: #fff; border-radius: 6px; padding: 8px 10px; box-shadow: 0 1px 2px rgba(0,0,0,.12); }
  .card h2 { font-size: 14px; margin: 0 0 4px; display: flex; justify-content: space-between; }
  .legend { font-size: 12px; color: #555; min-height: 16px; }
  .legend span { margin-right: 10px; white-space: nowrap; }
  canvas { width: 100%; height: 220px; display: block; }
  select { font-size: 12px; max-width: 60%; }
  #notes { padding: 0 16px 12px; color: #555; font-size: 12px; }
</style>
</head>
<body>
<header id="stats"><b>distrl</b><span>waiting for the coordinator...</span></header>
<div id="bar"><div></div></div>
<main id="charts"></main>
<div id="notes"></div>
<script>
"use strict";
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const CHARTS = [
  {title: "Episode return", match: k => k === "actor/episode_return"},
  {title: "Eval return", match: k => k === "eval/return_mean"},
  {title: "Losses", match: k => /loss/.test(k)},
  {title: "Steps per second", match: k => k === "env_steps_per_s" || k === "updates_per_s"},
  {title: "Any metric", pick: true},
];
const SKIP = new Set(["index", "env_steps", "time"]);
let rows = [], next = 0, keys = new Set(), cards = [];

function fmt(v) {
  if (v === null || v === undefined || !isFinite(v)) return "-";
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (a >= 100 || Number.isInteger(v)) return v.toFixed(0);
  return v.toPrecision(3);
}
function dur(s) {
  if (s === null || s === undefined || !isFinite(s)) return "-";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60);
  return h ? h + "h" + String(m).padStart(2, "0") + "m" : m + "m" + String(s % 60).padStart(2, "0") + "s";
}
function pct(f) { return (100 * f).toFixed(1) + "%"; }
function el(tag, parent, text) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function makeCards() {
  const main = document.getElementById("charts");
  for (const spec of CHARTS) {
    const card = el("div", main); card.className = "card";
    const h = el("h2", card); el("span", h, spec.title);
    const c = {spec, canvas: null, legend: null, select: null};
    if (spec.pick) {
      c.select = el("select", h);
      c.select.onchange = () => draw(c);
    }
    c.legend = el("div", card); c.legend.className = "legend";
    c.canvas = el("canvas", card);
    cards.push(c);
  }
}

function seriesKeys(c) {
  if (c.spec.pick) return c.select.value ? [c.select.value] : [];
  return [...keys].filter(c.spec.match).sort();
}

function draw(c) {
  const cv = c.canvas, dpr = window.devicePixelRatio || 1;
  const w = cv.clientWidth, h = cv.clientHeight;
  cv.width = w * dpr; cv.height = h * dpr;
  const g = cv.getContext("2d"); g.setTransform(dpr, 0, 0, dpr, 0, 0); g.clearRect(0, 0, w, h);
  const names = seriesKeys(c);
  const series = names.map(k => rows.filter(r => typeof r[k] === "number").map(r => [r.env_steps, r[k]]));
  const pts = series.flat();
  c.legend.textContent = "";
  names.forEach((k, i) => {
    const latest = series[i].length ? fmt(series[i][series[i].length - 1][1]) : "-";
    const s = el("span", c.legend, "\\u25A0 " + k + " " + latest);
    s.style.color = COLORS[i % COLORS.length];
  });
  const L = 52, R = 8, T = 6, B = 22;
  g.strokeStyle = "#ccc"; g.strokeRect(L, T, w - L - R, h - T - B);
  if (!pts.length) { g.fillStyle = "#999"; g.fillText("no data yet", L + 8, T + 16); return; }
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (const [x, y] of pts) {
    x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
  }
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 1; y1 += 1; }
  const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
  const X = x => L + (x - x0) / (x1 - x0) * (w - L - R);
  const Y = y => T + (1 - (y - y0) / (y1 - y0)) * (h - T - B);
  g.fillStyle = "#666"; g.font = "11px system-ui, sans-serif";
  g.fillText(fmt(y1), 2, T + 10); g.fillText(fmt(y0), 2, h - B);
  g.fillText(fmt(x0), L, h - 6); const xr = fmt(x1) + " env steps";
  g.fillText(xr, w - R - g.measureText(xr).width, h - 6);
  series.forEach((s, i) => {
    g.strokeStyle = COLORS[i % COLORS.length]; g.lineWidth = 1.5; g.beginPath();
    s.forEach((p, j) => j ? g.lineTo(X(p[0]), Y(p[1])) : g.moveTo(X(p[0]), Y(p[1])));
    g.stroke();
    if (s.length === 1) { g.fillStyle = g.strokeStyle; g.fillRect(X(s[0][0]) - 2, Y(s[0][1]) - 2, 4, 4); }
  });
}

function updatePicker() {
  const c = cards.find(c => c.spec.pick), sel = c.select, have = new Set([...sel.options].map(o => o.value));
  for (const k of [...keys].sort()) if (!have.has(k)) { const o = el("option", sel, k); o.value = k; }
}

function showSnapshot(s, ok) {
  const hdr = document.getElementById("stats"); hdr.textContent = "";
  el("b", hdr, "distrl");
  if (!s) { const e = el("span", hdr, "coordinator unreachable"); e.className = "stale"; return; }
  const last = s.last || {};
  const total = s.total_env_steps ? " / " + fmt(s.total_env_steps) : "";
  const items = [
    "env steps " + fmt(s.env_steps) + total
      + (s.fraction_done === null ? "" : " (" + pct(s.fraction_done) + ")"),
    "ETA " + dur(s.eta_s), fmt(s.env_steps_per_s) + " steps/s",
    "updates " + fmt(s.updates) + " (" + fmt(s.updates_per_s) + "/s)",
    "return " + fmt(last["actor/episode_return"]), "eval " + fmt(last["eval/return_mean"]),
    "actors " + s.live_actors, "wall " + dur(s.wall_time),
  ];
  for (const t of items) el("span", hdr, t);
  if (!ok) { const e = el("span", hdr, "(stale)"); e.className = "stale"; }
  document.querySelector("#bar div").style.width = (100 * (s.fraction_done || 0)) + "%";
  const notes = document.getElementById("notes"); notes.textContent = "";
  for (const n of s.notes || []) el("div", notes, n);
}

let lastSnapshot = null;
async function poll() {
  let ok = true;
  try {
    for (let more = true; more;) {
      const r = await fetch("api/metrics?since=" + next, {cache: "no-store"});
      const d = await r.json();
      for (const row of d.rows) { rows.push(row); for (const k in row) if (!SKIP.has(k)) keys.add(k); }
      next = d.next; more = d.more;
    }
    lastSnapshot = await (await fetch("api/snapshot", {cache: "no-store"})).json();
  } catch (e) { ok = false; }
  showSnapshot(lastSnapshot, ok);
  updatePicker();
  cards.forEach(draw);
  setTimeout(poll, 2000);
}
makeCards();
window.addEventListener("resize", () => cards.forEach(draw));
poll();
</script>
</body>
</html>
"""
