// tokenctl dashboard: a small single-page app over /ui/api. No dependencies; every value from the
// server is inserted as text (never as HTML). State lives in the URL hash: #/page?start=…&end=…&team=…
"use strict";

const FILTERS = ["team", "user", "project", "model", "tool", "key", "provider"];
const DRILL_NEXT = { team: "user", user: "model", project: "user", model: "user", tool: "user", key: "model",
                     provider: "model" };
let me = null;

// ---------------------------------------------------------------------------------------------- DOM

function h(tag, attrs, ...children) {
  const el = document.createElementNS(
    ["svg", "rect", "line", "polyline", "path", "text", "g", "title", "circle"].includes(tag)
      ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }

// ------------------------------------------------------------------------------------------ formats

function usd(value) {
  const n = Number(value || 0);
  const digits = n !== 0 && Math.abs(n) < 1 ? 4 : 2;
  return new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", minimumFractionDigits: digits,
                                          maximumFractionDigits: digits }).format(n);
}
// A row's cost, flagged when some of its requests used a model without a price (counted at $0 or a stand-in).
function cost(row) {
  const unpriced = Number(row.unpriced_requests || 0);
  if (!unpriced) return money(row.cost_usd);
  return h("span", {}, money(row.cost_usd), " ",
           h("span", { class: "unpriced", title: `${unpriced} request(s) used models without a price: counted at ` +
                       "$0 or at the stand-in of enforcement.unpriced_models" }, `⚠ ${int(unpriced)} unpriced`));
}
function money(value, cls) { return h("span", { class: "usd " + (cls || ""), "data-usd": value }, usd(value)); }
// A big amount as a CFO reads it ($1.2k, $3.4M), the exact one on hover; below $10,000 the exact one.
function bigMoney(value) {
  const n = Number(value || 0);
  if (Math.abs(n) < 10_000) return money(value);
  return h("span", { class: "usd", "data-usd": value, title: usd(value) }, "$" + compact(n));
}
function compact(n) {
  return new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 }).format(n);
}

function int(n) { return new Intl.NumberFormat("en-US").format(Number(n || 0)); }
// A count in a table as a CFO reads it (48.2K, 2.7B tokens) from 10,000 up; the exact one on hover, and
// what the table sorts and exports by.
function count(n) {
  const v = Number(n || 0);
  if (Math.abs(v) < 10_000) return int(v);
  return h("span", { class: "count", "data-value": v, title: `${int(v)} exactly` }, compact(v));
}
// A duration in a table (ms, s or min, see duration()); the exact milliseconds on hover and for sorting.
function elapsed(ms) {
  const v = Math.round(Number(ms || 0));
  return h("span", { class: "duration", "data-value": v, title: `${int(v)} ms` }, duration(v));
}
function pct(share) { return (Number(share || 0) * 100).toFixed(1) + "%"; }
function none(v) { return v === "" || v === null || v === undefined ? "(none)" : v; }
function time(ts) { return ts ? ts.replace("T", " ").replace("Z", " UTC") : ""; }

// ---------------------------------------------------------------------------------------------- URL

function route() {
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  const parts = (path || "overview").split("/");
  return { page: parts[0] || "overview", arg: parts.slice(1).join("/"), params: new URLSearchParams(query || "") };
}

function link(page, params, extra) {
  const p = new URLSearchParams(params);
  for (const [k, v] of Object.entries(extra || {})) {
    if (v === null) p.delete(k); else p.set(k, v);
  }
  const q = p.toString();
  return "#/" + page + (q ? "?" + q : "");
}

function scopeParams(params) {
  const p = new URLSearchParams();
  for (const k of ["start", "end", ...FILTERS]) if (params.has(k)) p.set(k, params.get(k));
  return p;
}

// ---------------------------------------------------------------------------------------------- API

async function api(path, params, options) {
  const url = "/ui/api/" + path + (params && params.toString() ? "?" + params.toString() : "");
  const res = await fetch(url, { credentials: "same-origin", ...(options || {}) });
  if (res.status === 401) { location.href = "/ui/login"; throw new Error("signed out"); }
  const body = await res.json();
  if (!res.ok) throw new Error(body.error ? body.error.message : res.statusText);
  return body;
}

async function post(path, body) {
  return api(path, null, { method: "POST", headers: { "Content-Type": "application/json",
                                                       "X-CSRF-Token": me.csrf || "" },
                           body: JSON.stringify(body || {}) });
}

// -------------------------------------------------------------------------------------------- charts

function barChart(points, { height = 160, label = (p) => p.label, value = (p) => p.value, format = usd,
                            onclick = null, partial = () => false } = {}) {
  const top = 16;  // room for the scale label above the bars
  const width = Math.max(320, points.length * 22);
  const max = Math.max(...points.map(value), 0) || 1;
  const bw = width / Math.max(points.length, 1);
  const svg = h("svg", { viewBox: `0 0 ${width} ${top + height + 20}`, class: "chart", role: "img" });
  const middle = top + height / 2 + 0.5;
  svg.append(h("line", { x1: 0, x2: width, y1: top + 0.5, y2: top + 0.5, class: "gridline" }),
             h("text", { x: 2, y: 11, class: "axis" }, "max " + format(max)),
             h("line", { x1: 0, x2: width, y1: middle, y2: middle, class: "gridline" }),
             h("text", { x: 2, y: middle - 3, class: "axis" }, format(max / 2)));
  points.forEach((p, i) => {
    const v = value(p);
    const bh = (v / max) * height;
    const part = partial(p);
    const bar = h("rect", { x: i * bw + 2, y: top + height - bh, width: Math.max(bw - 4, 1), height: Math.max(bh, 0),
                            class: "bar" + (onclick ? " clickable" : "") + (part ? " partial" : "") },
                  h("title", {}, `${label(p)}: ${format(v)}${part ? " (today so far)" : ""}`));
    if (onclick) bar.addEventListener("click", () => onclick(p));
    svg.append(bar);
    if (points.length <= 31 && i % Math.ceil(points.length / 10) === 0) {
      svg.append(h("text", { x: i * bw + bw / 2, y: top + height + 14, class: "axis", "text-anchor": "middle" },
                   String(label(p)).slice(5)));
    }
  });
  return svg;
}

