// pxetwist dashboard: plain DOM, no framework, no build step.  Everything the server sends is
// put on the page with textContent (paths and host names come from clients, never trust them).
"use strict";

const TOKEN_KEY = "pxetwist-token";
const ORDER = { stuck: 0, failed: 1, "in-progress": 2, booted: 3, idle: 4 };
let token = sessionStorage.getItem(TOKEN_KEY);
let selected = null;
let timers = [];
let lastRows = [];
let access = "read"; // the token's, from /health: write tokens get the action buttons
const SHOWN = 300; // rows drawn at once: a fleet is searched with the filter, not scrolled

const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key === "width") node.style.width = value; // CSSOM: allowed by the page's CSP
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

async function api(path, method) {
  const response = await fetch(path, {
    method: method || "GET", headers: { Authorization: "Bearer " + token } });
  if (response.status === 401) { signOut("The token was refused."); throw new Error("401"); }
  const body = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error(body.message || response.statusText);
  return body;
}

// A button that asks to be clicked twice before it acts (no modal dialogs).  Its first click
// is remembered by key for ten seconds, across the redraws of the polling loop.
const armed = new Set();
function twoStep(key, label, confirmLabel, action) {
  const button = el("button", { type: "button", class: "small" },
    armed.has(key) ? confirmLabel : label);
  if (armed.has(key)) button.dataset.armed = "yes";
  button.addEventListener("click", async (event) => {
    event.stopPropagation();
    if (!armed.has(key)) {
      armed.add(key);
      setTimeout(() => armed.delete(key), 10000);
      button.dataset.armed = "yes";
      button.textContent = confirmLabel;
      return;
    }
    armed.delete(key);
    button.disabled = true;
    try { await action(); } catch (error) { button.textContent = error.message; return; }
    refresh();
    refreshTimeline();
  });
  return button;
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.max(0, Date.now() / 1000 - seconds);
  if (s < 60) return Math.round(s) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function duration(s) {
  if (s === null || s === undefined) return "";
  if (s < 1) return (s * 1000).toFixed(0) + " ms";
  if (s < 120) return s.toFixed(1) + " s";
  return (s / 60).toFixed(1) + " min";
}

function bytes(n) {
  if (typeof n !== "number") return "";
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1048576).toFixed(1) + " MiB";
}

function describe(event) {
  const d = event.details || {};
  const parts = [];
  if (d.message_type) parts.push(d.message_type);
  if (d.reply && d.reply !== "none") parts.push("→ " + d.reply);
  if (d.address) parts.push(d.address);
  if (d.file) parts.push(d.file);
  if (d.path) parts.push((d.method || "GET") + " " + d.path);
  if (d.status !== undefined && d.status !== null) parts.push(String(d.status));
  if (typeof d.bytes === "number" && d.bytes > 0) parts.push(bytes(d.bytes));
  if (typeof d.seconds === "number") parts.push(duration(d.seconds));
  if (d.retransmits) parts.push(d.retransmits + " retransmits");
  if (d.policy) parts.push("policy " + d.policy);
  if (event.outcome && event.outcome !== "ok") parts.push(event.outcome);
  if (d.reason && event.outcome !== "ok") parts.push(d.reason);
  return parts.join(" · ");
}

function badge(state) {
  return el("span", { class: "badge s-" + state }, state);
}

function resultText(session) {
  if (!session) return "never seen";
  const last = session.last_event || (session.events && session.events[session.events.length - 1]);
  if (session.state === "booted") {
    const secs = session.seconds !== undefined ? session.seconds : session.updated - session.started;
    return "booted in " + duration(secs);
  }
  if ((session.state === "stuck" || session.state === "failed") && session.hint) return session.hint;
  return last ? last.protocol + " " + describe(last) : "";
}

// -- machines -------------------------------------------------------------------------------

function mergeMachines(machines, sessions) {
  const rows = new Map();
  for (const m of machines) rows.set(m.mac, { mac: m.mac, machine: m, session: null });
  for (const s of sessions) {
    const row = rows.get(s.mac) || { mac: s.mac, machine: null, session: null };
    if (!row.session) row.session = s; // newest first
    rows.set(s.mac, row);
  }
  const list = [...rows.values()];
  for (const row of list) row.state = row.session ? row.session.state : "idle";
  list.sort((a, b) => (ORDER[a.state] - ORDER[b.state])
    || ((b.session ? b.session.updated : 0) - (a.session ? a.session.updated : 0))
    || a.mac.localeCompare(b.mac));
  return list;
}

