// A small live view of the service's own /metrics: the Prometheus text format parsed here, rates
// and latencies computed from the difference between two scrapes, drawn as sparklines.

import { $, clear, h } from "./dom.js";

const HISTORY = 60; // points per sparkline

/** Parse the Prometheus text exposition into [{name, labels, value}]. */
export function parsePrometheus(text) {
  const samples = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    let name;
    let labels = {};
    let rest;
    const brace = line.indexOf("{");
    const space = line.search(/\s/);
    if (brace >= 0 && (space < 0 || brace < space)) {
      name = line.slice(0, brace);
      const end = closingBrace(line, brace);
      if (end < 0) continue;
      labels = parseLabels(line.slice(brace + 1, end));
      rest = line.slice(end + 1);
    } else {
      name = line.slice(0, space);
      rest = line.slice(space);
    }
    const value = parseValue(rest.trim().split(/\s+/)[0]);
    if (name && !Number.isNaN(value)) samples.push({ name, labels, value });
  }
  return samples;
}

function closingBrace(line, start) {
  let quoted = false;
  for (let i = start + 1; i < line.length; i++) {
    const c = line[i];
    if (quoted && c === "\\") i++;
    else if (c === '"') quoted = !quoted;
    else if (c === "}" && !quoted) return i;
  }
  return -1;
}