// Spend per day stacked by group (the top ones and "other"), with a legend, hover values and a scale.
function stackedChart(data) {
  const top = 16, height = 160, n = data.days.length;
  const width = Math.max(320, n * 22), bw = width / Math.max(n, 1);
  const totals = data.days.map((_, i) => data.series.reduce((a, s) => a + Number(s.usd[i]), 0));
  const max = Math.max(...totals, 0) || 1;
  const svg = h("svg", { viewBox: `0 0 ${width} ${top + height + 20}`, class: "chart stacked", role: "img" });
  svg.append(h("line", { x1: 0, x2: width, y1: top + 0.5, y2: top + 0.5, class: "gridline" }),
             h("text", { x: 2, y: 11, class: "axis" }, "max " + usd(max) + " a day"),
             h("line", { x1: 0, x2: width, y1: top + height / 2 + 0.5, y2: top + height / 2 + 0.5, class: "gridline" }),
             h("text", { x: 2, y: top + height / 2 - 3, class: "axis" }, usd(max / 2)));
  data.days.forEach((day, i) => {
    let y = top + height;
    data.series.forEach((s, k) => {
      const v = Number(s.usd[i]);
      if (!v) return;
      const bh = (v / max) * height;
      y -= bh;
      svg.append(h("rect", { x: i * bw + 2, y, width: Math.max(bw - 4, 1), height: bh,
                             class: `seg s${k}` + (day === me.today ? " partial" : "") },
                   h("title", {}, `${day} · ${none(s.group)}: ${usd(v)}` + (day === me.today ? " (today so far)" : ""))));
    });
    if (n <= 31 ? i % Math.ceil(n / 10) === 0 : i % Math.ceil(n / 8) === 0) {
      svg.append(h("text", { x: i * bw + bw / 2, y: top + height + 14, class: "axis", "text-anchor": "middle" },
                   day.slice(5)));
    }
  });
  const legend = h("div", { class: "legend" }, data.series.map((s, k) => {
    const sum = s.usd.reduce((a, v) => a + Number(v), 0);
    return h("span", { class: "key" }, h("span", { class: `swatch s${k}` }), `${none(s.group)} ${usd(sum)}`);
  }));
  return h("div", {}, svg, legend);
}

function change(ratio) {
  if (ratio === null || ratio === undefined) return "no spend before";
  const sign = ratio > 0 ? "+" : "";
  return h("span", { class: ratio > 0 ? "up" : "down" }, `${sign}${(ratio * 100).toFixed(1)}%`);
}

function lineChart(series, { height = 160, width = 480, maxY = null, guide = null } = {}) {
  // series: [{points: [[x 0..1, y]], cls}]
  const top = maxY || Math.max(1e-9, ...series.flatMap((s) => s.points.map((p) => p[1])), guide || 0);
  const svg = h("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
  if (guide !== null) {
    const y = height - (guide / top) * height;
    svg.append(h("line", { x1: 0, x2: width, y1: y, y2: y, class: "guide" }));
  }
  for (const s of series) {
    const pts = s.points.map(([x, y]) => `${(x * width).toFixed(1)},${(height - (y / top) * height).toFixed(1)}`);
    svg.append(h("polyline", { points: pts.join(" "), class: "line " + (s.cls || "") }));
  }
  return svg;
}

function shareBar(share, cls, label) {
  return h("span", { class: "sharebar " + (cls || "") },
           h("span", { class: "track" }, h("span", { class: "fill", "data-share": share })), label || pct(share));
}

function fillShareBars(root) {
  // CSP forbids inline style attributes set from HTML, but CSSOM changes are allowed.
  for (const el of root.querySelectorAll(".sharebar .fill")) {
    el.style.width = Math.min(100, Number(el.dataset.share) * 100) + "%";
  }
}

// ----------------------------------------------------------------------------------------- widgets

function card(title, value, note, attrs) {
  return h("div", { class: "card", ...(attrs || {}) }, h("div", { class: "card-title" }, title),
           h("div", { class: "card-value" }, value), note ? h("div", { class: "card-note muted" }, note) : null);
}

function table(columns, rows, { onclick = null, empty = "Nothing here for this period.", id = null } = {}) {
  if (!rows.length) return h("p", { class: "empty muted", id }, empty);
  const body = h("tbody", {}, rows.map((r) => {
    const tr = h("tr", { class: onclick ? "clickable" : "" },
                 columns.map((c) => h("td", { class: c.num ? "num" : "", "data-col": c.key || null },
                                      c.render ? c.render(r) : r[c.key])));
    if (onclick) tr.addEventListener("click", () => onclick(r));
    return tr;
  }));
  const heads = columns.map((c, i) => h("th", { class: c.num ? "num sortable" : "sortable", "aria-sort": "none",
                                               title: "sort by " + c.title,
                                               onclick: (e) => sortBy(body, heads, i, e.currentTarget) }, c.title));
  const grid = h("table", { class: "grid", id }, h("thead", {}, h("tr", {}, heads)), body);
  const csv = h("button", { type: "button", class: "link csv", title: "download this table as CSV",
                            onclick: () => downloadCsv(grid, id || "table") }, "CSV");
  return h("div", { class: "table-wrap" }, h("div", { class: "table-tools" }, csv), grid);
}

// The value a cell sorts and exports by: the exact amount for money, a number for numbers, else its text.
function cellValue(td) {
  const amount = td.querySelector(".usd[data-usd]");
  if (amount) return Number(amount.getAttribute("data-usd"));
  const exact = td.querySelector("[data-value]");
  if (exact) return Number(exact.getAttribute("data-value"));
  const text = td.textContent.trim();
  const number = text.replace(/[,%\s]|ms$/g, "");
  return number !== "" && !Number.isNaN(Number(number)) ? Number(number) : text.toLowerCase();
}

function sortBy(body, heads, index, th) {
  const ascending = th.getAttribute("aria-sort") !== "ascending";
  for (const other of heads) other.setAttribute("aria-sort", "none");
  th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const rows = [...body.rows].map((tr) => [cellValue(tr.cells[index]), tr]);
  rows.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0) * (ascending ? 1 : -1));
  for (const [, tr] of rows) body.append(tr);
}

