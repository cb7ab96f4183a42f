// Bellwether console: one page per hash (#live, #spend, ...), data from /ui/api/* (the sampler)
// and from the admin API, which accepts this page's session cookie plus its CSRF token.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const PRIOS = ["p0", "p1", "p2"];
const PRIO_NAMES = ["P0 urgent", "P1 standard", "P2 batch"];
const COLORS = ["#b3261e", "#0b57d0", "#5f6b7a", "#146c2e", "#8a5300", "#6a1b9a", "#00796b", "#c2185b"];
const POLL_MS = 1500;

// ---- small helpers ---------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
function $(id) { return document.getElementById(id); }
function fill(id, ...nodes) { const e = $(id); e.replaceChildren(...nodes.flat()); return e; }
function fmt(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const d = digits === undefined ? (Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2) : digits;
  return Number(v).toLocaleString("en-US", { maximumFractionDigits: d, minimumFractionDigits: 0 });
}
function ms(v) { return v === null || v === undefined ? "–" : v < 1 ? fmt(v * 1000, 0) + " ms" : fmt(v, 2) + " s"; }
function usd(v) { return "$" + Number(v || 0).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 4 }); }
function when(unixMs) { return unixMs ? new Date(unixMs).toLocaleString() : "–"; }
function table(headers, rows, opts) {
  const numeric = (opts && opts.numeric) || [];
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h, i) => el("th", { scope: "col", class: numeric.includes(i) ? "n" : null }, h)))),
    el("tbody", {}, rows.map(r => el("tr", {}, r.map((c, i) => el("td", { class: numeric.includes(i) ? "n" : null }, c))))));
}
// A bar of a used share (full = bad), or with `remaining` of what is left (empty = bad).
function bar(ratio, label, remaining) {
  const r = Math.max(0, Math.min(1, ratio || 0));
  const used = remaining ? 1 - r : r;
  const cls = used >= 0.95 ? "bar bad" : used >= 0.8 ? "bar warn" : "bar";
  return el("div", { class: cls, role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100",
    "aria-valuenow": String(Math.round(r * 100)), "aria-label": label },
    el("span", { style: null }, ""));
}
// Width is set through the CSSOM (allowed by the page's Content-Security-Policy).
function sizeBars(root) {
  root.querySelectorAll(".bar").forEach(b => { b.firstChild.style.width = b.getAttribute("aria-valuenow") + "%"; });
}
function setStatus(text) { $("status").textContent = text; }

// What a waiting request waits for (the admission queue's wait reasons).
const WAIT_REASONS = [
  ["concurrency", "a concurrency slot of its model group"],
  ["deployment_rpm", "a deployment's requests-per-minute tier (configured or learned)"],
  ["deployment_tpm", "a deployment's tokens-per-minute tier (configured or learned)"],
  ["key_limit", "its key's, tenant's or plan's own rate limit"],
];
// A deployment's rate capacity: the limit configured, the one learned from the provider's
// x-ratelimit-* / anthropic-ratelimit-* headers (in force while fresh), and what remains of the
// one in force, as a bar that empties (and turns amber, then red) as the minute's quota is used.
function rpmSet(d) { return d.configured_rpm ? fmt(d.configured_rpm, 0) : "–"; }
function rpmLearned(d) {
  return el("span", { class: "learned", "data-deployment": d.id }, d.learned_rpm ? fmt(d.learned_rpm, 0) : "–");
}
function remainingCell(d) {
  if (!d.rpm_limit) return el("span", { class: "muted" }, "no limit");
  const left = d.remaining_requests >= 0 ? d.remaining_requests : Math.max(0, d.rpm_limit - d.rpm_used);
  const b = bar(left / d.rpm_limit, "remaining requests per minute of " + d.id, true);
  b.dataset.deployment = d.id;
  return el("div", {}, b, `${fmt(left, 0)} of ${fmt(d.rpm_limit, 0)} rpm` + (d.learned_rpm ? " (learned)" : "") +
    (d.blocked_s > 0 ? ` · Retry-After ${fmt(d.blocked_s, 1)} s` : ""));
}
function tpmCell(d) {
  const parts = [d.configured_tpm ? "set " + fmt(d.configured_tpm, 0) : null, d.learned_tpm ? "learned " + fmt(d.learned_tpm, 0) : null].filter(Boolean);
  if (!d.tpm_limit) return el("span", { class: "muted" }, "no limit");
  const left = d.remaining_tokens >= 0 ? d.remaining_tokens : Math.max(0, d.tpm_limit - d.tpm_used);
  return `${fmt(left, 0)} of ${fmt(d.tpm_limit, 0)} left` + (parts.length ? ` (${parts.join(", ")})` : "");
}
function bindingCell(d) {
  return d.binding && d.binding !== "none" ? el("span", { class: "badge warn", "data-binding": d.id }, d.binding) : el("span", { class: "muted" }, "–");
}

