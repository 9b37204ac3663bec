// The control-room page: live queue, map with coverage, figures, operator actions.
// Uses only the engine's JSON API (docs/api.md). No framework, no build step, no CDN.
"use strict";

(() => {
  const TARGET_DEFAULT = 180;
  const AMBER_S = 120;

  // ------------------------------------------------------------------ text

  const TEXT = {
    zh: {
      title: "一呼百应 调度台", fig_incidents: "今日事件", fig_p50: "到场 P50", fig_p90: "到场 P90",
      fig_within: "{s} 秒内到场", fig_within_of: "共 {n} 起已判定", fig_reached: "有人到场",
      fig_unverified: "{n} 起未核实", fig_open: "处理中", fig_escalated: "需人工", fig_available: "可调志愿者",
      tab_queue: "队列", tab_history: "历史", tab_report: "报警录入", queue_empty: "当前没有待处理事件",
      history_since: "时间范围", range_1h: "最近 1 小时", range_today: "今天", range_24h: "最近 24 小时",
      range_7d: "最近 7 天", refresh: "刷新", h_time: "报警时间", h_kind: "类型", h_address: "地址",
      h_cell: "网格", h_state: "状态", h_tta: "到场用时", history_empty: "此时间范围内没有已结束的事件",
      report_hint: "在地图上点击以设置位置。", f_kind: "类型", f_priority: "优先级", priority_default: "按类型默认",
      f_lat: "纬度", f_lon: "经度", f_address: "地址", f_description: "情况描述", f_responders: "所需人数",
      f_submit: "提交报警", layer_coverage: "覆盖", skill_any: "任意志愿者", skill_first_aid: "急救技能",
      layer_volunteers: "志愿者",
      map_note: "网格为自动生成，非官方社区边界。志愿者位置已模糊至约 100 米，仅已派遣者显示精确位置。",
      auth_title: "操作员登录", auth_name: "姓名", auth_token: "操作令牌", cancel: "取消", ok: "确定",
      assign_title: "指派志愿者", assign_vid: "志愿者编号", assign: "指派",
      live: "实时", reconnecting: "重新连接中…", connecting: "连接中…",
      sign_in: "操作员登录", act_resolve: "结案", act_cancel: "取消", act_escalate: "升级", act_assign: "指派…",
      confirm: "确认？", responders: "响应者", eta: "预计", accepted: "已接受", arrived: "已到场", overdue: "超时未到",
      role_primary: "主", role_backup: "后备", role_primary_title: "主要响应者", role_backup_title: "后备响应者",
      verified: "已核实", unverified: "未核实", unverified_title: "报了到达，但没有在现场附近的位置，尚未计入到场用时",
      released: "已撤回",
      ev_target_missed: "未在目标时间内核实到场", ev_arrival_verified: "到场已核实", ev_claimed: "曾报到达但未核实",
      alerts_sent: "已通知 {n} 人", needed: "需 {n} 人", on_scene_in: "到场用时", target: "目标 3:00",
      legend_60: "≤1 分钟", legend_120: "≤2 分钟", legend_180: "≤3 分钟", legend_late: ">3 分钟",
      legend_none: "无人可达", cov_summary: "{a}/{b} 个网格 3 分钟可达",
      reported_ok: "已录入 {id}", action_ok: "{id}：{act} 完成", token_wrong: "令牌无效，请重新输入",
      token_needed: "需要操作令牌", detail_times: "时间", detail_alerts: "通知", detail_events: "事件记录",
      t_reported_at: "报警", t_received_at: "收到", t_first_alert_at: "首次通知", t_first_accept_at: "首次接受",
      t_first_arrival_at: "首人到场", t_escalated_at: "升级", t_ended_at: "结束", by: "操作人",
      signed_in_as: "操作员：{name}", assign_for: "事件 {id}",
      kind_cardiac_arrest: "心脏骤停", kind_medical: "急症", kind_fall: "跌倒", kind_fire: "火情",
      kind_dispute: "纠纷", kind_security: "治安", kind_lost_person: "走失", kind_other: "其他",
      state_open: "新报警", state_alerting: "通知中", state_assigned: "已派遣", state_on_scene: "已到场",
      state_resolved: "已结案", state_cancelled: "已取消", state_escalated: "需人工处理",
    },
    en: {
      title: "Volunteer dispatch · Control room", fig_incidents: "Today", fig_p50: "P50 to arrival",
      fig_p90: "P90 to arrival", fig_within: "Within {s} s", fig_within_of: "of {n} decided", fig_reached: "Reached",
      fig_unverified: "{n} unverified", fig_open: "Open", fig_escalated: "Escalated",
      fig_available: "Volunteers free", tab_queue: "Queue", tab_history: "History", tab_report: "Report",
      queue_empty: "No open incidents", history_since: "Range", range_1h: "Last hour", range_today: "Today",
      range_24h: "Last 24 hours", range_7d: "Last 7 days", refresh: "Refresh", h_time: "Reported",
      h_kind: "Kind", h_address: "Address", h_cell: "Cell", h_state: "State", h_tta: "To arrival",
      history_empty: "No closed incidents in this range", report_hint: "Click on the map to set the location.",
      f_kind: "Kind", f_priority: "Priority", priority_default: "Default for the kind", f_lat: "Latitude",
      f_lon: "Longitude", f_address: "Address", f_description: "Description", f_responders: "Responders needed",
      f_submit: "Report incident", layer_coverage: "Coverage", skill_any: "Any volunteer",
      skill_first_aid: "First aid", layer_volunteers: "Volunteers",
      map_note: "Generated grid, not official community boundaries. Volunteer positions coarsened to about 100 m; exact only for those assigned.",
      auth_title: "Operator sign-in", auth_name: "Name", auth_token: "Operator token", cancel: "Cancel", ok: "OK",
      assign_title: "Assign a volunteer", assign_vid: "Volunteer id", assign: "Assign",
      live: "Live", reconnecting: "Reconnecting…", connecting: "Connecting…",
      sign_in: "Operator sign-in", act_resolve: "Resolve", act_cancel: "Cancel", act_escalate: "Escalate",
      act_assign: "Assign…", confirm: "Confirm?", responders: "Responders", eta: "ETA", accepted: "accepted", overdue: "overdue",
      role_primary: "primary", role_backup: "backup", role_primary_title: "Primary responder",
      role_backup_title: "Backup responder", verified: "verified", unverified: "unverified",
      unverified_title: "Said \"I'm here\" with no position near the scene: not counted in the time to arrival yet",
      released: "stood down", ev_target_missed: "no verified arrival within the target",
      ev_arrival_verified: "arrival verified", ev_claimed: "an unverified arrival was claimed",
      arrived: "arrived", alerts_sent: "{n} alerted", needed: "needs {n}", on_scene_in: "on scene in",
      target: "target 3:00", legend_60: "≤1 min", legend_120: "≤2 min", legend_180: "≤3 min",
      legend_late: ">3 min", legend_none: "nobody in reach", cov_summary: "{a}/{b} cells reachable in 3 min",
      reported_ok: "Reported {id}", action_ok: "{id}: {act} done", token_wrong: "The token was refused; enter it again",
      token_needed: "An operator token is needed", detail_times: "Times", detail_alerts: "Alerts",
      detail_events: "Events", t_reported_at: "Reported", t_received_at: "Received", t_first_alert_at: "First alert",
      t_first_accept_at: "First accept", t_first_arrival_at: "First on scene", t_escalated_at: "Escalated",
      t_ended_at: "Ended", by: "by", signed_in_as: "Operator: {name}", assign_for: "Incident {id}",
      kind_cardiac_arrest: "Cardiac arrest", kind_medical: "Medical", kind_fall: "Fall", kind_fire: "Fire",
      kind_dispute: "Dispute", kind_security: "Security", kind_lost_person: "Lost person", kind_other: "Other",
      state_open: "New", state_alerting: "Alerting", state_assigned: "Assigned", state_on_scene: "On scene",
      state_resolved: "Resolved", state_cancelled: "Cancelled", state_escalated: "Escalated",
    },
  };
  const KINDS = ["cardiac_arrest", "medical", "fall", "fire", "dispute", "security", "lost_person", "other"];
  const ENDED = new Set(["resolved", "cancelled"]);

  let lang = localStorage.getItem("dispatch.lang") || "zh";
  const t = (key, vars) => {
    let s = (TEXT[lang] && TEXT[lang][key]) || TEXT.en[key] || key;
    for (const [k, v] of Object.entries(vars || {})) s = s.replace(`{${k}}`, String(v));
    return s;
  };

  // ------------------------------------------------------------------ state

  const open = new Map(); // id -> public state (with address) of every open incident
  const history = new Map(); // id -> public state of closed incidents in the history range
  let historyLoaded = false;
  let serverOffsetMs = 0; // server clock minus ours
  let target = TARGET_DEFAULT;
  let lastEventId = null;
  let source = null;
  let everLive = false;
  let selected = null;
  let volunteers = [];
  let coverage = null;
  let projection = null;

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
    return node;
  };
  const SVG_NS = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs) => {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  };

  const now = () => Date.now() + serverOffsetMs;
  const mmss = (s) => {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    const neg = s < 0; s = Math.abs(Math.round(s));
    return `${neg ? "-" : ""}${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  };
  const hhmm = (iso) => {
    if (!iso) return "–";
    return new Date(iso).toLocaleTimeString(lang === "zh" ? "zh-CN" : "en-GB", { hour12: false });
  };
  const dayTime = (iso) => {
    const d = new Date(iso);
    const loc = lang === "zh" ? "zh-CN" : "en-GB";
    return `${d.toLocaleDateString(loc, { month: "2-digit", day: "2-digit" })} ${d.toLocaleTimeString(loc, { hour12: false })}`;
  };

  // ------------------------------------------------------------------ API

  const session = {
    get token() { return sessionStorage.getItem("dispatch.token") || ""; },
    set token(v) { if (v) sessionStorage.setItem("dispatch.token", v); else sessionStorage.removeItem("dispatch.token"); },
    get by() { return sessionStorage.getItem("dispatch.by") || ""; },
    set by(v) { sessionStorage.setItem("dispatch.by", v); },
  };

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (session.token) headers.Authorization = `Bearer ${session.token}`;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok) throw new ApiError(response.status, (data && data.error) || response.statusText);
    return data;
  }

  // Reading is open unless the engine is configured with a read token; then ask once.
  async function read(path) {
    try {
      return await api("GET", path);
    } catch (err) {
      if (err.status === 401 || err.status === 403) {
        await askToken(err.status === 403 ? t("token_wrong") : t("token_needed"));
        return api("GET", path);
      }
      throw err;
    }
  }

  // ------------------------------------------------------------------ operator

  let authResolve = null;
  function askToken(message) {
    const dialog = $("auth-dialog");
    $("auth-error").textContent = message || "";
    $("auth-error").hidden = !message;
    $("auth-name").value = session.by;
    $("auth-token").value = "";
    if (!dialog.open) dialog.showModal();
    (session.by ? $("auth-token") : $("auth-name")).focus();
    return new Promise((resolve, reject) => { authResolve = { resolve, reject }; });
  }
  $("auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("auth-token").value.trim();
    if (!token) { $("auth-token").focus(); return; }
    session.token = token;
    session.by = $("auth-name").value.trim().slice(0, 64) || "operator";
    $("auth-dialog").close();
    renderOperator();
    if (authResolve) { authResolve.resolve(); authResolve = null; }
  });
  $("auth-cancel").addEventListener("click", () => {
    $("auth-dialog").close();
    if (authResolve) { authResolve.reject(new ApiError(0, t("token_needed"))); authResolve = null; }
  });
  $("operator").addEventListener("click", () => { askToken().catch(() => {}); });

  function renderOperator() {
    $("operator").textContent = session.token ? t("signed_in_as", { name: session.by || "operator" }) : t("sign_in");
  }

  // Every operator action: the token from this session (asked once), `by` from the name.
  async function operate(method, path, body) {
    if (!session.token) await askToken();
    try {
      return await api(method, path, body);
    } catch (err) {
      if (err.status === 401 || err.status === 403) {
        session.token = "";
        renderOperator();
        await askToken(t("token_wrong"));
        return api(method, path, body);
      }
      throw err;
    }
  }

  async function act(id, action, extra) {
    try {
      if (!session.token) await askToken(); // first, so that `by` is the name just given
      const state = await operate("POST", `/api/incidents/${encodeURIComponent(id)}/${action}`,
        { by: session.by || "operator", ...(extra || {}) });
      upsert(state);
      toast(t("action_ok", { id, act: t(`act_${action}`).replace("…", "") }));
    } catch (err) {
      if (err.status !== 0) toast(err.message, true);
    }
  }

  let toastTimer = null;
  function toast(message, isError) {
    const node = $("toast");
    node.textContent = message;
    node.className = isError ? "toast err" : "toast";
    node.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { node.hidden = true; }, isError ? 8000 : 3500);
  }

  // ------------------------------------------------------------------ incidents

  function upsert(state) {
    if (!state || !state.id) return;
    if (ENDED.has(state.state)) {
      open.delete(state.id);
      if (historyLoaded) history.set(state.id, state);
    } else {
      const old = open.get(state.id);
      if (old && old.version > state.version) return; // an older answer overtaken
      open.set(state.id, state);
    }
    scheduleRender();
    if (selected === state.id) refreshDetail();
  }

  const pending = new Map();
  function refetch(id) {
    if (pending.has(id)) return;
    // Coalesce a burst of events for one incident into one request.
    pending.set(id, setTimeout(async () => {
      pending.delete(id);
      try {
        upsert(await read(`/api/incidents/${encodeURIComponent(id)}?events=0`));
      } catch (err) {
        if (err.status === 404) { open.delete(id); scheduleRender(); }
      }
    }, 60));
  }

  async function loadQueue() {
    const body = await read("/api/incidents");
    serverOffsetMs = Date.parse(body.server_time) - Date.now();
    const seen = new Set();
    for (const s of body.incidents) { seen.add(s.id); open.set(s.id, s); }
    for (const id of [...open.keys()]) if (!seen.has(id)) refetch(id); // closed meanwhile
    scheduleRender();
    return body.last_event_id;
  }

  // ------------------------------------------------------------------ live events

  function setConn(state) {
    $("conn").dataset.state = state;
    $("conn-text").textContent = t(state);
  }

  function connect() {
    if (source) source.close();
    let url = "/api/events";
    const params = new URLSearchParams();
    if (lastEventId) params.set("last_event_id", lastEventId);
    if (session.token) params.set("access_token", session.token);
    if ([...params].length) url += `?${params}`;
    source = new EventSource(url);
    source.addEventListener("open", () => {
      const again = everLive;
      everLive = true;
      setConn("live");
      // After a gap, Last-Event-ID replays what happened; a full resync also catches
      // anything beyond the event log's reach.
      if (again) resync();
    });
    source.addEventListener("incident", (ev) => {
      if (ev.lastEventId) lastEventId = ev.lastEventId;
      let data = null;
      try { data = JSON.parse(ev.data); } catch (_) { return; }
      if (data && data.incident_id) refetch(data.incident_id);
      // After the server's 3 s cache of figures has passed, so the answer includes this.
      soon("figures", loadFigures, 3500);
      soon("volunteers", loadVolunteers, 800);
      soon("coverage", loadCoverage, 3000);
    });
    source.addEventListener("error", () => {
      setConn("reconnecting");
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (e.g. a 503 while the engine starts): try again ourselves.
        setTimeout(connect, 2000);
      }
    });
  }

  async function resync() {
    try {
      await loadQueue();
    } catch (_) { /* the next event or reconnect tries again */ }
    loadFigures(); loadVolunteers(); loadCoverage();
    if (historyLoaded) loadHistory();
  }

  const timers = new Map();
  function soon(name, fn, ms) {
    if (timers.has(name)) return;
    timers.set(name, setTimeout(() => { timers.delete(name); fn(); }, ms));
  }

  // ------------------------------------------------------------------ queue rendering

  function urgency(a, b) {
    // Most urgent first: priority, then the least time left to the target (oldest first).
    return a.priority - b.priority || Date.parse(a.reported_at) - Date.parse(b.reported_at) || (a.id < b.id ? -1 : 1);
  }

  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => { renderQueued = false; render(); });
  }

  function render() {
    renderQueue();
    renderLiveCounts();
    renderMarkers();
    if (historyLoaded) renderHistory();
  }

  function clockInfo(s) {
    if (s.time_to_arrival_s !== null && s.time_to_arrival_s !== undefined) {
      return { secs: s.time_to_arrival_s, done: true };
    }
    return { secs: (now() - Date.parse(s.reported_at)) / 1000, done: false };
  }
  const band = (secs) => (secs > target ? "red" : secs > AMBER_S ? "amber" : "ok");

  function paintClock(node, s) {
    const { secs, done } = clockInfo(s);
    node.className = `clock ${band(secs)}${done ? " done" : ""}`;
    node.firstChild.textContent = mmss(secs);
    node.querySelector("small").textContent = done ? t("on_scene_in") : t("target");
    node.querySelector(".bar i").style.width = `${Math.min(100, (100 * secs) / target).toFixed(1)}%`;
  }

  const rows = new Map(); // id -> {node, version, lang}
  function renderQueue() {
    const list = $("queue");
    const items = [...open.values()].sort(urgency);
    $("queue-count").textContent = String(items.length);
    $("queue-empty").hidden = items.length > 0;
    for (const [id, row] of rows) if (!open.has(id)) { row.node.remove(); rows.delete(id); }
    let previous = null;
    for (const s of items) {
      let row = rows.get(s.id);
      if (!row || row.version !== s.version || row.lang !== lang) {
        const node = queueItem(s);
        if (row) row.node.replaceWith(node);
        row = { node, version: s.version, lang };
        rows.set(s.id, row);
      }
      row.node.classList.toggle("selected", selected === s.id);
      const want = previous ? previous.nextSibling : list.firstChild;
      if (want !== row.node) list.insertBefore(row.node, want);
      previous = row.node;
    }
  }

  function queueItem(s) {
    const clock = el("div", { class: "clock" }, document.createTextNode(""), el("small"), el("span", { class: "bar" }, el("i")));
    paintClock(clock, s);
    const responders = s.responders.map(responderItem);
    const confirmable = (label, action) => {
      const b = el("button", { type: "button", class: "danger", "data-act": action }, label);
      b.addEventListener("click", (ev) => {
        ev.stopPropagation();
        if (!b.classList.contains("confirming")) {
          b.classList.add("confirming");
          b.textContent = t("confirm");
          setTimeout(() => { b.classList.remove("confirming"); b.textContent = label; }, 4000);
          return;
        }
        act(s.id, action);
      });
      return b;
    };
    const plain = (label, action, handler) => el("button", {
      type: "button", "data-act": action,
      onclick: (ev) => { ev.stopPropagation(); handler(); },
    }, label);
    const node = el("li", {
      class: `inc p${s.priority}${s.state === "escalated" ? " escalated" : ""}`,
      "data-id": s.id, "data-state": s.state,
      onclick: () => select(s.id),
    },
      clock,
      el("div", { class: "body" },
        el("div", { class: "line1" },
          el("span", { class: "prio" }, `P${s.priority}`),
          el("span", { class: "kind" }, t(`kind_${s.kind}`)),
          el("span", { class: `state state-${s.state}` }, t(`state_${s.state}`)),
          el("span", { class: "cell" }, s.cell || ""),
          el("span", { class: "iid" }, s.id)),
        el("div", { class: "addr" }, s.address || `${s.lat.toFixed(5)}, ${s.lon.toFixed(5)}`),
        s.state === "escalated" && s.escalation_reason ? el("div", { class: "reason" }, s.escalation_reason) : null,
        responders.length ? el("ul", { class: "responders" }, responders) : null,
        el("div", { class: "meta" }, `${t("alerts_sent", { n: s.alerts_sent })} · ${t("needed", { n: s.responders_needed })}`)),
      el("div", { class: "actions" },
        plain(t("act_resolve"), "resolve", () => act(s.id, "resolve")),
        s.state === "escalated" ? null : plain(t("act_escalate"), "escalate", () => act(s.id, "escalate")),
        plain(t("act_assign"), "assign", () => openAssign(s)),
        confirmable(t("act_cancel"), "cancel")));
    return node;
  }

  // One responder: role (protocol 1.1), then where they are; an arrival the engine has not
  // verified (an "I'm here" with no position near the scene) is marked as such.
  function responderItem(r) {
    const role = r.role === "backup" ? "backup" : r.role === "primary" ? "primary" : null;
    const unverified = Boolean(r.arrived_at) && r.verified === false;
    const cls = r.arrived_at ? (unverified ? "arrived unverified" : "arrived")
      : r.released ? "released" : r.overdue ? "overdue" : "";
    let where = r.arrived_at ? `${t("arrived")} ${hhmm(r.arrived_at)}` : `${t("accepted")} ${hhmm(r.accepted_at)}`;
    if (!r.arrived_at && r.released) where += ` · ${t("released")}`;
    else if (!r.arrived_at && r.overdue) where += ` · ${t("overdue")}`;
    return el("li", { class: cls, "data-vid": r.volunteer_id, "data-role": role, "data-verified": r.arrived_at && r.verified !== undefined ? String(r.verified) : null },
      role ? el("span", { class: `role role-${role}`, title: t(`role_${role}_title`) }, t(`role_${role}`)) : null,
      `${r.volunteer_id} · ${t("eta")} ${mmss(r.eta_s)} · ${where}`,
      r.arrived_at && r.verified === true ? el("span", { class: "check ok", title: t("verified") }, ` ✓ ${t("verified")}`) : null,
      unverified ? el("span", { class: "check unverified", title: t("unverified_title") }, ` ? ${t("unverified")}`) : null);
  }

  function tickClocks() {
    for (const [id, row] of rows) {
      const s = open.get(id);
      if (s) paintClock(row.node.querySelector(".clock"), s);
    }
    $("clock").textContent = new Date(now()).toLocaleTimeString(lang === "zh" ? "zh-CN" : "en-GB", { hour12: false });
  }

  // ------------------------------------------------------------------ assign

  let assignFor = null;
  function openAssign(s) {
    assignFor = s.id;
    $("assign-for").textContent = `${t("assign_for", { id: s.id })} · ${s.address || ""}`;
    const list = $("assign-list");
    list.replaceChildren();
    const dist = (v) => Math.hypot(v.lat - s.lat, (v.lon - s.lon) * Math.cos((s.lat * Math.PI) / 180));
    volunteers.filter((v) => v.status === "available").sort((a, b) => dist(a) - dist(b)).slice(0, 30)
      .forEach((v) => list.append(el("option", { value: v.id }, `${Math.round(dist(v) * 111195)} m · ${v.mode}`)));
    $("assign-vid").value = "";
    $("assign-dialog").showModal();
    $("assign-vid").focus();
  }
  $("assign-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const vid = $("assign-vid").value.trim();
    $("assign-dialog").close();
    if (assignFor && vid) act(assignFor, "assign", { volunteer_id: vid });
  });
  $("assign-cancel").addEventListener("click", () => $("assign-dialog").close());

  // ------------------------------------------------------------------ detail

  function select(id) {
    selected = id;
    scheduleRender();
    refreshDetail();
  }
  $("detail-close").addEventListener("click", () => { selected = null; $("detail").hidden = true; scheduleRender(); });

  function eventName(type) {
    const key = `ev_${type}`;
    return TEXT[lang][key] || TEXT.en[key] ? t(key) : type;
  }

  function eventDetail(e) {
    const parts = [e.volunteer_id, e.role ? t(`role_${e.role}`) : null, e.by ? `${t("by")} ${e.by}` : null, e.reason];
    if (e.type === "arrived" && e.verified === false) parts.push(t("unverified"));
    if (e.type === "target_missed" && e.claimed_arrival) parts.push(t("ev_claimed"));
    if (e.type === "target_missed" && e.target_s) parts.push(mmss(e.target_s));
    return parts.filter(Boolean).join(" · ");
  }

  async function refreshDetail() {
    if (!selected) return;
    const id = selected;
    let d;
    try { d = await read(`/api/incidents/${encodeURIComponent(id)}`); } catch (_) { return; }
    if (selected !== id) return;
    const times = Object.entries(d.times).filter(([, v]) => v)
      .map(([k, v]) => el("tr", {}, el("td", {}, t(`t_${k}`)), el("td", {}, dayTime(v))));
    const alerts = d.alerts.map((a) => el("tr", {},
      el("td", {}, a.volunteer_id), el("td", {}, `#${a.wave}`), el("td", {}, a.status),
      el("td", {}, `${t("eta")} ${mmss(a.eta_s)}`), el("td", {}, `${Math.round(a.distance_m)} m`)));
    const events = d.events.map((e) => el("tr", { class: `ev-${e.type}` },
      el("td", {}, hhmm(e.at)), el("td", {}, e.type === "state" ? `${e.from} → ${e.to}` : eventName(e.type)),
      el("td", {}, eventDetail(e))));
    $("detail-body").replaceChildren(...[
      el("h3", {}, `${t(`kind_${d.kind}`)} · ${t(`state_${d.state}`)}`),
      el("div", { class: "hint" }, `${d.id} · ${d.cell || ""} · P${d.priority}`),
      el("div", {}, d.address || ""), d.description ? el("div", { class: "hint" }, d.description) : null,
      d.escalation_reason ? el("div", { class: "reason" }, d.escalation_reason) : null,
      d.end_reason ? el("div", { class: "hint" }, d.end_reason) : null,
      el("h4", {}, t("detail_times")), el("table", { class: "times" }, times),
      alerts.length ? el("h4", {}, t("detail_alerts")) : null, alerts.length ? el("table", {}, alerts) : null,
      el("h4", {}, t("detail_events")), el("table", {}, events)].filter(Boolean));
    $("detail").hidden = false;
  }

  // ------------------------------------------------------------------ history

  function historySince() {
    const v = $("history-range").value;
    if (v === "today") {
      // The operators' day: China Standard Time (UTC+8, no DST).
      const cst = new Date(now() + 8 * 3600e3);
      return Date.UTC(cst.getUTCFullYear(), cst.getUTCMonth(), cst.getUTCDate()) / 1000 - 8 * 3600;
    }
    return now() / 1000 - Number(v);
  }

  async function loadHistory() {
    const since = new Date(historySince() * 1000).toISOString();
    try {
      const body = await read(`/api/incidents?since=${encodeURIComponent(since)}`);
      history.clear();
      for (const s of body.incidents) if (ENDED.has(s.state)) history.set(s.id, s);
      historyLoaded = true;
      renderHistory();
    } catch (err) { toast(err.message, true); }
  }

  function renderHistory() {
    const items = [...history.values()].sort((a, b) => Date.parse(b.reported_at) - Date.parse(a.reported_at));
    $("history-empty").hidden = items.length > 0;
    $("history").replaceChildren(...items.map((s) => el("tr", { "data-id": s.id, onclick: () => select(s.id) },
      el("td", {}, dayTime(s.reported_at)), el("td", {}, t(`kind_${s.kind}`)), el("td", {}, s.address || s.id),
      el("td", {}, s.cell || ""), el("td", {}, t(`state_${s.state}`)),
      el("td", { class: s.within_target === null ? "" : s.within_target ? "intime" : "late" }, mmss(s.time_to_arrival_s)))));
  }
  $("history-range").addEventListener("change", loadHistory);
  $("history-refresh").addEventListener("click", loadHistory);

  // ------------------------------------------------------------------ tabs and report form

  function showTab(name) {
    for (const b of document.querySelectorAll(".tabs button")) b.classList.toggle("active", b.dataset.tab === name);
    for (const tab of ["queue", "history", "report"]) $(`tab-${tab}`).hidden = tab !== name;
    if (name === "history" && !historyLoaded) loadHistory();
  }
  for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));

  function fillKinds() {
    const select = $("r-kind");
    const value = select.value || "medical";
    select.replaceChildren(...KINDS.map((k) => el("option", { value: k }, t(`kind_${k}`))));
    select.value = value;
  }

  $("report-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const result = $("report-result");
    const body = { kind: $("r-kind").value, lat: Number($("r-lat").value), lon: Number($("r-lon").value) };
    if ($("r-priority").value) body.priority = Number($("r-priority").value);
    if ($("r-address").value.trim()) body.address = $("r-address").value.trim();
    if ($("r-description").value.trim()) body.description = $("r-description").value.trim();
    const n = Number($("r-responders").value || 1);
    if (n > 1) body.responders = n;
    try {
      const state = await operate("POST", "/api/incidents", body);
      result.className = "result";
      result.textContent = t("reported_ok", { id: state.id || "" });
      upsert(state);
      $("r-address").value = ""; $("r-description").value = "";
      $("g-pick").replaceChildren();
      showTab("queue");
      select(state.id);
    } catch (err) {
      result.className = "result err";
      result.textContent = err.message;
    }
  });

  // ------------------------------------------------------------------ map

  function makeProjection(bounds) {
    const [minLon, minLat, maxLon, maxLat] = bounds;
    const k = Math.cos((((minLat + maxLat) / 2) * Math.PI) / 180);
    const scale = 10000; // viewBox units per degree of latitude
    return {
      width: (maxLon - minLon) * k * scale,
      height: (maxLat - minLat) * scale,
      x: (lon) => (lon - minLon) * k * scale,
      y: (lat) => (maxLat - lat) * scale,
      lon: (x) => minLon + x / (k * scale),
      lat: (y) => maxLat - y / scale,
      unit: scale / 111195, // viewBox units per metre
    };
  }

  function ringsPath(geometry) {
    const polys = geometry.type === "Polygon" ? [geometry.coordinates] : geometry.coordinates;
    let d = "";
    for (const poly of polys) for (const ring of poly) {
      ring.forEach(([lon, lat], i) => {
        d += `${i ? "L" : "M"}${projection.x(lon).toFixed(1)} ${projection.y(lat).toFixed(1)}`;
      });
      d += "Z";
    }
    return d;
  }

  function bbox(features) {
    let b = [Infinity, Infinity, -Infinity, -Infinity];
    const visit = (c) => {
      if (typeof c[0] === "number") {
        b = [Math.min(b[0], c[0]), Math.min(b[1], c[1]), Math.max(b[2], c[0]), Math.max(b[3], c[1])];
      } else c.forEach(visit);
    };
    features.forEach((f) => visit(f.geometry.coordinates));
    return b;
  }

  const cellPaths = new Map();
  async function loadArea() {
    const area = await read("/api/area");
    const outline = area.features.filter((f) => f.properties.kind === "outline");
    projection = makeProjection(bbox(outline));
    const pad = 12;
    $("map").setAttribute("viewBox", `${-pad} ${-pad} ${projection.width + 2 * pad} ${projection.height + 2 * pad}`);
    const cells = $("g-cells");
    cells.replaceChildren();
    for (const f of area.features) {
      if (f.properties.kind !== "cell") continue;
      const path = svg("path", { d: ringsPath(f.geometry), "fill-rule": "evenodd", fill: "none", "data-cell": f.properties.id });
      const title = svg("title");
      title.textContent = f.properties.id;
      path.append(title);
      cells.append(path);
      cellPaths.set(f.properties.id, path);
    }
    $("g-outline").replaceChildren(...outline.map((f) => svg("path", { d: ringsPath(f.geometry) })));
    if (outline[0]) $("area-name").textContent = outline[0].properties.name || "";
  }

  const COVERAGE_BANDS = [
    [60, "#2f9e5b", "legend_60"],
    [120, "#9bd27a", "legend_120"],
    [180, "#f3df7a", "legend_180"],
    [Infinity, "#f09a5b", "legend_late"],
  ];
  const NONE_COLOUR = "#d9534f";
  function coverageColour(eta) {
    if (eta === null || eta === undefined) return NONE_COLOUR;
    return COVERAGE_BANDS.find(([limit]) => eta <= limit)[1];
  }

  function renderLegend() {
    const items = COVERAGE_BANDS.map(([, c, k]) => el("span", {}, el("i", { style: `background:${c}` }), t(k)));
    items.push(el("span", {}, el("i", { style: `background:${NONE_COLOUR}` }), t("legend_none")));
    $("legend").replaceChildren(...items);
  }

  async function loadCoverage() {
    if (!projection) return;
    const skill = $("coverage-skill").value;
    try {
      coverage = await read(`/api/coverage${skill ? `?skill=${encodeURIComponent(skill)}` : ""}`);
    } catch (_) { return; }
    target = coverage.target_s || target;
    renderCoverage();
  }

  function renderCoverage() {
    const on = $("layer-coverage").checked && coverage;
    for (const [id, path] of cellPaths) {
      path.setAttribute("fill", "none");
      path.setAttribute("fill-opacity", "0.5");
      path.firstChild.textContent = id;
    }
    if (!on) { $("cov-summary").textContent = ""; return; }
    for (const c of coverage.cells) {
      const path = cellPaths.get(c.cell);
      if (!path) continue;
      path.setAttribute("fill", coverageColour(c.eta_s));
      path.firstChild.textContent = `${c.cell} · ${c.eta_s === null ? t("legend_none") : `${t("eta")} ${mmss(c.eta_s)}`}`;
    }
    $("cov-summary").textContent = t("cov_summary", { a: coverage.cells_within_target, b: coverage.cells_total });
  }

  async function loadVolunteers() {
    if (!projection) return;
    try { volunteers = (await read("/api/volunteers")).volunteers; } catch (_) { return; }
    renderVolunteers();
  }

  // Map units per screen pixel: marks keep their size on screen whatever the map's size.
  function upp() {
    const box = $("map").getBoundingClientRect();
    const vb = $("map").viewBox.baseVal;
    if (!box.width || !box.height || !vb || !vb.width) return 1;
    return Math.max(vb.width / box.width, vb.height / box.height);
  }

  function renderVolunteers() {
    const g = $("g-volunteers");
    g.replaceChildren();
    if (!$("layer-volunteers").checked || !projection) return;
    const r = 3 * upp();
    for (const v of volunteers) {
      const dot = svg("circle", {
        cx: projection.x(v.lon).toFixed(1), cy: projection.y(v.lat).toFixed(1),
        r: (v.status === "assigned" ? r * 1.5 : r).toFixed(1), class: `vol ${v.status}`,
      });
      const title = svg("title");
      title.textContent = `${v.id} · ${v.mode} · ${v.skills.join(", ")}${v.incident_id ? ` → ${v.incident_id}` : ""}`;
      dot.append(title);
      g.append(dot);
    }
  }

  function renderMarkers() {
    const g = $("g-incidents");
    g.replaceChildren();
    if (!projection) return;
    const u = upp();
    const r = 9 * u;
    for (const s of [...open.values()].sort(urgency).reverse()) {
      const x = projection.x(s.lon), y = projection.y(s.lat);
      if (s.state === "escalated" || selected === s.id) {
        g.append(svg("circle", { cx: x, cy: y, r: r * 1.7, class: `ring${selected === s.id ? " sel" : ""}` }));
      }
      const m = svg("circle", { cx: x, cy: y, r, class: `mark p${s.priority}`, "data-id": s.id });
      const title = svg("title");
      title.textContent = `${t(`kind_${s.kind}`)} · ${s.address || s.id} · ${t(`state_${s.state}`)}`;
      m.append(title);
      m.addEventListener("click", (ev) => { ev.stopPropagation(); select(s.id); });
      g.append(m);
      const label = svg("text", {
        x: x + r * 1.9, y: y + r * 0.5, class: "mark-label",
        "font-size": (14 * u).toFixed(1), "stroke-width": (3 * u).toFixed(1),
      });
      label.textContent = t(`kind_${s.kind}`);
      g.append(label);
    }
  }

  $("map").addEventListener("click", (ev) => {
    if (!projection) return;
    const map = $("map");
    const pt = map.createSVGPoint();
    pt.x = ev.clientX; pt.y = ev.clientY;
    const p = pt.matrixTransform(map.getScreenCTM().inverse());
    const lat = projection.lat(p.y), lon = projection.lon(p.x);
    $("r-lat").value = lat.toFixed(6);
    $("r-lon").value = lon.toFixed(6);
    const r = 10 * upp();
    $("g-pick").replaceChildren(
      svg("circle", { cx: p.x, cy: p.y, r, class: "pick" }),
      svg("path", { d: `M${p.x - 2 * r} ${p.y}H${p.x + 2 * r}M${p.x} ${p.y - 2 * r}V${p.y + 2 * r}`, class: "pick" }));
    showTab("report");
  });
  window.addEventListener("resize", () => { renderVolunteers(); renderMarkers(); });
  $("layer-coverage").addEventListener("change", renderCoverage);
  $("coverage-skill").addEventListener("change", loadCoverage);
  $("layer-volunteers").addEventListener("change", renderVolunteers);

  // ------------------------------------------------------------------ figures

  // Open and escalated counts come from the live queue itself: never behind it.
  function renderLiveCounts() {
    const escalated = [...open.values()].filter((s) => s.state === "escalated").length;
    $("f-open").textContent = String(open.size);
    $("f-escalated").textContent = String(escalated);
    $("f-escalated").parentElement.classList.toggle("hot", escalated > 0);
  }

  let figures = null;
  async function loadFigures() {
    try { figures = await read("/api/figures"); } catch (_) { return; }
    target = figures.target_s || target;
    renderFigures();
  }

  // The headline (dispatch/headline.py): of every decided incident that needed a
  // responder, the share with a verified arrival within the target; nobody there is a miss.
  function renderFigures() {
    const f = figures;
    $("f-within-label").textContent = t("fig_within", { s: Math.round(target) });
    if (!f) return;
    $("f-incidents").textContent = String(f.incidents);
    $("f-p50").textContent = mmss(f.p50_time_to_arrival_s);
    $("f-p90").textContent = mmss(f.p90_time_to_arrival_s);
    const share = f.within_target_share;
    $("f-within").textContent = share === null || share === undefined ? "–" : `${Math.round(share * 100)}%`;
    const decided = f.decided ?? null;
    $("f-within-of").textContent = decided === null ? "" : t("fig_within_of", { n: decided });
    $("f-reached").textContent = String(f.reached ?? f.arrived ?? "–");
    const unverified = f.unverified_arrivals || 0;
    $("f-unverified").textContent = unverified ? t("fig_unverified", { n: unverified }) : "";
    $("f-unverified").hidden = !unverified;
    $("f-available").textContent = String(f.available_volunteers);
  }

  // ------------------------------------------------------------------ language

  function applyLanguage() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
    $("lang").textContent = lang === "zh" ? "EN" : "中文";
    document.title = t("title");
    setConn($("conn").dataset.state);
    fillKinds();
    renderOperator();
    renderLegend();
    renderFigures();
    if (coverage) renderCoverage();
    render();
    tickClocks();
  }
  $("lang").addEventListener("click", () => {
    lang = lang === "zh" ? "en" : "zh";
    localStorage.setItem("dispatch.lang", lang);
    applyLanguage();
    if (selected) refreshDetail();
  });

  // ------------------------------------------------------------------ start

  async function start() {
    applyLanguage();
    setConn("connecting");
    try {
      await loadArea();
    } catch (err) {
      toast(err.message, true);
    }
    for (;;) {
      try {
        lastEventId = await loadQueue();
        break;
      } catch (err) {
        setConn("reconnecting");
        await new Promise((r) => setTimeout(r, 2000));
      }
    }
    connect();
    loadFigures(); loadVolunteers(); loadCoverage();
    setInterval(tickClocks, 250);
    // Positions move without incident events: poll the map's layers gently.
    setInterval(loadVolunteers, 5000);
    setInterval(loadCoverage, 10000);
    setInterval(loadFigures, 30000);
    tickClocks();
  }
  window.dispatchPage = { open, history, get lastEventId() { return lastEventId; } };
  start();
})();