function csvField(value) {
  const text = String(value);
  return /[",\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function downloadCsv(grid, name) {
  const lines = [[...grid.tHead.rows[0].cells].map((th) => th.textContent)];
  for (const tr of grid.tBodies[0].rows) {
    lines.push([...tr.cells].map((td) => {
      const amount = td.querySelector(".usd[data-usd]"), exact = td.querySelector("[data-value]");
      if (amount) return amount.getAttribute("data-usd");  // exact dollars, not rounded
      return exact ? exact.getAttribute("data-value") : td.textContent.trim();
    }));
  }
  const blob = new Blob([lines.map((l) => l.map(csvField).join(",")).join("\n") + "\n"], { type: "text/csv" });
  const a = h("a", { href: URL.createObjectURL(blob), download: `tokenctl-${name}.csv` });
  document.body.append(a);
  a.click();
  a.remove();
}

function section(title, ...children) { return h("section", { class: "panel" }, h("h2", {}, title), ...children); }

function errorBox(err) { return h("p", { class: "error", role: "alert" }, "Could not load: " + err.message); }

// ------------------------------------------------------------------------------------------- pages

async function pageOverview(params) {
  const stackBy = params.get("stack") || "model";
  const stackQuery = scopeParams(params);
  stackQuery.set("by", stackBy);
  const [o, b, st] = await Promise.all([api("overview", scopeParams(params)), api("budgets"),
                                         api("stacked", stackQuery)]);
  const trend = o.trend.map((p) => ({ label: p.day, value: Number(p.cost_usd), day: p.day }));
  const behind = o.ledger && o.ledger.behind
    ? [h("p", { class: "error", role: "alert", id: "ledger-behind" },
         `Ledger behind: ${o.ledger.behind}. ${int(o.ledger.pending_rows)} requests recorded by this gateway ` +
         "are not in these figures yet; they are kept in its journal and written when the database is back.")]
    : [];
  return [
    ...behind,
    h("div", { class: "cards" },
      card("Today", bigMoney(o.today_usd), `${int(o.today_requests)} requests`, { id: "kpi-today" }),
      card("This month", bigMoney(o.month_usd), o.month_unpriced_requests
        ? `${int(o.month_requests)} requests in ${o.month}; ⚠ ${int(o.month_unpriced_requests)} without a price`
        : `${int(o.month_requests)} requests in ${o.month}`, { id: "kpi-month" }),
      card("Month-end forecast", bigMoney(o.forecast_usd), `${usd(o.daily_rate_usd)}/day: ${o.rate_basis}`,
           { id: "kpi-forecast" }),
      card("Last month", bigMoney(o.last_month_usd), null, { id: "kpi-last-month" }),
      card("Cache read share", pct(o.cache_read_share), "of prompt tokens this month", { id: "kpi-cache" }),
      card("Saved this month", bigMoney(o.month_saved_usd), "prompt caching, policies and routing", { id: "kpi-saved" }),
      card(`Selected: ${o.range.start} to ${o.range.end}`, bigMoney(o.range.cost_usd),
           `${int(o.range.requests)} requests` +
             (o.range.unpriced_requests ? `; ⚠ ${int(o.range.unpriced_requests)} without a price` : ""),
           { id: "kpi-range" })),
    section(`Spend per day by ${stackBy}, ${o.range.start} to ${o.range.end}`,
      h("div", { class: "tabs", id: "stack-tabs" }, ["model", "team", "tool"].map((d) =>
        h("a", { href: link("overview", params, { stack: d }), class: d === stackBy ? "active" : "" }, d))),
      h("p", { class: "small", id: "stack-change" }, `${usd(st.total_usd)} against ${usd(st.previous_usd)} in the ` +
        `previous ${st.days.length} days (${st.previous_start} to ${st.previous_end}): `, change(st.change)),
      h("div", { id: "stacked-spend" }, stackedChart(st))),
    section(`Spend per day, last 30 days (USD, ${me.timezone}; today, lighter, is still under way)`,
      h("div", { id: "trend-30d" }, barChart(trend, { partial: (p) => p.day === me.today,
                        onclick: (p) => { location.hash = link("breakdown", new URLSearchParams(),
                                                               { by: "team", start: p.day, end: p.day }); } }))),
    h("div", { class: "two" },
      section("Top teams this month", topTable(o.top_teams, "team")),
      section("Top models this month", topTable(o.top_models, "model"))),
    section("Budgets closest to their limit", budgetTable(b.rows.slice(0, 5)),
            h("p", {}, h("a", { href: "#/budgets" }, "All budgets →"))),
  ];
}

function topTable(rows, dim) {
  return table([
    { title: dim, render: (r) => none(r.group) },
    { title: "requests", num: true, render: (r) => count(r.requests) },
    { title: "cost", num: true, key: "cost", render: (r) => cost(r) },
  ], rows, { onclick: (r) => { location.hash = link("breakdown", new URLSearchParams(),
                                                    { by: DRILL_NEXT[dim], [dim]: r.group }); } });
}

const BY = ["team", "user", "project", "model", "tool", "key", "provider", "day"];

async function pageBreakdown(params) {
  const by = params.get("by") || "team";
  const q = scopeParams(params); q.set("by", by); q.set("limit", "200");
  const data = await api("breakdown", q);
  const tabs = h("div", { class: "tabs" }, BY.map((d) => h("a", { href: link("breakdown", params, { by: d }),
                                                                   class: d === by ? "active" : "" }, d)));
  const total = Number(data.total.cost_usd) || 1;
  const rows = data.rows;
  const drill = (r) => {
    if (by === "day") location.hash = link("breakdown", params, { by: "team", start: r.group, end: r.group });
    else if (by === "user") location.hash = link("sessions", params, { user: r.group, by: null });
    else location.hash = link("breakdown", params, { [by]: r.group, by: DRILL_NEXT[by] });
  };
  const stackable = ["model", "team", "tool", "provider", "project"].includes(by);
  let stack = null;
  if (stackable) {
    const q2 = scopeParams(params); q2.set("by", by);
    stack = await api("stacked", q2);
  }
  return [
    tabs,
    stack ? section(`Spend per day by ${by}`, h("p", { class: "small", id: "breakdown-change" },
      `${usd(stack.total_usd)} against ${usd(stack.previous_usd)} in the previous ${stack.days.length} days: `,
      change(stack.change)), h("div", { id: "breakdown-stacked" }, stackedChart(stack))) : null,
    h("div", { class: "cards" },
      card("Spend", money(data.total.cost_usd), `${int(data.total.requests)} requests`, { id: "breakdown-total" }),
      card("Cache read share", pct(data.total.cache_read_share)),
      card("Errors", int(data.total.errors), `${int(data.total.blocked)} blocked by tokenctl`),
      card("Drill down", h("span", { class: "links" },
        h("a", { href: link("sessions", params, { by: null }) }, "sessions"), " · ",
        h("a", { href: link("requests", params, { by: null }) }, "requests")))),
    section(`Spend by ${by}` + (rows.length === 200 ? " (the 200 highest; the total covers all)" : ""), table([
      { title: by, key: "group", render: (r) => none(r.group) },
      { title: "share", render: (r) => shareBar(Number(r.cost_usd) / total) },
      { title: "cost", key: "cost", num: true, render: (r) => cost(r) },
      { title: "requests", num: true, render: (r) => count(r.requests) },
      { title: "errors", num: true, render: (r) => count(r.errors) },
      { title: "input", num: true, render: (r) => count(r.input_tokens) },
      { title: "cache read", num: true, render: (r) => count(r.cache_read_tokens) },
      { title: "cache write", num: true, render: (r) => count(r.cache_write_tokens) },
      { title: "output", num: true, render: (r) => count(r.output_tokens) },
      { title: "cache share", num: true, render: (r) => pct(r.cache_read_share) },
      { title: "saved", num: true, render: (r) => money(String(Number(r.cache_saved_usd) + Number(r.policy_saved_usd)
                                                                + Number(r.routing_saved_usd))) },
      { title: "avg latency", num: true, render: (r) => elapsed(r.avg_latency_ms) },
      by === "day" ? null : { title: `vs ${data.previous.start} to ${data.previous.end}`, num: true,
        render: (r) => { const before = Number(data.previous.cost_usd[r.group] || 0);
                         return before ? change((Number(r.cost_usd) - before) / before) : "new"; } },
    ].filter(Boolean), rows, { onclick: drill, id: "breakdown-table" })),
  ];
}

async function pageConcentration(params) {
  const c = await api("concentration", scopeParams(params));
  const curve = [[0, 0], ...c.curve.map((p) => [p.users_share, p.spend_share])];
  return [
    h("div", { class: "cards" },
      card("Top 20% of users", h("span", { id: "top-share" }, pct(c.top_share)),
           `${int(c.top_users)} of ${int(c.users)} users spent ${usd(c.top_usd)} of ${usd(c.total_usd)}`),
      card("Users with spend", int(c.users),
           c.unattributed_requests ? `not counted: keys without a user, ${usd(c.unattributed_usd)} in ` +
             `${int(c.unattributed_requests)} requests` : "every request had a user")),
    section("Share of spend by share of users (the 80/20 curve)",
      lorenzChart(curve),
      h("p", { class: "muted small" }, "Users sorted by spend, highest first. The diagonal is an even spread.")),
    section("Leaderboard", table([
      { title: "#", render: (r) => r.rank },
      { title: "user", render: (r) => none(r.user) },
      { title: "team", render: (r) => none(r.team) },
      { title: "requests", num: true, render: (r) => count(r.requests) },
      { title: "cost", num: true, key: "cost", render: (r) => cost(r) },
      { title: "share", render: (r) => shareBar(r.share) },
    ], c.leaderboard, { id: "leaderboard",
                        onclick: (r) => { location.hash = link("sessions", params, { user: r.user }); } })),
  ];
}

function lorenzChart(curve) {
  const svg = lineChart([{ points: curve, cls: "lorenz" }, { points: [[0, 0], [1, 1]], cls: "even" }],
                        { maxY: 1, width: 360, height: 240 });
  svg.append(h("text", { x: 4, y: 12, class: "axis" }, "100% of spend"),
             h("text", { x: 4, y: 236, class: "axis" }, "0%"),
             h("text", { x: 356, y: 236, class: "axis", "text-anchor": "end" }, "100% of users (highest spend first) →"),
             h("text", { x: 72, y: 20 + 0.2 * 220, class: "axis" }, "↑ share of spend"));
  for (const p of curve.filter((_, i) => i % Math.ceil(curve.length / 12) === 0)) {
    svg.append(h("circle", { cx: p[0] * 360, cy: 240 - p[1] * 240, r: 2.5, class: "dot" },
                 h("title", {}, `top ${pct(p[0])} of users: ${pct(p[1])} of spend`)));
  }
  return svg;
}

async function pageSavings(params) {
  const s = await api("savings", scopeParams(params));
  const cols = (dim) => [
    { title: dim, render: (r) => none(r.group) },
    { title: "spent", num: true, render: (r) => cost(r) },
    { title: "prompt cache saved", num: true, render: (r) => money(r.cache_saved_usd) },
    { title: "policies saved", num: true, render: (r) => money(r.policy_saved_usd) },
    { title: "routing saved", num: true, render: (r) => money(r.routing_saved_usd) },
    { title: "blocked", num: true, render: (r) => count(r.blocked) },
  ];
  return [
    h("div", { class: "cards" },
      card("Spent", bigMoney(s.cost_usd), `would have been ${usd(s.counterfactual_usd)}`, { id: "sav-spent" }),
      card("Saved by tokenctl", bigMoney(s.tokenctl_saved_usd), "model policies, routing and the response cache",
           { id: "sav-tokenctl" }),
      card("Saved by the provider's prompt cache", bigMoney(s.cache_saved_usd),
           `${pct(s.cache_read_share)} of prompt tokens read from cache: the provider's discount, not tokenctl's`,
           { id: "sav-cache" }),
      card("Saved in all", money(s.saved_usd), "both together", { id: "sav-total" }),
      card("Model policies", money(s.policy_saved_usd), "downgrades and default-model rewrites", { id: "sav-policy" }),
      card("Routing", money(s.routing_saved_usd), "easy work sent to cheaper models", { id: "sav-routing" }),
      card("Response cache", money(s.response_cache_saved_usd), `${int(s.response_cache_hits)} repeats answered from the cache`,
           { id: "sav-response-cache" }),
      card("Blocked", int(s.blocked_requests), "requests stopped by budgets, policies or rate limits")),
    h("p", { class: "muted small" }, "Savings compare each request's cost with the same usage without prompt caching " +
      "and on the model the client asked for. A negative caching figure means cache writes cost more than reads saved."),
    h("div", { class: "two" }, section("By team", table(cols("team"), s.by_team)),
                               section("By model that served", table(cols("model"), s.by_model))),
    section("What policies and routing saved, by the model the client asked for", table([
      { title: "model asked for", render: (r) => none(r.model_asked) },
      { title: "requests served on another", num: true, render: (r) => count(r.requests) },
      { title: "cost where served", num: true, render: (r) => money(r.served_cost_usd) },
      { title: "policies saved", num: true, render: (r) => money(r.policy_saved_usd) },
      { title: "routing saved", num: true, render: (r) => money(r.routing_saved_usd) },
      { title: "saved", num: true, key: "saved", render: (r) => money(r.saved_usd) },
    ], s.by_model_asked, { id: "savings-asked", empty: "No request was served on another model in this period." })),
  ];
}

async function pageSessions(params, arg) {
  if (arg) return sessionDetail(decodeURIComponent(arg), params);
  const data = await api("sessions", withFind(params));
  return [section("Most expensive sessions", searchBox("sessions", params, "session id (its start) or user"), table([
    { title: "session", render: (r) => h("code", {}, r.session_id) },
    { title: "user", render: (r) => none(r.user) },
    { title: "team", render: (r) => none(r.team) },
    { title: "tool", render: (r) => none(r.tool) },
    { title: "model", render: (r) => none(r.model) },
    { title: "requests", num: true, render: (r) => count(r.requests) },
    { title: "errors", num: true, render: (r) => count(r.errors) },
    { title: "cache share", num: true, render: (r) => pct(r.cache_read_share) },
    { title: "cost", num: true, key: "cost", render: (r) => cost(r) },
    { title: "last active", render: (r) => time(r.last_ts) },
  ], data.rows, { id: "sessions-table",
                  onclick: (r) => { location.hash = link("sessions/" + encodeURIComponent(r.session_id), params); } }),
    cutNote(data, "sessions"))];
}

function withFind(params) {
  const q = scopeParams(params);
  if (params.get("find")) q.set("find", params.get("find"));
  return q;
}

// A search box for a list page: what it finds is in the URL, so a search can be shared.
function searchBox(page, params, what) {
  return h("form", { class: "filters-bar search", role: "search", onsubmit: (e) => {
    e.preventDefault();
    location.hash = link(page, params, { find: e.currentTarget.find.value.trim() || null });
  } },
    h("input", { name: "find", type: "search", placeholder: "Find: " + what, "aria-label": "find " + what,
                 value: params.get("find") || "", size: "36" }),
    h("button", { type: "submit" }, "Find"),
    params.get("find") ? h("a", { href: link(page, params, { find: null }) }, "clear") : null);
}

// Says when a list shows only its first rows, instead of stopping silently.
function cutNote(data, noun) {
  return data.more ? h("p", { class: "muted small cut-note" },
                       `Showing the first ${int(data.limit)} ${noun} only: narrow the dates or filters to see the rest.`)
                   : null;
}

// Lines broken at failed turns (a failed turn carried no context: drawing it as 0 would look like a cache
// break), with a marker where each failed turn was.
function turnSegments(turns, value) {
  const n = Math.max(turns.length - 1, 1);
  const segments = [[]];
  turns.forEach((t, i) => {
    if (t.failed) { if (segments[segments.length - 1].length) segments.push([]); return; }
    segments[segments.length - 1].push([i / n, value(t)]);
  });
  return segments.filter((points) => points.length);
}

function sessionChart(turns) {
  const width = 720, height = 160;
  const svg = lineChart([...turnSegments(turns, (t) => t.prompt_tokens).map((points) => ({ points, cls: "context" })),
                         ...turnSegments(turns, (t) => t.cache_read_tokens).map((points) => ({ points, cls: "cached" }))],
                        { width, height });
  const n = Math.max(turns.length - 1, 1);
  turns.forEach((t, i) => {
    if (!t.failed) return;
    svg.append(h("circle", { cx: (i / n) * width, cy: height - 4, r: 4, class: "failed-turn" },
                 h("title", {}, `turn ${i + 1} failed: ${t.status} ${t.outcome}, ${usd(t.cost_usd)}`)));
  });
  const top = Math.max(1, ...turns.map((t) => t.prompt_tokens));
  svg.append(h("text", { x: 2, y: 11, class: "axis" }, `${compact(top)} tokens`),
             h("text", { x: 2, y: height - 2, class: "axis" }, "0"));
  return svg;
}

function humanSeconds(seconds) {
  if (seconds < 90) return `${seconds.toFixed(1)} s`;
  if (seconds < 5400) return `${(seconds / 60).toFixed(1)} min`;
  if (seconds < 172_800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86_400).toFixed(1)} days`;
}

async function sessionDetail(id, params) {
  const s = await api("sessions/" + encodeURIComponent(id), scopeParams(params));
  return [
    h("p", {}, h("a", { href: link("sessions", params) }, "← sessions")),
    h("h2", {}, "Session ", h("code", {}, s.session_id)),
    h("div", { class: "cards" },
      card("Cost", money(s.cost_usd), `${int(s.requests)} requests by ${none(s.user)} (${none(s.team)})`,
           { id: "session-cost" }),
      card("Cache hit ratio", pct(s.cache_read_share), "prompt tokens read from cache"),
      card("Context growth", `${compact(s.first_context_tokens)} → ${compact(s.last_context_tokens)}`,
           `largest ${int(s.max_context_tokens)} tokens`),
      card("Retries and failures", int(s.retries), `${usd(s.failed_cost_usd)} spent on failed attempts`),
      card("Models", h("span", { class: "small-value" }, s.models.join(", ") || "(none)")),
      card("Duration", humanSeconds(s.duration_s), `${time(s.started)} to ${time(s.ended)}`, { id: "session-duration" }),
      card("Project", h("span", { class: "small-value" }, s.projects.join(", ") || "(none)"))),
    section("Context per turn (prompt tokens; the lower line is what came from cache; red marks are failed turns)",
      sessionChart(s.turns)),
    section("Turns", requestTable(s.turns, params, true)),
  ];
}

function requestTable(rows, params, running) {
  return table([
    { title: "time", render: (r) => time(r.ts) },
    { title: "user", render: (r) => none(r.user) },
    { title: "model", render: (r) => none(r.model) + (r.requested_model && r.requested_model !== r.model
                                                       ? ` (asked ${r.requested_model})` : "") },
    { title: "status", render: (r) => h("span", { class: r.status >= 400 ? "bad" : "" }, `${r.status} ${r.outcome}`) },
    { title: "prompt", num: true, render: (r) => count(r.prompt_tokens) },
    { title: "cache read", num: true, render: (r) => pct(r.cache_read_share) },
    { title: "output", num: true, render: (r) => count(r.output_tokens) },
    { title: "cost", num: true, key: "cost", render: (r) => cost(r) },
    running ? { title: "running total", num: true, render: (r) => money(r.running_usd) } : null,
    { title: "latency", num: true, render: (r) => elapsed(r.duration_ms) },
    { title: "policy", render: (r) => r.policy || "" },
  ].filter(Boolean), rows, { id: "requests-table",
             onclick: (r) => { location.hash = link("requests/" + encodeURIComponent(r.request_id), params); } });
}

async function pageRequests(params, arg) {
  if (arg) return requestDetail(decodeURIComponent(arg), params);
  const data = await api("requests", withFind(params));
  return [section("Latest requests", searchBox("requests", params, "request id, session id or user"),
                  requestTable(data.rows, params), cutNote(data, "requests"))];
}

const DETAIL_FIELDS = [
  ["request_id", "Request id"], ["ts", "Started"], ["status", "HTTP status"], ["outcome", "Outcome"],
  ["error", "Error"], ["api", "API"], ["stream", "Streamed"], ["key_id", "Key"], ["user", "User"], ["team", "Team"],
  ["project", "Project"], ["tool", "Tool"], ["session_id", "Session"], ["provider", "Provider"],
  ["requested_model", "Model asked for"], ["model", "Model served"], ["input_tokens", "Uncached input tokens"],
  ["cache_read_tokens", "Cache read tokens"], ["cache_write_5m_tokens", "Cache write tokens (5 min)"],
  ["cache_write_1h_tokens", "Cache write tokens (1 h)"], ["output_tokens", "Output tokens"],
  ["reasoning_tokens", "of which reasoning"], ["cost_usd", "Cost"], ["cache_saved_usd", "Saved by caching"],
  ["model_saved_usd", "Saved by serving another model"], ["reserved_usd", "Reserved by budgets"],
  ["funding", "Paid from pool"], ["policy", "Policy decisions"], ["approval_id", "Approval"],
  ["duration_ms", "Duration"], ["ttft_ms", "Time to first token"], ["cost_is_estimate", "Cost estimated"],
];

// Durations in ms, s or min; yes/no for flags; exact dollars for money (the raw value stays in data-value).
function duration(ms) {
  const n = Number(ms);
  if (n < 1000) return `${Math.round(n)} ms`;
  if (n < 60000) return `${(n / 1000).toFixed(1)} s`;
  return `${Math.floor(n / 60000)} min ${Math.round((n % 60000) / 1000)} s`;
}

const FLAG_FIELDS = ["stream", "partial", "cost_is_estimate", "priced"];

function detailValue(k, value, moneyFields) {
  if (value === null || value === "") return "—";
  if (moneyFields.includes(k)) return money(value);
  if (k === "duration_ms" || k === "ttft_ms") return duration(value);
  if (FLAG_FIELDS.includes(k)) return Number(value) ? "yes" : "no";
  return String(value);
}

async function requestDetail(id, params) {
  const r = await api("requests/" + encodeURIComponent(id), scopeParams(params));
  const money_fields = ["cost_usd", "cache_saved_usd", "model_saved_usd", "reserved_usd"];
  return [
    h("p", {}, h("a", { href: r.session_id ? link("sessions/" + encodeURIComponent(r.session_id), params)
                                           : link("requests", params) }, "← back")),
    section("Request", h("dl", { class: "detail", id: "request-detail" }, DETAIL_FIELDS.flatMap(([k, label]) => [
      h("dt", {}, label),
      h("dd", { "data-field": k, "data-value": r[k] === null ? null : String(r[k]) }, detailValue(k, r[k], money_fields)),
    ]))),
    h("p", { class: "muted small" }, "Prompt and response text are not recorded by tokenctl."),
  ];
}

function budgetTable(rows) {
  return table([
    { title: "budget", render: (r) => r.budget },
    { title: "scope", render: (r) => r.scope === "org" ? "whole organisation" : `${r.scope} ${r.member}` },
    { title: "period", render: (r) => r.period },
    { title: "action", render: (r) => r.action },
    { title: "used", render: (r) => shareBar(r.used_percent / 100, r.used_percent >= 100 ? "over"
                                                                  : r.used_percent >= 80 ? "warn" : "",
                                             r.used_percent >= 100 ? "exhausted" : `${r.used_percent}%`) },
    { title: "spent", num: true, render: (r) => money(r.spent_usd) },
    { title: "reserved", num: true, render: (r) => money(r.reserved_usd) },
    { title: "limit", num: true, render: (r) => money(r.limit_usd) },
    { title: "burn-down", render: (r) => burnDown(r) },
    { title: "forecast", render: (r) => r.forecast ? h("span", { class: Number(r.forecast.over_usd) > 0 ? "bad" : "" },
                                                      r.forecast.text) : "" },
    { title: "runs out", render: (r) => r.used_percent >= 100 ? "exhausted"
      : r.projected_exhaustion ? r.projected_exhaustion.replace("T", " ").slice(0, 16)
      : (r.burn_down ? "not before reset" : "") },
    { title: "resets", render: (r) => r.period.startsWith("rolling")
      ? `rolling: spend drops out ${r.period.replace("rolling_", "")} after it was made`
      : r.resets_at ? r.resets_at.replace("T", " ").slice(0, 16) : "never" },
  ], rows, { empty: "No budgets are configured. Add them in the config file or with tokenctl budgets set.",
             id: "budgets-table" });
}

function burnDown(r) {
  if (!r.burn_down || !r.burn_down.length) return "";
  const n = Math.max(r.burn_down.length - 1, 1);
  const pts = r.burn_down.map((p, i) => [i / n, Number(p.cumulative_usd)]);
  return lineChart([{ points: pts, cls: "burn" }], { width: 120, height: 28, guide: Number(r.limit_usd) });
}

async function pageBudgets(params) {
  const b = await api("budgets");
  const scope = params.get("scope") || "";
  const find = (params.get("find") || "").toLowerCase();
  const rows = b.rows.filter((r) => (!scope || r.scope === scope)
    && (!find || `${r.budget} ${r.member}`.toLowerCase().includes(find)));
  const scopes = [...new Set(b.rows.map((r) => r.scope))].sort();
  const controls = h("form", { class: "filters-bar", id: "budget-filter", onsubmit: (e) => {
    e.preventDefault();
    const form = e.currentTarget;
    location.hash = link("budgets", params, { scope: form.scope.value || null, find: form.find.value.trim() || null });
  } },
    h("label", {}, "Scope ", h("select", { name: "scope" }, h("option", { value: "" }, "all"),
      scopes.map((x) => h("option", { value: x, selected: x === scope }, x)))),
    h("label", {}, "Budget or member ", h("input", { name: "find", type: "search", value: params.get("find") || "" })),
    h("button", { type: "submit" }, "Filter"),
    h("span", { class: "muted small" }, `${int(rows.length)} of ${int(b.rows.length)} budget rows`));
  return [section("Budgets", controls, budgetTable(rows),
    h("p", { class: "muted small" }, "Spent and reserved are live from the gateway. \"Runs out\" extends the " +
      "average spend per day since the period began; the burn-down line climbs towards the limit line."))];
}

async function pageApprovals(params) {
  const status = params.get("status") || "pending";
  const data = await api("approvals", new URLSearchParams(status === "all" ? {} : { status }));
  const tabs = h("div", { class: "tabs" }, ["pending", "approved", "denied", "used", "all"].map((s) =>
    h("a", { href: link("approvals", new URLSearchParams(), { status: s }), class: s === status ? "active" : "" }, s)));
  const decide = async (row, verdict, button) => {
    const box = button.closest(".decision");
    const note = box.querySelector("input.note").value.trim();
    const choice = box.querySelector("select.grant").value;
    const hours = choice === "request" ? 0 : Number(choice);
    const upTo = box.querySelector("input.up-to").value.trim();
    const body = { note: note || "from the dashboard" };
    if (verdict === "approve" && choice === "request") body.only_request = true;
    let what = `${verdict === "approve" ? "Approve" : "Deny"} ${row.approval_id} (${none(row.user)}, ${row.model}, ` +
               `estimated ${usd(row.estimated_usd)})`;
    if (verdict === "approve" && hours) {
      body.for_user_hours = hours;
      if (upTo) body.for_user_usd = upTo;
      what += ` and let ${none(row.user)}'s held requests through for ${hours} h` + (upTo ? ` up to $${upTo}` : "");
    }
    if (!window.confirm(what + "?")) return;
    button.disabled = true;
    try {
      await post(`approvals/${encodeURIComponent(row.approval_id)}/${verdict}`, body);
      render();
    } catch (err) {
      button.disabled = false;
      button.parentElement.append(h("span", { class: "error" }, " " + err.message));
    }
  };
  const decision = (r) => h("span", { class: "actions decision" },
    h("input", { class: "note", type: "text", placeholder: "note (audit log)", "aria-label": "note" }),
    h("select", { class: "grant", "aria-label": "grant" },
      h("option", { value: "0" }, r.session_id ? "this session, 12 h" : "this request"),
      r.session_id ? h("option", { value: "request" }, "only this request") : null,
      h("option", { value: "1" }, "+ user 1 h"),
      h("option", { value: "8" }, "+ user 8 h"), h("option", { value: "24" }, "+ user 24 h")),
    h("input", { class: "up-to", type: "text", inputmode: "decimal", placeholder: "up to $", "aria-label": "up to USD",
                 size: "6" }),
    h("button", { type: "button", class: "approve", onclick: (e) => decide(r, "approve", e.target) }, "Approve"),
    h("button", { type: "button", class: "deny", onclick: (e) => decide(r, "deny", e.target) }, "Deny"));
  return [tabs, section("Requests held for approval", table([
    { title: "id", render: (r) => h("code", {}, r.approval_id) },
    { title: "asked", render: (r) => new Date(r.created_at * 1000).toISOString().slice(0, 16).replace("T", " ") },
    { title: "who", render: (r) => `${none(r.user)} (${none(r.team)})` },
    { title: "model", render: (r) => r.model },
    { title: "estimate", num: true, render: (r) => money(r.estimated_usd) },
    { title: "input tokens", num: true, render: (r) => count(r.input_tokens) },
    { title: "rule", render: (r) => r.rule },
    { title: "reason", render: (r) => r.reason },
    { title: "status", render: (r) => h("span", { class: "status-" + r.status }, r.status) },
    { title: "", render: (r) => r.status === "pending" && data.can_decide ? decision(r)
      : (r.decided_by ? `by ${r.decided_by}` : "") },
  ], data.rows, { id: "approvals-table", empty: "No requests are waiting." }))];
}