async function api(method, path, body) {
  const opts = { method, credentials: "same-origin", headers: { "X-CSRF-Token": CSRF } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  if (r.status === 401) { location.href = "/ui/login"; throw new Error("logged out"); }
  let data = null;
  const text = await r.text();
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { raw: text }; }
  if (!r.ok) {
    const msg = data && data.error ? data.error.message : "HTTP " + r.status;
    const err = new Error(msg);
    err.status = r.status;
    err.code = data && data.error ? data.error.code : "";
    throw err;
  }
  return data;
}

// Field names that hold secrets are never shown, whatever an entry contains.
const SECRET_FIELD = /(^|_|-)(key|secret|password|passwd|token|authorization|credential|credentials)$/i;
function redact(value) {
  if (Array.isArray(value)) return value.map(redact);
  if (value && typeof value === "object") {
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = SECRET_FIELD.test(k) && typeof v !== "object" ? "<redacted>" : redact(v);
    return out;
  }
  if (typeof value === "string") {
    return value.replace(/\b(sk|bw|pk|rk)-[A-Za-z0-9_\-]{8,}/g, "<redacted>")
                .replace(/(Bearer\s+)[A-Za-z0-9._\-]+/gi, "$1<redacted>");
  }
  return value;
}

// ---- charts (uPlot) ----------------------------------------------------------------------------

const charts = {};
function chart(containerId, key, title, seriesDefs, height) {
  let c = charts[key];
  const container = $(containerId);
  if (!c) {
    const box = el("figure", { class: "chart", "aria-label": title });
    const cap = el("h3", {}, title);
    const plotDiv = el("div", {});
    box.append(cap, plotDiv);
    container.append(box);
    c = charts[key] = { box, plotDiv, plot: null, labels: "" };
  }
  const labels = seriesDefs.map(s => s.label).join("|");
  const width = Math.max(300, c.box.clientWidth - 14);
  if (!c.plot || c.labels !== labels) {
    if (c.plot) c.plot.destroy();
    c.labels = labels;
    const opts = {
      width, height: height || 190,
      series: [{}, ...seriesDefs.map((s, i) => ({ label: s.label, stroke: s.color || COLORS[i % COLORS.length], width: 1.6,
        value: (u, v) => v === null || v === undefined ? "–" : fmt(v), dash: s.dash }))],
      axes: [{ stroke: "#4a5360", grid: { stroke: "#eceff3" } },
             { stroke: "#4a5360", grid: { stroke: "#eceff3" }, size: 56 }],
      scales: { x: { time: true } },
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
    };
    c.plot = new uPlot(opts, [[], ...seriesDefs.map(() => [])], c.plotDiv);
  } else if (Math.abs(c.plot.width - width) > 20) {
    c.plot.setSize({ width, height: height || 190 });
  }
  return c.plot;
}
function setChart(containerId, key, title, seriesDefs, xs, ys, height) {
  const plot = chart(containerId, key, title, seriesDefs, height);
  plot.setData([xs, ...ys]);
}

// ---- Live --------------------------------------------------------------------------------------

const live = { samples: [], now: null, last: 0, info: null, timer: null, windowS: 900 };

async function pollLive() {
  try {
    const d = await api("GET", "/ui/api/live?since=" + live.last);
    live.windowS = d.window_s || 900;
    if (d.now) live.now = d.now;
    for (const s of d.samples) live.samples.push(s);
    if (d.samples.length) live.last = d.samples[d.samples.length - 1].t;
    const cutoff = live.last - live.windowS * 1000;
    while (live.samples.length && live.samples[0].t <= cutoff) live.samples.shift();
    setStatus("updated " + new Date().toLocaleTimeString());
    if (current === "live") renderLive();
    if (current === "upstreams") renderUpstreams();
  } catch (e) {
    setStatus("live data unavailable: " + e.message);
  }
}

