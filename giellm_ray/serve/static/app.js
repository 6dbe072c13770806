// The page at / of `giellm serve`: a client of the JSON API only (GET v1/tasks, POST v1/extract).
// The text is cut at every span edge; each covered piece is a <mark> naming the items covering it
// (data-items) and its offsets (data-start/data-end), coloured by its first item's label, with
// label and score on hover. A relation item (head;RELATION;tail) also gets an arrow head -> tail.
// Plain JS, no library, no build step, nothing loaded from elsewhere.
"use strict";

// The same palette, in the same label order, as the error report (metrics/html_report.py).
const PALETTE = ["#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69",
  "#fccde5", "#d9d9d9", "#bc80bd", "#ccebc5", "#ffed6f"];
const SVG = "http://www.w3.org/2000/svg";
let TASKS = {};

const $ = (id) => document.getElementById(id);

function coloursFor(dataset, items) {
  const task = TASKS[dataset] || {};
  const names = [...(task.wl_labels || []), ...(task.relation_labels || [])];
  for (const it of items) if (!names.includes(it.label)) names.push(it.label);
  const out = {};
  names.forEach((n, i) => { out[n] = PALETTE[i % PALETTE.length]; });
  return out;
}

function fmtScore(s) { return (s === null || s === undefined) ? "–" : Number(s).toFixed(2); }

// [{start, end, item, role}] for every grounded head and tail.
function spansOf(items) {
  const spans = [];
  items.forEach((it, i) => {
    if (it.start !== null && it.start !== undefined) spans.push({ start: it.start, end: it.end, item: i, role: "head" });
    if (it.tail_start !== null && it.tail_start !== undefined) spans.push({ start: it.tail_start, end: it.tail_end, item: i, role: "tail" });
  });
  return spans;
}

function segments(text, spans) {
  const cuts = new Set([0, text.length]);
  for (const s of spans) { cuts.add(s.start); cuts.add(s.end); }
  const edges = [...cuts].filter((c) => c >= 0 && c <= text.length).sort((a, b) => a - b);
  const out = [];
  for (let k = 0; k + 1 < edges.length; k++) {
    const a = edges[k], b = edges[k + 1];
    if (a < b) out.push({ a, b, covering: spans.filter((s) => s.start <= a && b <= s.end) });
  }
  return out;
}

function renderText(text, items, colours) {
  const box = $("highlighted");
  box.textContent = "";
  for (const seg of segments(text, spansOf(items))) {
    const piece = text.slice(seg.a, seg.b);
    if (!seg.covering.length) { box.appendChild(document.createTextNode(piece)); continue; }
    const m = document.createElement("mark");
    const first = items[seg.covering[0].item];
    m.style.background = colours[first.label] || "#ddd";
    m.dataset.items = [...new Set(seg.covering.map((s) => s.item))].join(",");
    m.dataset.start = seg.a;
    m.dataset.end = seg.b;
    seg.covering.forEach((s) => m.classList.add(`${s.role}-${s.item}`));
    m.title = seg.covering.map((s) => {
      const it = items[s.item];
      const what = it.tail !== null && it.tail !== undefined ? `${it.label} (${s.role})` : it.label;
      return `${what} · score ${fmtScore(it.score)}`;
    }).join("\n");
    m.textContent = piece;
    box.appendChild(m);
  }
}

