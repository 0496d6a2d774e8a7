// Live dashboard of the chat cluster: polls the monitor's JSON every two seconds, no build step.
"use strict";

const POLL_MS = 2000;
const KEEP_POINTS = 900; // 15 minutes at one point per second, as the monitor keeps them

const series = {
  t: [], connections: [], users: [], messagesPerMinute: [], p50: [], p95: [], p99: [],
  errorRate: [], queueDepth: [], inFlight: [], gateways: [], workers: [], alerts: [],
};
let lastPoint = 0;
const charts = [];

function chart(elementId, title, lines) {
  const element = document.getElementById(elementId);
  const options = {
    width: Math.max(300, element.clientWidth || 440),
    height: 180,
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true } },
    axes: [
      { stroke: "#8a96a3", grid: { stroke: "#27303a" }, ticks: { stroke: "#27303a" } },
      { stroke: "#8a96a3", grid: { stroke: "#27303a" }, ticks: { stroke: "#27303a" }, size: 55 },
    ],
    series: [{}].concat(lines.map(([key, label, color]) => ({ label, stroke: color, width: 2, points: { show: false } }))),
  };
  const plot = new uPlot(options, [[]].concat(lines.map(() => [])), element);
  charts.push({ plot, keys: lines.map(([key]) => key), element });
}

function redraw() {
  const xs = series.t.map((ms) => ms / 1000);
  for (const { plot, keys } of charts) {
    plot.setData([xs].concat(keys.map((key) => series[key])));
  }
}

function addPoints(points) {
  for (const point of points) {
    if (point.t <= lastPoint) continue;
    lastPoint = point.t;
    for (const key of Object.keys(series)) series[key].push(point[key] ?? null);
  }
  const excess = series.t.length - KEEP_POINTS;
  if (excess > 0) for (const key of Object.keys(series)) series[key].splice(0, excess);
}

function text(id, value) {
  const element = document.querySelector(`[data-figure="${id}"]`);
  if (element) element.textContent = value;
}

function cell(row, value, className) {
  const td = row.insertCell();
  if (value instanceof Node) td.appendChild(value); else td.textContent = value;
  if (className) td.className = className;
  return td;
}

function fill(tbodyId, rows, render, emptyText) {
  const tbody = document.getElementById(tbodyId);
  tbody.replaceChildren();
  if (!rows.length) {
    const row = tbody.insertRow();
    const td = cell(row, emptyText, "empty");
    td.colSpan = 9;
    return;
  }
  for (const item of rows) render(tbody.insertRow(), item);
}

function duration(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  return `${Math.floor(s / 3600)}h`;
}

function traceLink(trace) {
  const link = document.createElement("a");
  link.href = trace.jaegerUrl;
  link.target = "_blank";
  link.rel = "noopener";
  link.textContent = trace.traceId.slice(0, 16);
  link.title = `${trace.traceId} (request ${trace.requestId})`;
  return link;
}

function stages(trace) {
  return Object.entries(trace.stages).map(([name, ms]) => `${name} ${Math.round(ms)}`).join(" · ");
}

function render(doc) {
  const health = doc.health;
  const status = document.getElementById("status");
  status.textContent = health.status;
  status.className = health.status;
  document.getElementById("issues").textContent = health.issues.join(" · ");
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()} · window ${doc.windowMs / 1000}s`;
  const c = doc.cluster;
  text("connections", c.connections);
  text("users", c.users);
  text("messagesPerMinute", c.messagesPerMinute.toFixed(1));
  text("p95", Math.round(c.responseTime.p95));
  text("errorRate", `${(c.errorRate * 100).toFixed(1)}%`);
  text("queueDepth", doc.queues.known ? doc.queues.depth : "?");
  text("inFlight", c.inFlight);
  text("instances", `${doc.gateways.length} / ${doc.workers.length}`);
  text("alerts", doc.alerts.open.length);
  text("memory", Math.round(c.memoryBytes / 1048576));

  fill("alerts", doc.alerts.open, (row, a) => {
    cell(row, a.severity, `sev-${a.severity}`); cell(row, a.alert); cell(row, a.message);
    cell(row, new Date(a.firedAt).toLocaleTimeString());
  }, "no open alerts");
  fill("alert-events", doc.alerts.recent.slice(0, 10), (row, a) => {
    cell(row, a.state, a.state === "firing" ? `sev-${a.severity}` : ""); cell(row, a.alert); cell(row, a.message);
    cell(row, new Date(a.resolvedAt || a.firedAt).toLocaleTimeString());
  }, "none yet");
  fill("gateways", doc.gateways, (row, g) => {
    cell(row, g.instanceId); cell(row, `${g.connections}/${g.maxConnections}`); cell(row, g.users);
    cell(row, g.inFlight); cell(row, g.messagesPerMinute.toFixed(1)); cell(row, Math.round(g.responseTime.p95));
    cell(row, `${(g.errorRate * 100).toFixed(1)}%`); cell(row, Math.round(g.memoryBytes / 1048576)); cell(row, duration(g.uptime));
  }, "no live gateway");
  fill("workers", doc.workers, (row, w) => {
    cell(row, w.instanceId); cell(row, w.inFlight); cell(row, w.concurrency); cell(row, w.messagesPerMinute.toFixed(1));
    cell(row, Math.round(w.responseTime.p95)); cell(row, Math.round(w.firstTokenTime.p95));
    cell(row, `${(w.errorRate * 100).toFixed(1)}%`); cell(row, Math.round(w.memoryBytes / 1048576)); cell(row, duration(w.uptime));
  }, "no live worker");
  fill("slowest", doc.traces.slowest, (row, t) => {
    cell(row, traceLink(t)); cell(row, Math.round(t.totalMs)); cell(row, t.chatType); cell(row, stages(t), "stages");
  }, "no request yet");
  fill("failed", doc.traces.failed, (row, t) => {
    cell(row, traceLink(t)); cell(row, t.errorCode, "sev-critical"); cell(row, Math.round(t.totalMs)); cell(row, stages(t), "stages");
  }, "no failed request");
}

async function poll() {
  try {
    const [metrics, timeline] = await Promise.all([
      fetch("/api/websocket/metrics").then((r) => r.json()),
      fetch(`/api/websocket/metrics/timeline?since=${lastPoint}`).then((r) => r.json()),
    ]);
    addPoints(timeline.points);
    redraw();
    render(metrics);
  } catch (error) {
    document.getElementById("updated").textContent = `monitor unreachable (${error})`;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

chart("chart-connections", "Connections", [["connections", "connections", "#58a6ff"], ["users", "users", "#a371f7"]]);
chart("chart-messages", "Messages", [["messagesPerMinute", "messages/min", "#3fb950"]]);
chart("chart-latency", "Latency", [["p50", "p50", "#3fb950"], ["p95", "p95", "#d29922"], ["p99", "p99", "#f85149"]]);
chart("chart-errors", "Errors", [["errorRate", "error rate", "#f85149"]]);
chart("chart-queue", "Queue", [["queueDepth", "queue depth", "#d29922"], ["inFlight", "in flight", "#58a6ff"]]);
chart("chart-instances", "Instances", [["gateways", "gateways", "#58a6ff"], ["workers", "workers", "#3fb950"], ["alerts", "open alerts", "#f85149"]]);
window.addEventListener("resize", () => {
  for (const { plot, element } of charts) plot.setSize({ width: Math.max(300, element.clientWidth), height: 180 });
});
poll();