function lastSample() { return live.samples.length ? live.samples[live.samples.length - 1] : null; }
function sum(a) { return (a || []).reduce((x, y) => x + (y || 0), 0); }
// Mean of a field over the last n samples (rates are per interval, so this smooths the tiles).
function recent(fn, n) {
  const xs = live.samples.slice(-(n || 3));
  if (!xs.length) return 0;
  return xs.reduce((a, s) => a + fn(s), 0) / xs.length;
}

function tile(label, value, sub, id) {
  return el("div", { class: "tile", id }, el("div", { class: "label" }, label), el("div", { class: "value" }, value), sub ? el("div", { class: "sub" }, sub) : null);
}

function curlExample() {
  const info = live.info || {};
  const model = (info.models && info.models[0]) || "gpt-4.1";
  const listen = (info.listen || "127.0.0.1:8080").replace("0.0.0.0", "127.0.0.1");
  return `curl -s http://${listen}/v1/chat/completions \\\n  -H "Authorization: Bearer $BELLWETHER_DEMO_KEY" -H 'Content-Type: application/json' \\\n  -d '{"model":"${model}","messages":[{"role":"user","content":"Hello"}]}'`;
}

function renderLive() {
  const s = lastSample();
  const anyTraffic = live.samples.some(x => sum(x.rps) > 0 || x.inf > 0 || sum(x.q) > 0);
  const empty = $("live-empty");
  if (!anyTraffic) {
    empty.hidden = false;
    empty.replaceChildren(
      el("strong", {}, "No traffic yet: try this curl"), " (with one of your API keys; the figures below move with the first request):",
      el("pre", {}, curlExample()),
      el("span", { class: "muted" }, "For a spike: bellwether bench --help (open-loop load at a fixed rate)."));
  } else {
    empty.hidden = true;
  }
  if (!s) return;
  const n = live.now || {};
  const rps = recent(x => sum(x.rps));
  const st = recent(x => x.st["5xx"] || 0);
  const okr = recent(x => x.st["2xx"] || 0);
  const qr = Object.entries(s.qr || {}).filter(([, v]) => v > 0);
  fill("live-tiles",
    tile("Requests/s", fmt(rps), PRIOS.map((p, i) => `${p.toUpperCase()} ${fmt(recent(x => x.rps[i]))}`).join(" · "), "tile-rps"),
    tile("By status /s", fmt(okr) + " ok", `4xx ${fmt(recent(x => x.st["4xx"] || 0))} · 5xx ${fmt(st)}`, "tile-status"),
    tile("Queue depth", fmt(sum(s.q), 0), s.q.map((v, i) => `${PRIOS[i].toUpperCase()} ${v}`).join(" · ") + (qr.length ? " | " + qr.map(([k, v]) => `${k} ${v}`).join(" · ") : ""), "tile-queue"),
    tile("In flight", fmt(s.inf, 0), `concurrency limit ${fmt(s.lim, 0)}`, "tile-inflight"),
    tile("Tokens/s", fmt(recent(x => x.tok)), `spend ${usd(recent(x => x.usd) * 3600)}/h`, "tile-tokens"),
    tile("Shed or timed out /s", fmt(recent(x => x.shed)), "refused by admission", "tile-shed"),
    tile("Replicas recommended", fmt(s.rec, 0), n.scaler ? `now ${n.scaler.current} · ${n.scaler.reason}` : "", "tile-replicas"));

  // Quantiles by priority.
  const rows = PRIOS.map((p, i) => [PRIO_NAMES[i], ms(s.l50[i]), ms(s.l95[i]), ms(s.l99[i]), ms(s.f50[i]), ms(s.f95[i]), ms(s.f99[i])]);
  fill("lat-table", el("thead", {}, el("tr", {}, ["priority", "p50", "p95", "p99", "TTFT p50", "TTFT p95", "TTFT p99"].map((h, i) => el("th", { scope: "col", class: i ? "n" : null }, h)))),
    el("tbody", {}, rows.map(r => el("tr", {}, r.map((c, i) => el(i ? "td" : "th", { class: i ? "n" : null, scope: i ? null : "row" }, c))))));

  const qrAll = s.qr || {};
  fill("queue-reasons", table(["waiting for", "now", "what it is"], WAIT_REASONS.map(([r, what]) => [
    el("code", {}, r), el("span", { class: "n", "data-reason": r }, fmt(qrAll[r] || 0, 0)), el("span", { class: "muted" }, what)]), { numeric: [1] }),
    el("p", { class: "muted" }, sum(s.q) > 0 ? `${fmt(sum(s.q), 0)} waiting in all.` : "Nothing waits now."));

  if (n.scaler) {
    const sc = n.scaler;
    fill("scaler", table(["", ""], [
      ["Recommended replicas", el("strong", {}, String(sc.recommended))],
      ["Running now", String(sc.current)],
      ["Arrivals now (per minute)", fmt(sc.arrival_rpm)],
      ["Forecast, Holt (per minute)", fmt(sc.forecast_rpm_holt)],
      ["Forecast, WMA (per minute)", fmt(sc.forecast_rpm_wma)],
      ["Capacity of one replica (per minute)", fmt(sc.capacity_rpm_per_replica)],
      ["Method · reason", `${sc.method} · ${sc.reason}`],
      ["Requests wait for", sc.waiting_on && sc.waiting_on !== "none" ? sc.waiting_on : "nothing"]]));
  }
  const deps = n.deployments || [];
  fill("capacity", deps.length ? table(["deployment", "group", "breaker", "in flight", "RPM set", "RPM learned", "requests left this minute", "tokens", "binding now"],
    deps.map(d => [d.id, d.group, el("span", { class: "badge " + d.state }, d.state), fmt(d.in_flight, 0),
      rpmSet(d), rpmLearned(d), remainingCell(d), tpmCell(d), bindingCell(d)]), { numeric: [3, 4, 5] })
    : el("p", { class: "muted" }, "No deployments configured."));
  sizeBars($("capacity"));

  const xs = live.samples.map(x => x.t / 1000);
  const col = f => live.samples.map(f);
  const P = PRIOS.map((p, i) => ({ label: PRIO_NAMES[i], color: COLORS[i] }));
  setChart("live-charts", "rps", "Requests/s by priority", P, xs, PRIOS.map((p, i) => col(x => x.rps[i])));
  setChart("live-charts", "status", "Requests/s by status", [{ label: "2xx", color: "#146c2e" }, { label: "4xx", color: "#8a5300" }, { label: "5xx", color: "#b3261e" }],
    xs, ["2xx", "4xx", "5xx"].map(k => col(x => x.st[k] || 0)));
  const reasons = [...new Set(live.samples.flatMap(x => Object.keys(x.qr || {})))];
  setChart("live-charts", "queue", "Queue depth by priority", P, xs, PRIOS.map((p, i) => col(x => x.q[i])));
  if (reasons.length) {
    setChart("live-charts", "reasons", "Queue depth by wait reason", reasons.map((r, i) => ({ label: r, color: COLORS[(i + 3) % COLORS.length] })), xs, reasons.map(r => col(x => (x.qr || {})[r] || 0)));
  }
  setChart("live-charts", "inflight", "In flight and concurrency limit", [{ label: "in flight", color: "#0b57d0" }, { label: "limit", color: "#5f6b7a", dash: [6, 4] }], xs, [col(x => x.inf), col(x => x.lim)]);
  setChart("live-charts", "p95", "Latency p95 by priority (s)", P, xs, PRIOS.map((p, i) => col(x => x.l95[i])));
  setChart("live-charts", "p99", "Latency p99 by priority (s)", P, xs, PRIOS.map((p, i) => col(x => x.l99[i])));
  setChart("live-charts", "ttft", "Time to first token p95 by priority (s)", P, xs, PRIOS.map((p, i) => col(x => x.f95[i])));
  setChart("live-charts", "tokens", "Tokens/s", [{ label: "tokens/s", color: "#6a1b9a" }], xs, [col(x => x.tok)]);
  const capIds = [...new Set(live.samples.flatMap(x => Object.keys(x.cap || {})))];
  if (capIds.length) {
    setChart("live-charts", "cap", "Remaining capacity per deployment (requests/min)", capIds.map((id, i) => ({ label: id, color: COLORS[i % COLORS.length] })), xs, capIds.map(id => col(x => (x.cap || {})[id] ?? null)));
  }
  setChart("live-charts", "scaler", "Scaler: arrivals, forecast (per minute) and replicas", [{ label: "arrivals/min", color: "#0b57d0" }, { label: "forecast/min", color: "#8a5300", dash: [6, 4] }, { label: "replicas", color: "#146c2e" }],
    xs, [col(x => x.arr), col(x => x.fc), col(x => x.rec)]);
}