async function pageAudit() {
  const data = await api("audit", new URLSearchParams({ limit: "300" }));
  return [section("Audit log", table([
    { title: "time", render: (r) => time(r.ts) },
    { title: "actor", render: (r) => r.actor },
    { title: "action", render: (r) => r.action },
    { title: "rule", render: (r) => r.rule || "" },
    { title: "subject", render: (r) => r.subject || "" },
    { title: "request", render: (r) => r.request_id ? h("a", { href: link("requests/" + r.request_id, new URLSearchParams()) },
                                                         r.request_id) : "" },
    { title: "detail", render: (r) => r.detail || "" },
  ], data.rows, { id: "audit-table", empty: "Nothing recorded yet." }))];
}

// Daily cache-read share, 0–100 %, with the first and last day and the scale written on it.
function shareChart(days) {
  const n = days.length;
  const svg = lineChart([{ points: days.map((d, i) => [n > 1 ? i / (n - 1) : 0.5, d.cache_read_share]) }],
                        { maxY: 1, height: 140, width: 480 });
  svg.append(h("text", { x: 2, y: 11, class: "axis" }, "100%"), h("text", { x: 2, y: 136, class: "axis" }, "0%"));
  if (n) {
    svg.append(h("text", { x: 40, y: 136, class: "axis" }, days[0].day),
               h("text", { x: 476, y: 136, class: "axis", "text-anchor": "end" }, days[n - 1].day));
  }
  for (const [i, d] of days.entries()) {
    svg.append(h("circle", { cx: (n > 1 ? i / (n - 1) : 0.5) * 480, cy: 140 - d.cache_read_share * 140, r: 3,
                             class: "dot" }, h("title", {}, `${d.day}: ${pct(d.cache_read_share)} of ` +
                                               `${int(d.prompt_tokens)} prompt tokens read from the cache`)));
  }
  return svg;
}

