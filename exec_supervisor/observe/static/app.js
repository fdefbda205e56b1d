// exec-supervisor status page. No build step, no library: the daemon serves this file as is.
// Live data comes from /v1/stream (Server-Sent Events read with fetch, so a token can go in a header).
// Rows are made once per instance and updated in place; text is always set with textContent.
"use strict";

const T = {
  en: {connecting: "connecting…", live: "live", disconnected: "disconnected: reconnecting…", version: "version",
    uptime: "uptime", running: "running", events: "events", filter: "filter: exec id, pid, state…",
    all_states: "all states", not_running: "not running", token: "token for actions", save: "save", forget: "forget",
    log_tail: "log (last 100 lines, live)", recent_events: "recent events", type: "type", exec_id: "exec id",
    all_levels: "all levels", cancel: "cancel", confirm: "confirm", col_id: "exec id", col_state: "state",
    col_pid: "pid", col_uptime: "uptime", col_restarts: "restarts", col_exit: "last exit", col_cpu: "CPU %",
    col_rss: "RSS", restart: "restart", stop: "stop", start: "start", scale: "scale", shown: "{n} of {m} shown",
    not_forwarded: "not forwarded", delivering: "delivering", backlog: "backlog {n}, oldest {age}",
    unauthorized: "401: configure service.auth", misconfigured: "log API address wrong (see the daemon's log)",
    retrying: "retrying: {err}", token_saved: "token kept for this tab", no_token: "no token",
    actions_off: "actions off (http.actions)", need_token: "the token is needed to read this farm: enter it",
    ask: "{verb} {target}?", ask_scale: "scale {target} to {n}?", command: "command", cwd: "cwd",
    env: "environment (names)", inherited: "+{n} inherited", log_file: "log file", exit_code: "code {c}",
    killed: "killed by {s}", ago: "{t} ago", stopping: "stopping", ok: "ok", failed: "failed"},
  zh: {connecting: "连接中…", live: "实时", disconnected: "已断开: 正在重连…", version: "版本", uptime: "运行时间",
    running: "运行中", events: "事件", filter: "筛选: 执行端 ID, pid, 状态…", all_states: "全部状态",
    not_running: "未运行", token: "操作令牌", save: "保存", forget: "清除", log_tail: "日志 (最后 100 行, 实时)",
    recent_events: "最近事件", type: "类型", exec_id: "执行端 ID", all_levels: "全部级别", cancel: "取消",
    confirm: "确认", col_id: "执行端 ID", col_state: "状态", col_pid: "pid", col_uptime: "运行时间",
    col_restarts: "重启次数", col_exit: "上次退出", col_cpu: "CPU %", col_rss: "内存", restart: "重启", stop: "停止",
    start: "启动", scale: "扩缩", shown: "显示 {n} / {m}", not_forwarded: "未转发", delivering: "正常投递",
    backlog: "积压 {n} 条, 最早 {age}", unauthorized: "401: 请配置 service.auth",
    misconfigured: "日志接口地址错误 (见守护进程日志)", retrying: "重试中: {err}", token_saved: "令牌已保存在此标签页",
    no_token: "无令牌", actions_off: "操作已关闭 (http.actions)", need_token: "读取需要令牌: 请输入",
    ask: "{verb} {target}?", ask_scale: "将 {target} 扩缩到 {n}?", command: "命令", cwd: "工作目录",
    env: "环境变量 (仅名称)", inherited: "+{n} 继承", log_file: "日志文件", exit_code: "退出码 {c}",
    killed: "被 {s} 终止", ago: "{t}前", stopping: "正在停止", ok: "成功", failed: "失败"},
};
const STATE_ZH = {running: "运行中", starting: "启动中", backoff: "等待重启", stopping: "停止中", stopped: "已停止",
  exited: "已退出", fatal: "已放弃"};
const COLS = [["id", "col_id"], ["state", "col_state"], ["pid", "col_pid"], ["uptime", "col_uptime"],
  ["restarts", "col_restarts"], ["exit", "col_exit"], ["cpu", "col_cpu"], ["rss", "col_rss"]];

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => { const n = document.createElement(tag); if (cls) n.className = cls;
  if (text !== undefined) n.textContent = text; return n; };
const S = {lang: localStorage.getItem("es-lang") || null, header: null, rows: new Map(), groups: new Map(),
  events: [], sort: {key: "id", desc: false}, skew: 0, connected: false};