// ---- Spend -------------------------------------------------------------------------------------

async function renderSpend() {
  let budgets = [];
  try { budgets = (await api("GET", "/admin/budgets")).data; } catch (e) { fill("budgets", el("p", { class: "error" }, e.message)); }
  if (budgets.length) {
    const b = table(["budget", "period", "spent", "reserved", "cap", "utilisation", "resets"],
      budgets.map(x => [x.id, x.period, usd(x.spent_usd), usd(x.reserved_usd), usd(x.cap_usd),
        el("div", {}, bar(x.utilization, "utilisation of " + x.id), fmt(x.utilization * 100, 1) + " %"), when(x.reset_unix_ms)]), { numeric: [2, 3, 4] });
    fill("budgets", b);
    sizeBars($("budgets"));
  } else if (!$("budgets").querySelector(".error")) {
    fill("budgets", el("div", { class: "empty" }, "No budgets yet. Give a key a cap on the Keys page (budget cap and period), or set cost_guard budgets in the config; each budget then shows here against its cap."));
  }
  const s = lastSample();
  const c = (s && s.c) || {};
  const named = pre => Object.entries(c).filter(([k]) => k.startsWith(pre));
  const total = pre => named(pre).reduce((a, [, v]) => a + v, 0);
  const cacheSaved = Object.entries(c).filter(([k]) => k.includes("cache") && (k.includes("saved") || k.includes("saving")));
  const cacheHits = c.bellwether_cache_hits_total || 0, cacheMisses = c.bellwether_cache_misses_total || 0;
  const rows = [
    ["Downgrades to a cheaper model (since start)", fmt(total("bellwether_budget_downgrades"), 0)],
    ["Refusals: budget would be exceeded (since start)", fmt(total("bellwether_budget_refusals"), 0)],
    ["Cache hits / misses", cacheHits + cacheMisses > 0 ? `${fmt(cacheHits, 0)} / ${fmt(cacheMisses, 0)}` : "no cache traffic"],
  ];
  if (cacheSaved.length) rows.push(["Cost the cache saved", usd(cacheSaved.reduce((a, [, v]) => a + v, 0))]);
  else rows.push(["Cost the cache saved", el("span", { class: "muted" }, "shown once a response cache is configured")]);
  fill("spend-events", table(["", ""], rows, { numeric: [1] }));

  const caps = {};
  for (const x of budgets) caps[x.id] = x;
  for (const group of ["key", "tenant", "model", "day"]) {
    try {
      const d = await api("GET", "/admin/spend?group=" + group);
      if (!d.data.length) {
        fill("spend-" + group, el("p", { class: "muted" }, "No spend recorded yet: it appears after the first priced request."));
        continue;
      }
      const capFor = g => Object.values(caps).find(b => b.id.startsWith(group + ":" + g + "/"));
      const hdr = [group, "requests", "spend", "tokens in / out"];
      if (group === "key" || group === "tenant") hdr.push("against cap");
      fill("spend-" + group, table(hdr, d.data.map(r => {
        const row = [r.group || "(none)", fmt(r.requests, 0), usd(r.spend_usd), `${fmt(r.prompt_tokens, 0)} / ${fmt(r.completion_tokens, 0)}`];
        if (group === "key" || group === "tenant") {
          const b = capFor(r.group);
          row.push(b ? el("div", {}, bar(b.utilization, "utilisation of " + b.id), `${usd(b.spent_usd)} of ${usd(b.cap_usd)} ${b.period}`) : el("span", { class: "muted" }, "no cap"));
        }
        return row;
      }), { numeric: [1, 2] }));
      sizeBars($("spend-" + group));
    } catch (e) {
      fill("spend-" + group, el("p", { class: "muted" }, e.code === "no_ledger" ? "Spend by " + group + " needs a ledger (ledger.path in the config)." : e.message));
    }
  }
}