// One member per row (a team, user or key): its prompt tokens, cache read share and misses.
function cacheTable(first, rows, id) {
  return table([
    first,
    { title: "prompt tokens", num: true, render: (r) => count(r.prompt_tokens) },
    { title: "read from cache", num: true, render: (r) => shareBar(r.cache_read_share) },
    { title: "misses", num: true, render: (r) => count(r.misses) },
    { title: "lost", num: true, render: (r) => money(r.lost_usd) },
    { title: "top cause", render: (r) => r.top_cause },
  ], rows, { id });
}

async function pageHealth(params) {
  const data = await api("health", scopeParams(params));
  const whole = data.days.reduce((a, d) => [a[0] + d.prompt_tokens, a[1] + d.cache_read_share * d.prompt_tokens],
                                 [0, 0]);
  const missTurns = data.causes.reduce((a, c) => a + c.turns, 0);
  const lost = data.causes.reduce((a, c) => a + Number(c.lost_usd), 0);
  const open = data.loops.filter((l) => !l.resumed && l.action !== "alert");
  const resume = async (row, button) => {
    if (!window.confirm(`Resume ${row.subject} (rule ${row.rule})? It may go on until it repeats as often again.`)) {
      return;
    }
    button.disabled = true;
    try {
      await post(`loops/${encodeURIComponent(row.subject)}/resume`, {});
      render();
    } catch (err) {
      button.disabled = false;
      button.parentElement.append(h("span", { class: "error" }, " " + err.message));
    }
  };
  const withTeam = (team) => link("health", params, { team });
  return [
    h("div", { class: "cards" },
      card("Read from the prompt cache", whole[0] ? pct(whole[1] / whole[0]) : "–",
           h("span", { title: `${int(whole[0])} exactly` }, `of ${compact(whole[0])} prompt tokens`)),
      card("Cache misses", int(missTurns), "turns that wrote the cache instead of reading it", { id: "health-misses" }),
      card("Lost to misses", money(lost), "what the writes cost above reading"),
      card("Open loop detections", int(open.length), "paused or throttled, not resumed", { id: "health-loops" }),
      card("Spend anomalies", int(data.anomalies.length), "days far above the usual, last 7 days")),
    section("Prompt-cache read share per day", shareChart(data.days),
      h("p", { class: "muted small" }, "The share of prompt tokens read from the provider's cache. A drop is a " +
        "harness that stopped hitting its cache: the causes below say why.")),
    section("Misses by cause", table([
      { title: "cause", key: "cause" },
      { title: "turns", num: true, render: (r) => count(r.turns) },
      { title: "lost", num: true, render: (r) => money(r.lost_usd) },
      { title: "what to do", render: (r) => r.advice },
    ], data.causes, { id: "health-causes", empty: "No misses named (observability.cache_alarm_misses turns it on)." }),
      data.misses_cut ? h("p", { class: "muted small" }, "Counted from the first 200,000 misses only.") : null),
    section("Teams", cacheTable({ title: "team", render: (r) => h("a", { href: withTeam(r.team) }, none(r.team)) },
                                data.teams, "health-teams")),
    section("Users (top 50 by spend)", cacheTable({ title: "user", render: (r) => none(r.user) }, data.users,
                                                  "health-users")),
    section("Keys (top 50 by spend)", cacheTable({ title: "key", render: (r) => h("code", {}, none(r.key)) },
                                                 data.keys, "health-keys")),
    section("Loop detections", table([
      { title: "session or key", render: (r) => h("code", {}, r.subject) },
      { title: "rule", key: "rule" },
      { title: "action", key: "action" },
      { title: "count", num: true, render: (r) => r.repeats === null ? "" : int(r.repeats) },
      { title: "times", num: true, render: (r) => count(r.times) },
      { title: "last seen", render: (r) => time(r.last_seen) },
      { title: "evidence", key: "evidence" },
      { title: "", render: (r) => r.resumed ? "resumed"
        : r.action === "alert" ? "alerted"
        : data.can_resume ? h("span", { class: "actions" },
            h("button", { type: "button", class: "resume", onclick: (e) => resume(r, e.target) }, "Resume"))
        : "paused" },
    ], data.loops, { id: "health-loops-table", empty: "No loop was caught." })),
    section("Spend anomalies (the 7 days up to the range's end)", table([
      { title: "who", render: (r) => `${r.kind} ${r.member}` },
      { title: "day", key: "day" },
      { title: "spent", num: true, render: (r) => money(r.spend_usd) },
      { title: "usual", num: true, render: (r) => money(r.usual_usd) },
      { title: "× usual", num: true, render: (r) => r.times_usual === null ? "" : r.times_usual + "×" },
      { title: "top sessions", key: "top_sessions" },
    ], data.anomalies, { id: "health-anomalies", empty: "No day far above its usual." })),
    section("Alerts raised", table([
      { title: "time", render: (r) => time(r.ts) },
      { title: "alert", render: (r) => r.action.replace(/_/g, " ") },
      { title: "subject", key: "subject" },
      { title: "detail", key: "detail" },
    ], data.alerts, { id: "health-alerts", empty: "No alert raised yet." })),
  ];
}