function tr(key, vars) {
  let text = (T[S.lang || "en"] || T.en)[key] || T.en[key] || key;
  for (const [k, v] of Object.entries(vars || {})) text = text.replace("{" + k + "}", v);
  return text;
}
function token() { return sessionStorage.getItem("es-token") || ""; }
function authHeaders() { const t = token(); return t ? {Authorization: "Bearer " + t} : {}; }
function dur(s) {
  if (s == null || s < 0) return "";
  if (s < 60) return Math.floor(s) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d" + Math.floor(s % 86400 / 3600) + "h";
}
function bytes(n) {
  if (n == null) return "";
  const u = ["B", "KiB", "MiB", "GiB"]; let i = 0;
  while (n >= 1024 && i < 3) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
function now() { return Date.now() / 1000 + S.skew; }
function stateText(s) { return S.lang === "zh" ? (STATE_ZH[s] || s) : s; }
function exitText(x) {
  if (!x) return "";
  const what = x.error ? x.error : x.signal ? tr("killed", {s: x.signal}) : tr("exit_code", {c: x.code});
  return x.time ? what + ", " + tr("ago", {t: dur(now() - x.time)}) : what;
}

// ---------------------------------------------------------------- groups and rows

function group(type) {
  let g = S.groups.get(type);
  if (g) return g;
  const sec = el("section", "group"); sec.dataset.type = type;
  const head = el("div", "ghead");
  const name = el("span", "name", type), counts = el("span", "muted counts");
  const acts = el("span", "acts");
  for (const verb of ["restart", "stop", "start"]) {
    const b = el("button", "act", tr(verb)); b.dataset.action = verb; b.dataset.target = type; b.dataset.i18n = verb;
    acts.append(b);
  }
  const n = el("input"); n.type = "number"; n.min = "0"; n.className = "scale-n";
  const sb = el("button", "act", tr("scale")); sb.dataset.action = "scale"; sb.dataset.target = type; sb.dataset.i18n = "scale";
  acts.append(n, sb);
  head.append(name, counts, acts);
  head.addEventListener("click", (e) => { if (!e.target.closest(".acts")) sec.classList.toggle("collapsed"); });
  const table = el("table"), thead = el("thead"), hr = el("tr"), body = el("tbody");
  for (const [key, label] of COLS) {
    const th = el("th", "", tr(label)); th.dataset.key = key; th.dataset.i18n = label;
    th.addEventListener("click", () => setSort(key)); hr.append(th);
  }
  hr.append(el("th"));
  thead.append(hr); table.append(thead, body); sec.append(head, table);
  $("groups").append(sec);
  g = {sec, counts, body, scale: n, rows: []};
  S.groups.set(type, g);
  markSort();
  return g;
}

function makeRow(d) {
  const tr_ = el("tr"); tr_.dataset.id = d.e;
  const c = {};
  for (const [key] of COLS) { c[key] = el("td", key === "id" ? "id" : ["pid", "restarts", "cpu", "rss", "uptime"].includes(key) ? "num" : ""); tr_.append(c[key]); }
  const a = el("a", "", d.e); a.addEventListener("click", () => openDetail(d.e)); c.id.append(a);
  c.state.append(el("span", "st"));
  const acts = el("td"); const box = el("span", "acts");
  for (const verb of ["restart", "stop", "start"]) {
    const b = el("button", "act", tr(verb)); b.dataset.action = verb; b.dataset.target = d.e; b.dataset.i18n = verb; box.append(b);
  }
  acts.append(box); tr_.append(acts);
  const row = {tr: tr_, c, d: {}, type: d.t};
  S.rows.set(d.e, row);
  const g = group(d.t); g.rows.push(row); g.body.append(tr_);
  return row;
}

function setText(node, text) { if (node.textContent !== text) node.textContent = text; }

function paintRow(row) {
  const d = row.d, c = row.c;
  const st = c.state.firstChild;
  st.className = "st st-" + d.s; setText(st, stateText(d.s)); row.tr.dataset.state = d.s;
  setText(c.pid, d.p == null ? "" : String(d.p));
  setText(c.uptime, d.st ? dur(now() - d.st) : "");
  setText(c.restarts, String(d.r));
  setText(c.exit, exitText(d.x));
  setText(c.cpu, d.c == null ? "" : d.c.toFixed(1));
  setText(c.rss, bytes(d.m));
}

function upsert(d, flash) {
  if (d.gone) { const row = S.rows.get(d.e); if (row) removeRow(row); return; }
  let row = S.rows.get(d.e);
  if (row && row.type !== d.t) { removeRow(row); row = null; }
  if (!row) row = makeRow(d);
  const keep = {c: row.d.c, m: row.d.m};
  row.d = Object.assign(keep, d);
  paintRow(row); applyFilter(row);
  if (flash) { row.tr.classList.add("flash"); setTimeout(() => row.tr.classList.remove("flash"), 600); }
}

function removeRow(row) {
  row.tr.remove(); S.rows.delete(row.d.e || row.tr.dataset.id);
  const g = S.groups.get(row.type); if (g) g.rows = g.rows.filter((r) => r !== row);
}

// ---------------------------------------------------------------- filter and sort

function matches(row) {
  const q = $("filter").value.trim().toLowerCase(), want = $("state-filter").value, d = row.d;
  if (want === "!running" ? d.s === "running" : want && d.s !== want) return false;
  if (!q) return true;
  return q.split(/\s+/).every((w) => d.e.toLowerCase().includes(w) || String(d.p || "").includes(w) ||
    d.s.includes(w) || stateText(d.s).includes(w));
}
function applyFilter(row) { const show = matches(row); if (row.tr.hidden === show) row.tr.hidden = !show; }
function applyFilterAll() {
  for (const row of S.rows.values()) applyFilter(row);
  countShown();
}
function countShown() {
  let n = 0; for (const row of S.rows.values()) if (!row.tr.hidden) n++;
  setText($("shown"), tr("shown", {n, m: S.rows.size}));
}
function sortValue(row, key) {
  const d = row.d;
  switch (key) {
    case "id": return d.i; case "state": return d.s; case "pid": return d.p || 0;
    case "uptime": return d.st ? -d.st : 1e18; case "restarts": return d.r; case "exit": return d.x ? d.x.time || 0 : 0;
    case "cpu": return d.c || 0; case "rss": return d.m || 0; default: return 0;
  }
}
function setSort(key) {
  S.sort = {key, desc: S.sort.key === key ? !S.sort.desc : false};
  markSort(); sortAll();
}
function markSort() {
  document.querySelectorAll("th[data-key]").forEach((th) => {
    th.classList.toggle("sorted", th.dataset.key === S.sort.key);
    th.classList.toggle("desc", th.dataset.key === S.sort.key && S.sort.desc);
  });
}
function sortAll() {
  const {key, desc} = S.sort;
  for (const g of S.groups.values()) {
    const sorted = [...g.rows].sort((a, b) => { const x = sortValue(a, key), y = sortValue(b, key);
      return (x < y ? -1 : x > y ? 1 : 0) * (desc ? -1 : 1) || a.d.i - b.d.i; });
    let same = sorted.length === g.body.children.length;
    for (let i = 0; same && i < sorted.length; i++) same = g.body.children[i] === sorted[i].tr;
    if (!same) { const frag = document.createDocumentFragment(); for (const r of sorted) frag.append(r.tr); g.body.append(frag); }
    g.rows = sorted;
  }
}

// ---------------------------------------------------------------- header and events

function paintHeader(h) {
  S.header = h; S.skew = h.now - Date.now() / 1000;
  if (!S.lang) { S.lang = h.language || "en"; translate(); }
  setText($("farm-name"), h.name); setText($("farm-host"), h.host + " · pid " + h.pid);
  setText($("version"), h.version); setText($("totals"), h.running + " / " + h.desired);
  document.title = h.name + " · " + h.running + "/" + h.desired + " · exec-supervisor";
  const chips = $("by-state"); chips.textContent = "";
  for (const [s, n] of Object.entries(h.states)) { const c = el("span", "st st-" + s, stateText(s) + " " + n); chips.append(c); }
  const p = h.pipeline, pipe = $("pipeline");
  let text, cls = "ok";
  if (!p.forwarding) { text = tr("not_forwarded"); cls = ""; }
  else if (p.state === "unauthorized") { text = tr("unauthorized"); cls = "bad"; }
  else if (p.state === "misconfigured") { text = tr("misconfigured"); cls = "bad"; }
  else if (p.backlog > 0) { text = tr("backlog", {n: p.backlog, age: dur(p.oldest_age || 0)}); cls = "warn";
    if (p.state === "retrying" && p.last_error) text += " · " + tr("retrying", {err: p.last_error}); }
  else text = tr("delivering");
  pipe.className = "pipe " + cls; setText(pipe, text);
  for (const t of h.types) { const g = group(t.type); setText(g.counts, t.running + " / " + t.desired + " " + tr("running")); }
  document.body.classList.toggle("no-actions", !h.actions);
  document.querySelectorAll("button.act").forEach((b) => { b.hidden = !h.actions; });
  document.querySelectorAll(".scale-n").forEach((b) => { b.hidden = !h.actions; });
  setText($("token-state"), h.actions ? (token() ? tr("token_saved") : tr("no_token")) : tr("actions_off"));
  tick();
}
function tick() {
  if (S.header) setText($("uptime"), dur(now() - S.header.started));
  for (const row of S.rows.values()) if (row.d.st && !row.tr.hidden) setText(row.c.uptime, dur(now() - row.d.st));
}

function addEvents(list, replace) {
  S.events = replace ? list.slice(-200) : S.events.concat(list).slice(-200);
  paintEvents();
}
function paintEvents() {
  const type = $("ev-type").value.trim().toLowerCase(), id = $("ev-id").value.trim().toLowerCase(), lv = $("ev-level").value;
  const ol = $("events"), frag = document.createDocumentFragment();
  for (let i = S.events.length - 1; i >= 0; i--) {
    const e = S.events[i];
    if (lv && e.level !== lv) continue;
    if (type && !(e.type || "").toLowerCase().includes(type)) continue;
    if (id && !(e.exec_id || "").toLowerCase().includes(id)) continue;
    const li = el("li"); li.dataset.event = e.event; li.dataset.execId = e.exec_id || "";
    li.append(el("span", "lv lv-" + e.level, e.level), el("span", "muted", new Date(e.time * 1000).toLocaleTimeString()));
    li.append(el("div", "msg", S.lang === "zh" ? e.zh : e.en));
    frag.append(li);
  }
  ol.textContent = ""; ol.append(frag);
}

// ---------------------------------------------------------------- the live feed

const handlers = {
  snapshot(data) {
    const seen = new Set();
    for (const d of data.rows) { upsert(d, false); seen.add(d.e); }
    for (const row of [...S.rows.values()]) if (!seen.has(row.tr.dataset.id)) removeRow(row);
    paintHeader(data.header); addEvents(data.events, true); sortAll(); countShown();
  },
  rows(list) { for (const d of list) upsert(d, true); if (S.sort.key !== "id") sortAll(); countShown(); },
  events(list) { addEvents(list, false); },
  header(h) { paintHeader(h); },
  usage(map) {
    for (const [id, [c, m]] of Object.entries(map)) { const row = S.rows.get(id); if (row) { row.d.c = c; row.d.m = m; paintRow(row); } }
  },
};

function setConn(ok, text) {
  S.connected = ok; const c = $("conn");
  c.className = "conn " + (ok ? "ok" : "down"); c.dataset.i18n = ok ? "live" : "disconnected";
  setText(c, text || tr(ok ? "live" : "disconnected"));
}

let retryDelay = 1000, feed = null;
async function connect() {
  const abort = new AbortController(); feed = abort;
  let watchdog = setTimeout(() => abort.abort(), 40000), why;
  try {
    const resp = await fetch("/v1/stream", {headers: {Accept: "text/event-stream", ...authHeaders()}, cache: "no-store",
      signal: abort.signal});
    if (resp.status === 401) why = tr("need_token");
    else if (resp.ok) {
      setConn(true); retryDelay = 1000;
      const reader = resp.body.getReader(), dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        clearTimeout(watchdog); watchdog = setTimeout(() => abort.abort(), 40000);
        buf += dec.decode(value, {stream: true});
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) { frame(buf.slice(0, i)); buf = buf.slice(i + 2); }
      }
    }
  } catch (e) { /* the daemon went away: reconnect below */ }
  clearTimeout(watchdog);
  if (feed !== abort) return;  // replaced by a newer connection (token change)
  setConn(false, why);
  setTimeout(connect, retryDelay); retryDelay = Math.min(retryDelay * 2, 5000);
}
function frame(text) {
  let name = "message", data = "";
  for (const line of text.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  if (!data || !handlers[name]) return;
  try { handlers[name](JSON.parse(data)); } catch (e) { console.error("bad message", name, e); }
}

// ---------------------------------------------------------------- instance detail and its log

let logAbort = null;
async function openDetail(id) {
  if (logAbort) logAbort.abort();
  $("detail").hidden = false; setText($("detail-id"), id);
  const dl = $("detail-facts"); dl.textContent = ""; $("detail-log").textContent = "";
  const resp = await fetch("/v1/instances/" + encodeURIComponent(id), {headers: authHeaders()});
  const info = await resp.json();
  if (!resp.ok) { dl.append(el("dd", "", info.error || resp.status)); return; }
  const facts = [[tr("command"), info.argv.join(" ")], [tr("cwd"), info.cwd],
    [tr("env"), info.env_names.join(", ") + "  " + tr("inherited", {n: info.env_inherited})], [tr("log_file"), info.log]];
  for (const [k, v] of facts) dl.append(el("dt", "", k), el("dd", "", v));
  followLog(id);
}
async function followLog(id) {
  const abort = new AbortController(); logAbort = abort;
  const pre = $("detail-log");
  try {
    const resp = await fetch("/v1/logs/" + encodeURIComponent(id) + "?n=100&follow=1", {headers: authHeaders(), signal: abort.signal});
    const reader = resp.body.getReader(), dec = new TextDecoder();
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      let text = pre.textContent + dec.decode(value, {stream: true});
      const lines = text.split("\n"); if (lines.length > 201) text = lines.slice(-201).join("\n");
      pre.textContent = text;
      if (stick) pre.scrollTop = pre.scrollHeight;
    }
  } catch (e) { /* closed, or the daemon went away */ }
}