// ---- Keys --------------------------------------------------------------------------------------

function keySpecFromForm(form, creating) {
  const f = new FormData(form);
  const spec = {};
  if (creating) spec.name = f.get("name").trim();
  for (const k of ["tenant", "plan"]) { const v = (f.get(k) || "").trim(); if (v || !creating) { if (v) spec[k] = v; } }
  for (const k of ["default_priority", "max_priority"]) { const v = f.get(k); if (v !== "" && v !== null) spec[k] = Number(v); }
  const cap = (f.get("cap_usd") || "").trim();
  if (cap !== "") spec.budget = { cap_usd: Number(cap), period: f.get("period") };
  const rpm = (f.get("rpm") || "").trim();
  if (rpm !== "") spec.limits = [{ name: "rpm", rate: Number(rpm), period: "minute", unit: "requests" }];
  return spec;
}

function showSecret(what, secret) {
  const box = $("secret-box");
  const hide = el("button", { type: "button", onclick: () => { box.replaceChildren(); box.hidden = true; } }, "I have copied it: hide");
  box.replaceChildren(el("p", {}, el("strong", {}, what), " Copy the secret now: it is shown only this once and is not stored in clear anywhere."),
    el("p", {}, el("code", { id: "new-secret" }, secret)), hide);
  box.hidden = false;
  hide.focus();
}