function drawArrows(items, colours) {
  const svg = $("arrows");
  svg.textContent = "";
  const view = $("view").getBoundingClientRect();
  const defs = document.createElementNS(SVG, "defs");
  svg.appendChild(defs);
  items.forEach((it, i) => {
    if (it.tail === null || it.tail === undefined) return;
    const head = document.querySelector(`mark.head-${i}`), tail = document.querySelector(`mark.tail-${i}`);
    if (!head || !tail) return;
    const colour = "#555";
    const marker = document.createElementNS(SVG, "marker");
    Object.entries({ id: `arrow-${i}`, viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7",
      markerHeight: "7", orient: "auto-start-reverse" }).forEach(([k, v]) => marker.setAttribute(k, v));
    const tip = document.createElementNS(SVG, "path");
    tip.setAttribute("d", "M0,0 L10,5 L0,10 z");
    tip.setAttribute("fill", colour);
    marker.appendChild(tip);
    defs.appendChild(marker);
    const h = head.getBoundingClientRect(), t = tail.getBoundingClientRect();
    const x1 = h.left + h.width / 2 - view.left, y1 = h.top - view.top;
    const x2 = t.left + t.width / 2 - view.left, y2 = t.top - view.top;
    const lift = 18 + 6 * (i % 3);
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", `M${x1},${y1} C${x1},${y1 - lift} ${x2},${y2 - lift} ${x2},${y2}`);
    path.setAttribute("fill", "none");
    path.setAttribute("stroke", colour);
    path.setAttribute("stroke-width", "1.6");
    path.setAttribute("marker-end", `url(#arrow-${i})`);
    path.classList.add("relation");
    path.dataset.item = i;
    svg.appendChild(path);
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", (x1 + x2) / 2);
    label.setAttribute("y", Math.min(y1, y2) - lift + 2);
    label.setAttribute("text-anchor", "middle");
    label.setAttribute("font-size", "12");
    label.setAttribute("fill", "#333");
    label.setAttribute("paint-order", "stroke");
    label.setAttribute("stroke", colours[it.label] || "#fff");
    label.setAttribute("stroke-width", "5");
    label.textContent = it.label;
    svg.appendChild(label);
  });
}

function renderTable(items, colours) {
  const body = document.querySelector("#items tbody");
  body.textContent = "";
  items.forEach((it, i) => {
    const tr = document.createElement("tr");
    const off = it.start === null || it.start === undefined ? "not in text" : `${it.start}–${it.end}`;
    const cells = [i, it.label, it.span, off, it.tail ?? "", fmtScore(it.score)];
    cells.forEach((c, k) => {
      const td = document.createElement("td");
      td.textContent = String(c);
      if (k === 1) td.style.background = colours[it.label] || "#ddd";
      tr.appendChild(td);
    });
    body.appendChild(tr);
  });
  const legend = $("legend");
  legend.textContent = "";
  for (const [name, colour] of Object.entries(colours)) {
    if (!items.some((it) => it.label === name)) continue;
    const s = document.createElement("span");
    s.style.background = colour;
    s.textContent = name;
    legend.appendChild(s);
  }
}

function show(text, body) {
  const items = body.items || [];
  const colours = coloursFor(body.dataset, items);
  $("result").hidden = false;
  $("tl-label").textContent = body.tl_label ?? "(none)";
  $("tl-score").textContent = body.tl_score === undefined ? "" : `score ${fmtScore(body.tl_score)}`;
  $("latency").textContent = Number(body.latency_ms).toFixed(1);
  $("ntok").textContent = body.num_generated_tokens;
  $("error").hidden = !body.error;
  $("error").textContent = body.error || "";
  $("raw").textContent = body.raw_output;
  renderText(text, items, colours);
  renderTable(items, colours);
  drawArrows(items, colours);
  window.lastResponse = body;  // for tests and the curious: the API's answer as drawn
  document.body.dataset.state = "done";
}

async function submit(event) {
  event.preventDefault();
  const text = $("text").value, dataset = $("dataset").value;
  document.body.dataset.state = "busy";
  $("status").textContent = "extracting…";
  $("submit").disabled = true;
  try {
    const r = await fetch("v1/extract", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ text, dataset }) });
    const body = await r.json();
    if (!r.ok) {
      $("result").hidden = true;
      $("status").textContent = `${r.status}: ${body.detail}`;
      document.body.dataset.state = "refused";
      return;
    }
    $("status").textContent = `request ${body.request_id}`;
    show(text, body);
  } catch (err) {
    $("status").textContent = `request failed: ${err}`;
    document.body.dataset.state = "failed";
  } finally {
    $("submit").disabled = false;
  }
}

async function init() {
  const r = await fetch("v1/tasks");
  const body = await r.json();
  TASKS = body.tasks;
  $("model").textContent = `model ${body.model}`;
  const select = $("dataset");
  for (const name of Object.keys(TASKS)) {
    const o = document.createElement("option");
    o.value = name;
    o.textContent = name;
    select.appendChild(o);
  }
  $("form").addEventListener("submit", submit);
  window.addEventListener("resize", () => {
    if (window.lastResponse) drawArrows(window.lastResponse.items || [], coloursFor(window.lastResponse.dataset, window.lastResponse.items || []));
  });
  document.body.dataset.state = "ready";
}

init();