// ---------------------------------------------------------------- actions

function ask(text) {
  const dlg = $("confirm"); setText($("confirm-text"), text);
  return new Promise((resolve) => {
    const done = (ok) => { dlg.close(); $("confirm-yes").onclick = $("confirm-no").onclick = null; resolve(ok); };
    $("confirm-yes").onclick = () => done(true); $("confirm-no").onclick = () => done(false);
    dlg.showModal();
  });
}
function answer(ok, text) {
  const a = $("answer"); a.hidden = false; a.className = "answer " + (ok ? "ok" : "bad"); a.dataset.ok = ok ? "1" : "0";
  setText(a, text);
}
async function act(verb, target, n) {
  const question = verb === "scale" ? tr("ask_scale", {target, n}) : tr("ask", {verb: tr(verb), target});
  if (!(await ask(question))) return;
  const body = verb === "scale" ? {scale: {[target]: n}} : {target, wait: false};
  try {
    const resp = await fetch("/v1/" + verb, {method: "POST", headers: {"Content-Type": "application/json", ...authHeaders()},
      body: JSON.stringify(body)});
    const data = await resp.json().catch(() => ({}));
    const ok = resp.ok && data.ok !== false;
    answer(ok, verb + " " + target + ": " + (ok ? tr("ok") : resp.status + " " + (data.error || tr("failed"))));
  } catch (e) { answer(false, verb + " " + target + ": " + e); }
}
document.addEventListener("click", (e) => {
  const b = e.target.closest("button.act");
  if (!b) return;
  e.stopPropagation();
  if (b.dataset.action === "scale") {
    const input = b.parentElement.querySelector(".scale-n"), n = parseInt(input.value, 10);
    if (!(n >= 0)) { input.focus(); return; }
    act("scale", b.dataset.target, n);
  } else act(b.dataset.action, b.dataset.target);
});