async function renderKeys() {
  let keys;
  try { keys = (await api("GET", "/admin/keys")).data; } catch (e) {
    fill("keys-list", el("p", { class: "muted" }, e.code === "no_key_store" ? "Keys created here need a ledger (ledger.path in the config); config keys are listed once one exists." : e.message));
    return;
  }
  if (!keys.length) { fill("keys-list", el("div", { class: "empty" }, "No keys yet: create one above, then call the gateway with it.")); return; }
  fill("keys-list", table(["name", "id", "tenant", "plan", "priority", "budget", "status", ""], keys.map(k => {
    const budget = (k.budgets || []).map(b => `${usd(b.cap_usd)} ${b.period}`).join(", ") || "–";
    const prio = k.default_priority !== undefined ? `${k.default_priority} (max ${k.max_priority})` : "–";
    const status = k.revoked ? el("span", { class: "badge revoked" }, "revoked") : el("span", { class: "badge active" }, "active");
    let actions = el("span", { class: "muted" }, k.source === "config" ? "from the config file" : "");
    if (k.source === "store" && !k.revoked) {
      actions = el("div", { class: "row-actions" },
        el("button", { type: "button", class: "small quiet", onclick: () => editKey(k), "aria-label": "Update " + k.name }, "Update"),
        el("button", { type: "button", class: "small quiet", onclick: () => rotateKey(k), "aria-label": "Rotate " + k.name }, "Rotate"),
        el("button", { type: "button", class: "small danger", onclick: () => revokeKey(k), "aria-label": "Revoke " + k.name }, "Revoke"));
    }
    return [k.name, el("code", {}, k.id + (k.prefix ? " (" + k.prefix + "…)" : "")), k.tenant || "–", k.plan || "–", prio, budget, status, actions];
  })));
}

function editKey(k) {
  const d = $("key-edit");
  const f = $("key-edit-form");
  f.elements.id.value = k.id;
  f.elements.tenant.value = k.tenant || "";
  f.elements.plan.value = k.plan || "";
  f.elements.default_priority.value = String(k.default_priority ?? 1);
  f.elements.max_priority.value = String(k.max_priority ?? 0);
  const b = (k.budgets || [])[0];
  f.elements.cap_usd.value = b ? b.cap_usd : "";
  f.elements.period.value = b ? b.period : "daily";
  f.elements.rpm.value = "";
  $("ke-error").textContent = "";
  $("ke-title").textContent = "Update key " + k.name;
  d.showModal();
}

async function rotateKey(k) {
  if (!confirm(`Rotate ${k.name}? The old secret stops working at once.`)) return;
  try { const r = await api("POST", `/admin/keys/${encodeURIComponent(k.id)}/rotate`); showSecret(`New secret for ${k.name}.`, r.secret); renderKeys(); }
  catch (e) { alert(e.message); }
}
async function revokeKey(k) {
  if (!confirm(`Revoke ${k.name}? Requests with it are refused from now on.`)) return;
  try { await api("POST", `/admin/keys/${encodeURIComponent(k.id)}/revoke`); setStatus(`revoked ${k.name}`); renderKeys(); }
  catch (e) { alert(e.message); }
}