const PAGES = { overview: pageOverview, breakdown: pageBreakdown, concentration: pageConcentration,
                savings: pageSavings, sessions: pageSessions, requests: pageRequests, budgets: pageBudgets,
                approvals: pageApprovals, audit: pageAudit, health: pageHealth };

// ------------------------------------------------------------------------------------------ shell

function renderControls(params) {
  for (const [id, value] of [["start", params.get("start") || monthStart()], ["end", params.get("end") || me.today]]) {
    const input = document.getElementById(id);
    if (document.activeElement !== input) input.value = value;  // never under the cursor of someone typing a date
  }
  const chips = clear(document.getElementById("filters"));
  for (const f of FILTERS) {
    if (!params.has(f)) continue;
    const locked = f === "team" && me.role !== "admin";
    chips.append(h("span", { class: "chip" }, `${f}: ${none(params.get(f))}`,
      locked ? null : h("a", { href: link(route().page, params, { [f]: null }), title: "remove filter" }, " ×")));
  }
}

function monthStart() { return me.today.slice(0, 8) + "01"; }

function shiftDays(iso, days) {
  const d = new Date(iso + "T12:00:00Z"); d.setUTCDate(d.getUTCDate() + days); return d.toISOString().slice(0, 10);
}

function preset(name) {
  const t = me.today;
  if (name === "today") return [t, t];
  if (name === "7d") return [shiftDays(t, -6), t];
  if (name === "90d") return [shiftDays(t, -89), t];
  if (name === "last-month") {
    const end = shiftDays(monthStart(), -1);
    return [end.slice(0, 8) + "01", end];
  }
  return [monthStart(), t];
}