// ---------------------------------------------------------------- language and controls

function translate() {
  document.documentElement.lang = S.lang === "zh" ? "zh-CN" : "en";
  $("lang").value = S.lang;
  document.querySelectorAll("[data-i18n]").forEach((n) => { n.textContent = tr(n.dataset.i18n); });
  document.querySelectorAll("[data-i18n-placeholder]").forEach((n) => { n.placeholder = tr(n.dataset.i18nPlaceholder); });
  for (const row of S.rows.values()) paintRow(row);
  if (S.header) paintHeader(S.header);
  paintEvents(); countShown();
}

function init() {
  $("filter").addEventListener("input", applyFilterAll);
  $("state-filter").addEventListener("change", applyFilterAll);
  for (const id of ["ev-type", "ev-id"]) $(id).addEventListener("input", paintEvents);
  $("ev-level").addEventListener("change", paintEvents);
  $("lang").addEventListener("change", () => { S.lang = $("lang").value; localStorage.setItem("es-lang", S.lang); translate(); });
  $("token-save").addEventListener("click", () => {
    const t = $("token").value.trim(); $("token").value = "";
    if (t) sessionStorage.setItem("es-token", t);
    if (S.header) paintHeader(S.header);
    if (!S.connected) { if (feed) feed.abort(); connect(); }
  });
  $("token-clear").addEventListener("click", () => { sessionStorage.removeItem("es-token"); if (S.header) paintHeader(S.header); });
  $("detail-close").addEventListener("click", () => { if (logAbort) logAbort.abort(); $("detail").hidden = true; });
  if (S.lang) translate();
  setInterval(tick, 1000);
  connect();
}
document.addEventListener("DOMContentLoaded", init);