function setupKeys() {
  $("key-create").addEventListener("submit", async ev => {
    ev.preventDefault();
    $("kc-error").textContent = "";
    try {
      const r = await api("POST", "/admin/keys", keySpecFromForm(ev.target, true));
      ev.target.reset();
      showSecret(`Created ${r.name} (${r.id}).`, r.secret);
      renderKeys();
    } catch (e) { $("kc-error").textContent = e.message; }
  });
  $("key-edit-form").addEventListener("submit", async ev => {
    ev.preventDefault();
    const f = ev.target;
    $("ke-error").textContent = "";
    const spec = keySpecFromForm(f, false);
    if (!("budget" in spec)) spec.budget = null;
    try {
      await api("PATCH", "/admin/keys/" + encodeURIComponent(f.elements.id.value), spec);
      $("key-edit").close();
      renderKeys();
    } catch (e) { $("ke-error").textContent = e.message; }
  });
  $("ke-cancel").addEventListener("click", () => $("key-edit").close());
}

// ---- Upstreams ---------------------------------------------------------------------------------

function renderUpstreams() {
  const n = live.now || {};
  const s = lastSample() || {};
  const deps = n.deployments || [];
  const errWindow = id => recent(x => (x.err || {})[id] || 0, 10);
  fill("deployments", deps.length ? table(["deployment", "provider / model", "breaker", "failures in a row", "openings", "open for", "in flight", "latency (EWMA)", "error rate (10 s)", "RPM set", "RPM learned", "requests left this minute", "429 cool-down"],
    deps.map(d => [d.id, `${d.provider} / ${d.model}`, el("span", { class: "badge " + d.state, "data-deployment": d.id }, d.state), fmt(d.consecutive_failures, 0), fmt(d.openings, 0),
      d.open_remaining_s > 0 ? fmt(d.open_remaining_s, 1) + " s" : "–", fmt(d.in_flight, 0), fmt(d.ewma_ms, 0) + " ms",
      fmt(errWindow(d.id) * 100, 1) + " %", rpmSet(d), rpmLearned(d), remainingCell(d),
      d.cooldown_remaining_s > 0 ? fmt(d.cooldown_remaining_s, 1) + " s" : "–"]), { numeric: [3, 4, 6, 7, 8, 9, 10] })
    : el("p", { class: "muted" }, "No deployments configured."));
  sizeBars($("deployments"));
  const tr = (n.transitions || []).slice().reverse();
  fill("transitions", tr.length ? table(["time", "deployment", "from", "to"], tr.slice(0, 50).map(t => [new Date(t.t).toLocaleTimeString(), t.deployment,
    el("span", { class: "badge " + t.from }, t.from), el("span", { class: "badge " + t.to }, t.to)]))
    : el("p", { class: "muted" }, "No breaker has changed state in the last 15 minutes. A breaker opens after repeated upstream failures and shows here with its time."));
  const rb = n.retry_budgets || [];
  fill("retry-budgets", rb.length ? table(["model group", "requests (window)", "retries", "used of allowance"], rb.map(b => {
    const allowed = Math.max(1, b.requests * b.ratio);
    return [b.group, fmt(b.requests, 0), fmt(b.retries, 0), el("div", {}, bar(b.retries / allowed, "retry budget of " + b.group), fmt(100 * b.retries / allowed, 0) + " %")];
  }), { numeric: [1, 2] }) : el("p", { class: "muted" }, "No model groups."));
  sizeBars($("retry-budgets"));
  if (deps.length && live.samples.length) {
    const xs = live.samples.map(x => x.t / 1000);
    setChart("upstream-charts", "errors", "Upstream error rate by deployment (share of attempts)", deps.map((d, i) => ({ label: d.id, color: COLORS[i % COLORS.length] })), xs, deps.map(d => live.samples.map(x => (x.err || {})[d.id] ?? 0)));
  }
}

// ---- Dead letters ------------------------------------------------------------------------------