function setRange(start, end) {
  const { page, arg, params } = route();
  location.hash = link(page + (arg ? "/" + arg : ""), params, { start, end });
}

let renderToken = 0;
async function render() {
  const { page, arg, params } = route();
  const token = ++renderToken;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === page);
  renderControls(params);
  const main = document.getElementById("main");
  main.setAttribute("aria-busy", "true");
  let content;
  try {
    content = await (PAGES[page] || pageOverview)(params, arg);
  } catch (err) {
    content = [errorBox(err)];
  }
  if (token !== renderToken) return;
  clear(main).append(...content);
  fillShareBars(main);
  main.setAttribute("aria-busy", "false");
  main.dataset.page = page;
}

async function start() {
  me = await api("me");
  if (me.banner) document.body.insertBefore(h("div", { class: "banner", role: "status" }, me.banner),
                                            document.body.firstChild);
  document.getElementById("who").textContent = me.role === "admin" ? "admin" : `team ${me.team}`;
  document.getElementById("tz").textContent = me.timezone;
  document.body.classList.toggle("is-admin", me.role === "admin");
  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/ui/logout", { method: "POST", headers: { "X-CSRF-Token": me.csrf || "" } });
    location.href = "/ui/login";
  });
  for (const b of document.querySelectorAll("[data-preset]")) {
    b.addEventListener("click", () => setRange(...preset(b.dataset.preset)));
  }
  for (const id of ["start", "end"]) {
    document.getElementById(id).addEventListener("change", () => {
      const start = document.getElementById("start"), end = document.getElementById("end");
      if (start.checkValidity() && end.checkValidity()) setRange(start.value, end.value);
    });
  }
  const menu = document.getElementById("menu");
  menu.addEventListener("click", () => {
    const open = document.body.classList.toggle("menu-open");
    menu.setAttribute("aria-expanded", String(open));
  });
  const closeMenu = () => {
    document.body.classList.remove("menu-open");
    menu.setAttribute("aria-expanded", "false");
  };
  for (const a of document.querySelectorAll("#nav a")) a.addEventListener("click", closeMenu);  // the same page too
  window.addEventListener("hashchange", () => {
    closeMenu();
    render();
  });
  await render();
}

start();