function matches(row, words) {
  const m = row.machine || {};
  const s = row.session || {};
  const text = [row.mac, m.name, m.group, row.state, s.stage].filter(Boolean).join(" ").toLowerCase();
  return words.every((word) => text.includes(word));
}

function renderMachines(rows) {
  lastRows = rows;
  const words = $("machine-filter").value.toLowerCase().split(/\s+/).filter(Boolean);
  const chosen = words.length ? rows.filter((row) => matches(row, words)) : rows;
  const shown = chosen.slice(0, SHOWN);
  const more = $("machines-more");
  more.hidden = chosen.length <= SHOWN;
  more.textContent = chosen.length - SHOWN + " more; use the filter to find one";
  const body = $("machines").querySelector("tbody");
  body.replaceChildren(...shown.map((row) => {
    const m = row.machine || {};
    const s = row.session;
    const label = m.name ? el("div", { class: "name" }, m.name) : null;
    const sub = [row.mac, m.group ? "group " + m.group : null, m.source === "api" ? "via API" : null,
      !row.machine ? "not configured" : null].filter(Boolean).join(" · ");
    const tr = el("tr", { dataset: { mac: row.mac, state: row.state } },
      el("td", {}, badge(row.state)),
      el("td", {}, label, el("div", { class: label ? "sub mono" : "mono" }, sub)),
      el("td", { class: "mono" }, s ? s.stage : "—"),
      el("td", { class: "result", title: resultText(s) }, el("div", { class: "clamp" }, resultText(s))),
      el("td", { class: "sub" }, s ? ago(s.updated) : ""));
    if (row.mac === selected) tr.classList.add("selected");
    tr.addEventListener("click", () => select(row.mac));
    return tr;
  }));
  $("machines-empty").hidden = rows.length > 0;
  $("machine-count").textContent = !rows.length ? ""
    : words.length ? "(" + chosen.length + " of " + rows.length + ")" : "(" + rows.length + ")";
  const stuck = rows.filter((r) => r.state === "stuck");
  const banner = $("stuck-banner");
  banner.hidden = stuck.length === 0;
  const named = stuck.slice(0, 5).map((r) => (r.machine && r.machine.name ? r.machine.name : r.mac)
    + " at " + r.session.stage);
  if (stuck.length > named.length) named.push("and " + (stuck.length - named.length) + " more");
  banner.textContent = stuck.length === 0 ? "" : stuck.length + " machine" + (stuck.length > 1 ? "s" : "")
    + " stuck: " + named.join("; ") + " (select one for the likely reason)";
}

// -- one machine's boot, live ----------------------------------------------------------------