async function renderDlq() {
  let d;
  try { d = await api("GET", "/admin/dead-letters?limit=200"); } catch (e) {
    fill("dlq-list", el("div", { class: "empty" }, e.code === "dlq_disabled" ? "The dead-letter queue is off. Turn it on with dead_letter: {path: dlq.db} in the config; failed batch (priority 2) requests are then kept here for replay." : e.message));
    return;
  }
  if (!d.data.length) {
    fill("dlq-list", el("div", { class: "empty" }, "No dead letters. A batch request (X-Priority: batch) that fails after every retry and fallback lands here."));
    return;
  }
  fill("dlq-list", el("p", { class: "muted" }, `${d.size} entries · ${d.added_total} added since start · ${d.dropped_total} dropped to stay within bounds`),
    table(["id", "time", "key", "model", "endpoint", "error", "attempts", "replayed", ""], d.data.map(x => [String(x.id), when(x.created_unix_ms), x.key_id, x.model, x.endpoint, x.error, fmt(x.attempts, 0),
      x.replayed_unix_ms ? when(x.replayed_unix_ms) : "no",
      el("div", { class: "row-actions" },
        el("button", { type: "button", class: "small quiet", onclick: () => inspectDlq(x.id), "aria-label": "Inspect entry " + x.id }, "Inspect"),
        el("button", { type: "button", class: "small", onclick: () => replayDlq(x.id), "aria-label": "Replay entry " + x.id }, "Replay"),
        el("button", { type: "button", class: "small danger", onclick: () => deleteDlq(x.id), "aria-label": "Delete entry " + x.id }, "Delete"))]), { numeric: [0, 6] }));
}
async function inspectDlq(id) {
  try {
    const x = await api("GET", "/admin/dead-letters/" + id);
    let body = x.body;
    try { body = redact(JSON.parse(x.body)); } catch (e) { body = redact(String(x.body)); }
    const shown = Object.assign({}, x, { body });
    $("dlq-detail").hidden = false;
    $("dlq-detail-title").textContent = "Entry " + id + " (secrets redacted)";
    $("dlq-body").textContent = JSON.stringify(shown, null, 2);
    $("dlq-detail").scrollIntoView();
  } catch (e) { $("dlq-result").textContent = e.message; }
}
async function replayDlq(id) {
  $("dlq-result").textContent = "replaying " + id + "…";
  try {
    const r = await fetch(`/admin/dead-letters/${id}/replay`, { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": CSRF } });
    await r.text();
    $("dlq-result").textContent = r.ok ? `Entry ${id} replayed: HTTP ${r.status}.` : `Entry ${id} replay failed: HTTP ${r.status}.`;
  } catch (e) { $("dlq-result").textContent = e.message; }
  renderDlq();
}
async function deleteDlq(id) {
  if (!confirm("Delete dead letter " + id + "?")) return;
  try { await api("DELETE", "/admin/dead-letters/" + id); $("dlq-result").textContent = "Entry " + id + " deleted."; } catch (e) { $("dlq-result").textContent = e.message; }
  $("dlq-detail").hidden = true;
  renderDlq();
}

// ---- Config ------------------------------------------------------------------------------------

async function renderConfig() {
  const c = await api("GET", "/ui/api/config");
  const lr = c.last_reload;
  fill("reload", lr ? el("p", {}, el("span", { class: "badge " + (lr.ok ? "ok" : "bad") }, lr.ok ? "reloaded" : "failed"), " ", when(lr.unix_ms), ": ", lr.message)
    : el("p", { class: "muted" }, `No reload since the start at ${when(c.started_unix_ms)}. Send SIGHUP to reload ${c.source}; the result shows here.`));
  $("config-yaml").textContent = `# ${c.source}\n` + c.yaml;
}

// ---- navigation --------------------------------------------------------------------------------

let current = null;
const renderers = { live: renderLive, spend: renderSpend, keys: renderKeys, upstreams: renderUpstreams, "dead-letters": renderDlq, config: renderConfig };

function show(page) {
  if (!renderers[page]) page = "live";
  current = page;
  document.querySelectorAll(".page").forEach(p => { p.hidden = p.id !== "page-" + page; });
  document.querySelectorAll("nav a").forEach(a => {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  });
  document.title = "Bellwether console: " + document.querySelector(`nav a[data-page="${page}"]`).textContent;
  Promise.resolve(renderers[page]()).catch(e => setStatus(e.message));
}

window.addEventListener("hashchange", () => { show(location.hash.slice(1)); $("main").focus(); });
window.addEventListener("resize", () => { if (current === "live") renderLive(); });
$("logout").addEventListener("click", async () => {
  try { await api("POST", "/ui/logout"); } catch (e) { /* logged out either way */ }
  location.href = "/ui/login";
});

setupKeys();
api("GET", "/ui/api/info").then(i => { live.info = i; }).catch(() => {});
show(location.hash.slice(1) || "live");
pollLive();
live.timer = setInterval(pollLive, POLL_MS);
// Pages other than Live refresh now and then while open (Live follows every poll).
setInterval(() => { if (current === "spend") renderSpend(); if (current === "dead-letters") renderDlq(); }, 10000);