function parseLabels(body) {
  const labels = {};
  const pattern = /([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"/g;
  for (const [, key, value] of body.matchAll(pattern)) {
    labels[key] = value.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
  }
  return labels;
}

function parseValue(text) {
  if (text === "+Inf" || text === "Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  return Number(text);
}

/** What the view needs from one scrape: totals, so that two scrapes give rates. */
export function summarize(samples) {
  const s = {
    requests: 0,
    errors: 0,
    clientErrors: 0,
    durationSum: 0,
    durationCount: 0,
    buckets: new Map(), // le -> cumulative count, every route summed
    inFlight: 0,
    modelsLoaded: 0,
    tokens: 0,
    images: 0,
    routes: new Map(), // "GET /v1/models" -> {requests, sum, count}
  };
  const route = (labels) => {
    const key = `${labels.method || ""} ${labels.route || ""}`.trim();
    if (!s.routes.has(key)) s.routes.set(key, { requests: 0, sum: 0, count: 0 });
    return s.routes.get(key);
  };
  for (const { name, labels, value } of samples) {
    switch (name) {
      case "seedserve_http_requests_total": {
        s.requests += value;
        const status = Number(labels.status);
        if (status >= 500) s.errors += value;
        else if (status >= 400) s.clientErrors += value;
        route(labels).requests += value;
        break;
      }
      case "seedserve_http_request_duration_seconds_sum":
        s.durationSum += value;
        route(labels).sum += value;
        break;
      case "seedserve_http_request_duration_seconds_count":
        s.durationCount += value;
        route(labels).count += value;
        break;
      case "seedserve_http_request_duration_seconds_bucket": {
        const le = parseValue(labels.le);
        s.buckets.set(le, (s.buckets.get(le) || 0) + value);
        break;
      }
      case "seedserve_http_requests_in_flight":
        s.inFlight += value;
        break;
      case "seedserve_models_loaded":
        s.modelsLoaded += value;
        break;
      case "seedserve_generated_tokens_total":
        s.tokens += value;
        break;
      case "seedserve_generated_images_total":
        s.images += value;
        break;
      default:
    }
  }
  return s;
}

/** Rates and latencies between two summaries taken `seconds` apart (a reset counts from 0). */
export function between(before, after, seconds) {
  const delta = (a, b) => (b >= a ? b - a : b);
  const count = delta(before.durationCount, after.durationCount);
  const buckets = [...after.buckets.entries()]
    .map(([le, n]) => [le, delta(before.buckets.get(le) || 0, n)])
    .sort((a, b) => a[0] - b[0]);
  const routes = [...after.routes.entries()].map(([key, r]) => {
    const old = before.routes.get(key) || { requests: 0, sum: 0, count: 0 };
    const n = delta(old.count, r.count);
    return {
      route: key,
      rate: delta(old.requests, r.requests) / seconds,
      mean: n > 0 ? delta(old.sum, r.sum) / n : null,
      total: r.requests,
    };
  });
  const requests = delta(before.requests, after.requests);
  return {
    rate: requests / seconds,
    mean: count > 0 ? delta(before.durationSum, after.durationSum) / count : null,
    p95: quantile(0.95, buckets),
    errorShare: requests > 0 ? delta(before.errors, after.errors) / requests : 0,
    clientErrorShare: requests > 0 ? delta(before.clientErrors, after.clientErrors) / requests : 0,
    tokensRate: delta(before.tokens, after.tokens) / seconds,
    imagesRate: delta(before.images, after.images) / seconds,
    routes,
  };
}

/** histogram_quantile: linear interpolation inside the bucket that holds the quantile. */
export function quantile(q, buckets) {
  if (!buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let previousLe = 0;
  let previousCount = 0;
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (le === Infinity) return previousLe;
      const inBucket = count - previousCount;
      return previousLe + (inBucket > 0 ? ((le - previousLe) * (rank - previousCount)) / inBucket : 0);
    }
    previousLe = le;
    previousCount = count;
  }
  return previousLe;
}

export function milliseconds(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const ms = seconds * 1000;
  return ms >= 100 ? `${ms.toFixed(0)} ms` : ms >= 10 ? `${ms.toFixed(1)} ms` : `${ms.toFixed(2)} ms`;
}

/** Draw `values` (nulls are gaps) as a line with a soft fill, scaled to the largest value. */
export function drawSparkline(canvas, values, color) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  const height = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(width * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const finite = values.filter((v) => v !== null && Number.isFinite(v));
  const top = Math.max(...finite, 1e-9);
  // Stretch the first few points over the width, then scroll once the history is full.
  const step = width / Math.max(values.length - 1, 1);
  const x0 = width - (values.length - 1) * step;
  const y = (v) => height - 3 - (v / top) * (height - 8);
  ctx.strokeStyle = getComputedStyle(canvas).getPropertyValue("--grid").trim() || "#ddd";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(0, height - 2.5);
  ctx.lineTo(width, height - 2.5);
  ctx.stroke();
  if (!finite.length) return;
  ctx.beginPath();
  let started = false;
  let first = null;
  let last = null;
  values.forEach((v, i) => {
    if (v === null || !Number.isFinite(v)) return;
    const px = x0 + i * step;
    if (!started) {
      ctx.moveTo(px, y(v));
      first = px;
      started = true;
    } else ctx.lineTo(px, y(v));
    last = [px, y(v)];
  });
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.75;
  ctx.lineJoin = "round";
  ctx.stroke();
  ctx.lineTo(last[0], height);
  ctx.lineTo(first, height);
  ctx.closePath();
  ctx.globalAlpha = 0.14;
  ctx.fillStyle = color;
  ctx.fill();
  ctx.globalAlpha = 1;
  ctx.beginPath();
  ctx.arc(last[0], last[1], 2.5, 0, 2 * Math.PI);
  ctx.fill();
}

export function setupMetrics() {
  const rates = [];
  const latencies = [];
  let previous = null;
  let timer = null;
  const interval = $("#metrics-interval");
  const style = getComputedStyle(document.documentElement);
  const accent = style.getPropertyValue("--accent").trim() || "#2563eb";
  const warm = style.getPropertyValue("--warm").trim() || "#d97706";

  async function scrape() {
    try {
      const response = await fetch("/metrics", { cache: "no-store" });
      if (!response.ok) throw new Error(`/metrics answered ${response.status}`);
      const now = performance.now();
      const current = summarize(parsePrometheus(await response.text()));
      $("#stat-inflight").textContent = `${current.inFlight} · ${current.modelsLoaded}`;
      $("#stat-total").textContent = `requests served: ${current.requests.toLocaleString("en")}`;
      if (previous) {
        const d = between(previous.summary, current, (now - previous.at) / 1000);
        push(rates, d.rate);
        push(latencies, d.mean);
        $("#stat-rate").textContent = d.rate.toFixed(d.rate >= 10 ? 0 : 2);
        $("#stat-latency").textContent = milliseconds(d.mean);
        $("#stat-p95").textContent = milliseconds(d.p95);
        $("#stat-errors").textContent = `errors: ${(100 * d.errorShare).toFixed(1)}% 5xx, ${(100 * d.clientErrorShare).toFixed(1)}% 4xx`;
        const generated = [];
        if (current.tokens) generated.push(`${d.tokensRate.toFixed(1)} tokens/s`);
        if (current.images) generated.push(`${d.imagesRate.toFixed(1)} images/s`);
        if (generated.length) $("#stat-total").textContent += ` · ${generated.join(", ")}`;
        drawSparkline($("#spark-rate"), rates, accent);
        drawSparkline($("#spark-latency"), latencies, warm);
        routeTable(d.routes);
        document.getElementById("live").dataset.samples = String(rates.length);
      }
      previous = { summary: current, at: now };
    } catch (error) {
      $("#stat-rate").textContent = "–";
      $("#stat-errors").textContent = error.message;
    }
  }

  function schedule() {
    clearInterval(timer);
    timer = setInterval(() => {
      if (!document.hidden) scrape();
    }, Number(interval.value));
  }
  interval.addEventListener("change", () => {
    schedule();
    scrape();
  });
  scrape();
  schedule();
}

function push(list, value) {
  list.push(value);
  if (list.length > HISTORY) list.shift();
}

function routeTable(routes) {
  const busiest = routes
    .filter((r) => r.total > 0)
    .sort((a, b) => b.rate - a.rate || b.total - a.total)
    .slice(0, 8);
  clear(
    $("#route-table tbody"),
    busiest.map((r) =>
      h("tr", h("td", h("code", r.route)), h("td", r.rate.toFixed(2)), h("td", milliseconds(r.mean)), h("td", r.total.toLocaleString("en"))),
    ),
  );
}