function select(mac) {
  selected = mac;
  for (const tr of $("machines").querySelectorAll("tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.mac === mac);
  }
  $("explain-mac").value = mac;
  $("machine-actions").replaceChildren();
  refreshTimeline();
}

async function refreshTimeline() {
  if (!selected) return;
  const mac = selected;
  const sessions = await api("/api/v1/sessions/" + encodeURIComponent(mac) + "?limit=1");
  if (mac !== selected) return;
  $("timeline-mac").textContent = mac;
  const session = sessions[0];
  if (!session) {
    $("timeline-summary").textContent = "No boot seen yet; waiting for this machine…";
    $("stages").replaceChildren();
    $("timeline").replaceChildren();
    renderActions(mac);
    return;
  }
  $("timeline-summary").replaceChildren(badge(session.state), " at ",
    el("span", { class: "mono" }, session.stage), " · started " + ago(session.started),
    session.hint ? el("span", { class: "hint" }, session.hint) : "");
  const stages = session.stages || [];
  $("stages").replaceChildren(...stages.map((s) =>
    el("li", { dataset: { stage: s.stage } }, s.stage, el("span", { class: "secs" }, duration(s.seconds)))));
  const start = session.started;
  const events = session.events || [];
  $("timeline").replaceChildren(...events.map((e) =>
    el("li", { class: "o-" + e.outcome, dataset: { stage: e.stage } },
      el("span", { class: "t" }, "+" + (e.time - start).toFixed(2) + "s"),
      el("span", { class: "proto p-" + e.protocol }, e.protocol),
      el("strong", {}, e.stage),
      el("span", { class: "detail" }, describe(e)))));
  const list = $("timeline");
  list.scrollTop = list.scrollHeight;
  renderActions(mac);
}

// -- leases, pools, explain ------------------------------------------------------------------

function renderPools(pools) {
  $("pools").replaceChildren(...pools.map((p) => {
    const share = p.size ? p.held / p.size : 0;
    return el("div", { class: "pool" },
      el("span", { class: "mono" }, p.network), " ",
      el("span", { class: "muted" }, p.held + " of " + p.size + " in use (" + Math.round(share * 100) + "%)"),
      el("div", { class: "bar" + (share > 0.85 ? " high" : "") },
        el("div", { width: Math.min(100, share * 100).toFixed(1) + "%" })));
  }));
  if (!pools.length) $("pools").replaceChildren(el("p", { class: "muted" }, "No address pools."));
}

function renderLeases(leases) {
  const shown = leases;
  $("leases").querySelector("tbody").replaceChildren(...shown.map((l) =>
    el("tr", { dataset: { address: l.address } },
      el("td", { class: "mono" }, l.address), el("td", { class: "mono" }, l.mac || "—"),
      el("td", {}, l.state), el("td", { class: "sub" },
        l.expires === null ? "never" : new Date(l.expires * 1000).toLocaleString()),
      el("td", {}, access === "write" ? twoStep("release " + l.address, "release", "release it?", () =>
        api("/api/v1/leases/" + encodeURIComponent(l.address), "DELETE")) : null))));
  $("leases-empty").hidden = shown.length > 0;
}

async function renderActions(mac) {
  const box = $("machine-actions");
  if (access !== "write") { box.replaceChildren(); return; }
  let state = null;
  try { state = await api("/api/v1/machines/" + encodeURIComponent(mac) + "/boot-once"); } catch (e) { }
  if (mac !== selected) return;
  box.replaceChildren(state && state.used
    ? twoStep("reset " + mac, "reset boot once", "netboot it once more?", () =>
        api("/api/v1/machines/" + encodeURIComponent(mac) + "/boot-once/reset", "POST"))
    : "");
}

async function explain(event) {
  event.preventDefault();
  const params = new URLSearchParams({ mac: $("explain-mac").value.trim() });
  if ($("explain-arch").value !== "") params.set("arch", $("explain-arch").value);
  if ($("explain-ipxe").checked) params.set("user_class", "iPXE");
  const out = $("explain-out");
  try {
    const answer = await api("/api/v1/explain?" + params);
    out.textContent = answer.text;
    out.classList.remove("muted", "error");
  } catch (error) {
    out.textContent = error.message;
    out.classList.add("error");
  }
}

// -- the loop ---------------------------------------------------------------------------------

async function refresh() {
  try {
    const [health, machines, sessions, pools, leases] = await Promise.all([
      api("/api/v1/health"), api("/api/v1/machines"), api("/api/v1/sessions?latest=true&events=false&limit=5000"),
      api("/api/v1/pools"), api("/api/v1/leases?active=true&limit=200")]);
    access = health.token.access;
    $("health").textContent = "v" + health.version + " · dhcp " + health.dhcp_mode + " · chain "
      + health.policy_chain.join(" → ") + " · up " + duration(health.uptime_seconds);
    renderMachines(mergeMachines(machines, sessions));
    renderPools(pools);
    renderLeases(leases);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    $("updated").textContent = "update failed: " + error.message;
  }
}

function start() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  refresh();
  timers = [setInterval(refresh, 2000), setInterval(() => refreshTimeline().catch(() => {}), 1000)];
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  token = null;
  timers.forEach(clearInterval);
  timers = [];
  $("app").hidden = true;
  $("signout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  token = $("token").value.trim();
  try {
    await api("/api/v1/health");
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    start();
  } catch (error) {
    if (error.message !== "401") $("login-error").textContent = error.message;
  }
});
$("signout").addEventListener("click", () => signOut(""));
$("explain-form").addEventListener("submit", explain);
$("machine-filter").addEventListener("input", () => renderMachines(lastRows));

if (token) start(); else signOut("");
