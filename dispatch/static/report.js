// The report page (/report): the district's performance over a period, from
// GET /api/report and GET /api/report/misses (docs/reports.md, docs/api.md).
// No framework, no build step, no CDN: the map and the chart are SVG drawn here.
"use strict";

(() => {
  // ------------------------------------------------------------------ text

  const TEXT = {
    zh: {
      title: "一呼百应 报表", back: "← 调度台", print: "打印", csv: "下载 CSV",
      from: "从", to: "到", preset_7d: "最近 7 天", preset_30d: "最近 30 天", preset_last_month: "上个月",
      group_by: "分组", by_subdistrict: "街道", by_cell: "网格", by_day: "日期", by_kind: "类型", show: "查询",
      loading: "加载中…", loaded: "已更新 {time}",
      map_title: "各网格实际达标率", chart_title: "每日达标率与 P90",
      map_note: "颜色为所选时段内实际在目标时间内核实到场的比例（非实时覆盖）。网格为自动生成，非官方社区边界。",
      table_title: "分组统计", col_group: "分组", col_incidents: "事件", col_reached: "有人到场",
      col_within: "目标内到场率", col_p50: "到场 P50", col_p90: "到场 P90", col_escalated: "升级比例",
      col_alerts: "每起通知数", total: "合计", groups_empty: "此时段内没有已结束的事件",
      no_subdistrict: "未划分街道",
      misses_title: "未达标事件", m_time: "报警时间", m_id: "编号", m_kind: "类型", m_where: "网格 / 街道",
      m_address: "地址", m_reason: "原因", m_tta: "到场用时", misses_empty: "此时段内没有未达标的事件",
      more: "加载更多", shown_of: "显示 {a} / {b} 起", print_shown: "本页列出 {a} / {b} 起未达标事件；完整列表见 CSV 或系统。",
      reason_late_arrival: "到场过晚", reason_unverified_arrival: "到场未核实", reason_no_show: "接受后未到场",
      reason_nobody_accepted: "无人接受", reason_nobody_in_reach: "附近无人可呼叫",
      escalated: "已升级",
      definitions: "定义见 docs/reports.md：只计已结束的事件；取消的事件不计入达标率；只有经核实的到场才算到场；无人到场的事件计为未达标。",
      s_incidents: "事件", s_within: "{s} 秒内到场", s_within_of: "共 {n} 起已判定", s_p50: "到场 P50", s_p90: "到场 P90",
      s_escalated: "升级比例", s_alerts: "每起通知数",
      legend_90: "90% 以上", legend_75: "75% 至 90%", legend_50: "50% 至 75%", legend_25: "25% 至 50%", legend_0: "低于 25%",
      legend_nodata: "无已判定事件", chart_share: "目标内到场率", chart_p90: "到场 P90（秒）", chart_target: "目标 {s} 秒",
      chart_empty: "此时段内没有数据", cell_tip: "{cell}：{share}（{n} 起已判定）", cell_tip_none: "{cell}：无已判定事件",
      limited: "未配置归档数据库（dispatch run --postgres）：历史仅限 Redis 保留的事件（结束后 30 天）。",
      truncated: "事件过多，仅统计了前 50,000 起。", subdistrict_note: "尚未配置街道边界：所有事件归入「未划分街道」。请按网格查看地点。",
      err_network: "无法连接调度引擎", err_400: "查询有误：{msg}", err_503: "数据库暂时不可用，请稍后再试",
      err_other: "出错了（{status}）", err_dates: "开始日期须早于或等于结束日期",
      auth_title: "需要读取令牌", auth_token: "令牌", ok: "确定", token_wrong: "令牌无效，请重新输入",
      print_title: "{area} · {from} 至 {to} · 按{by}",
      kind_cardiac_arrest: "心脏骤停", kind_medical: "急症", kind_fall: "跌倒", kind_fire: "火情",
      kind_dispute: "纠纷", kind_security: "治安", kind_lost_person: "走失", kind_other: "其他",
    },
    en: {
      title: "Dispatch report", back: "← Control room", print: "Print", csv: "Download CSV",
      from: "From", to: "To", preset_7d: "Last 7 days", preset_30d: "Last 30 days", preset_last_month: "Last month",
      group_by: "Group by", by_subdistrict: "Subdistrict", by_cell: "Grid cell", by_day: "Day", by_kind: "Kind", show: "Show",
      loading: "Loading…", loaded: "Updated {time}",
      map_title: "Within-target share achieved, per cell", chart_title: "Daily within-target share and P90",
      map_note: "Colour: the share of incidents in the period with a verified arrival within the target (not live coverage). Generated grid, not official community boundaries.",
      table_title: "Groups", col_group: "Group", col_incidents: "Incidents", col_reached: "Reached",
      col_within: "Within target", col_p50: "Arrival P50", col_p90: "Arrival P90", col_escalated: "Escalated",
      col_alerts: "Alerts per incident", total: "Total", groups_empty: "No ended incidents in this period",
      no_subdistrict: "No subdistrict",
      misses_title: "Incidents that missed the target", m_time: "Reported", m_id: "Id", m_kind: "Kind", m_where: "Cell / subdistrict",
      m_address: "Address", m_reason: "Reason", m_tta: "Time to arrival", misses_empty: "No incident missed the target in this period",
      more: "Load more", shown_of: "Showing {a} of {b}", print_shown: "This page lists {a} of {b} misses; the full list is in the CSV or the system.",
      reason_late_arrival: "Late arrival", reason_unverified_arrival: "Arrival not verified", reason_no_show: "Accepted, no show",
      reason_nobody_accepted: "Nobody accepted", reason_nobody_in_reach: "Nobody in reach",
      escalated: "Escalated",
      definitions: "Definitions in docs/reports.md: ended incidents only; cancelled ones do not count towards the share; only verified arrivals count; an incident nobody reached is a miss.",
      s_incidents: "Incidents", s_within: "On scene within {s} s", s_within_of: "of {n} decided", s_p50: "Arrival P50", s_p90: "Arrival P90",
      s_escalated: "Escalated", s_alerts: "Alerts per incident",
      legend_90: "≥90 %", legend_75: "75–90 %", legend_50: "50–75 %", legend_25: "25–50 %", legend_0: "<25 %",
      legend_nodata: "No decided incident", chart_share: "Within-target share", chart_p90: "Arrival P90 (s)", chart_target: "Target {s} s",
      chart_empty: "No data in this period", cell_tip: "{cell}: {share} ({n} decided)", cell_tip_none: "{cell}: no decided incident",
      limited: "No archive is configured (dispatch run --postgres): history is limited to what Redis keeps (30 days after an incident ends).",
      truncated: "Too many incidents: only the first 50,000 were counted.", subdistrict_note: "No subdistrict boundaries are configured: every incident is under \"No subdistrict\". Use grid cells for places.",
      err_network: "Cannot reach the dispatch engine", err_400: "Bad query: {msg}", err_503: "The database is unavailable; try again shortly",
      err_other: "Something went wrong ({status})", err_dates: "The start date must be on or before the end date",
      auth_title: "Read token needed", auth_token: "Token", ok: "OK", token_wrong: "The token is not valid; enter it again",
      print_title: "{area} · {from} to {to} · by {by}",
      kind_cardiac_arrest: "Cardiac arrest", kind_medical: "Medical", kind_fall: "Fall", kind_fire: "Fire",
      kind_dispute: "Dispute", kind_security: "Security", kind_lost_person: "Lost person", kind_other: "Other",
    },
  };

  let lang = localStorage.getItem("dispatch.lang") || "zh";
  const t = (key, vars) => {
    let s = (TEXT[lang] && TEXT[lang][key]) || TEXT.en[key] || key;
    for (const [k, v] of Object.entries(vars || {})) s = s.replace(`{${k}}`, () => String(v));
    return s;
  };
  const has = (key) => Boolean(TEXT[lang][key] || TEXT.en[key]);

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
    return node;
  };
  const SVG_NS = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs, text) => {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  };

  const pct = (x) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(1)}%`);
  const mmss = (s) => {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    s = Math.round(s);
    return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  };
  const num = (x, d) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
  const loc = () => (lang === "zh" ? "zh-CN" : "en-GB");
  // Times in the operators' zone (China Standard Time), whatever the browser's.
  const cst = (iso) => new Date(iso).toLocaleString(loc(), {
    timeZone: "Asia/Shanghai", hour12: false, month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
  });

  // ------------------------------------------------------------------ API

  const session = {
    get token() { return sessionStorage.getItem("dispatch.token") || ""; },
    set token(v) { if (v) sessionStorage.setItem("dispatch.token", v); else sessionStorage.removeItem("dispatch.token"); },
  };

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function get(path) {
    const headers = { Accept: "application/json" };
    if (session.token) headers.Authorization = `Bearer ${session.token}`;
    let response;
    try {
      response = await fetch(path, { headers, cache: "no-store" });
    } catch (err) {
      throw new ApiError(-1, String(err));
    }
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok) throw new ApiError(response.status, (data && data.error) || response.statusText);
    return data;
  }

  // Reading is open unless the engine has a read token; then ask for it (or the operator's).
  let authWaiting = null;
  async function read(path) {
    for (;;) {
      try {
        return await get(path);
      } catch (err) {
        if (err.status !== 401 && err.status !== 403) throw err;
        await askToken(err.status === 403 ? t("token_wrong") : "");
      }
    }
  }
  function askToken(message) {
    if (!authWaiting) {
      authWaiting = new Promise((resolve, reject) => {
        // Escape closes the dialog: this query stops; the next one asks again.
        $("auth-dialog").oncancel = () => {
          authWaiting = null;
          reject(new ApiError(401, t("auth_title")));
        };
        $("auth-error").textContent = message;
        $("auth-error").hidden = !message;
        $("auth-token").value = "";
        $("auth-dialog").showModal();
        $("auth-form").onsubmit = (ev) => {
          ev.preventDefault();
          const token = $("auth-token").value.trim();
          if (!token) return;
          session.token = token;
          $("auth-dialog").close();
          authWaiting = null;
          resolve();
        };
      });
    }
    return authWaiting;
  }

  function errorText(err) {
    if (!(err instanceof ApiError) || err.status === -1) return t("err_network");
    if (err.status === 401 || err.status === 403) return t("auth_title");
    if (err.status === 400) return t("err_400", { msg: err.message });
    if (err.status === 503) return t("err_503");
    return lang === "en" && err.message ? err.message : t("err_other", { status: err.status });
  }

  // ------------------------------------------------------------------ the period

  // Dates are the operators' calendar days (UTC+08:00); "to" is included.
  const DAY_MS = 86_400_000;
  const todayCst = () => new Date(Date.now() + 8 * 3_600_000).toISOString().slice(0, 10);
  const addDays = (day, n) => new Date(Date.parse(`${day}T00:00:00Z`) + n * DAY_MS).toISOString().slice(0, 10);
  const bound = (day) => `${day}T00:00:00+08:00`;

  function preset(name) {
    const today = todayCst();
    if (name === "7d") return [addDays(today, -6), today];
    if (name === "30d") return [addDays(today, -29), today];
    const first = `${today.slice(0, 7)}-01`; // last month: its first to its last day
    const lastDay = addDays(first, -1);
    return [`${lastDay.slice(0, 7)}-01`, lastDay];
  }

  function period() {
    const from = $("from").value, to = $("to").value;
    if (!from || !to || from > to) return null;
    return { from, to, by: $("by").value };
  }

  const qs = (params) => Object.entries(params).map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join("&");

  // ------------------------------------------------------------------ state

  let area = null;
  let projection = null;
  const cellPaths = new Map();
  let report = null; // the chosen grouping
  let byCell = null;
  let byDay = null;
  let misses = [];
  let missesAnswer = null;
  let loadedAt = null;
  let generation = 0;
  const PAGE = 100;

  async function load() {
    const p = period();
    if (!p) { status(t("err_dates"), true); return; }
    history.replaceState(null, "", `?${qs(p)}`);
    const mine = ++generation;
    status(t("loading"));
    const range = { from: bound(p.from), to: bound(addDays(p.to, 1)) };
    updateCsvLink(range, p.by);
    try {
      if (!area) await loadArea();
      const main = await read(`/api/report?${qs({ ...range, by: p.by })}`);
      const cells = p.by === "cell" ? main : await read(`/api/report?${qs({ ...range, by: "cell" })}`);
      const days = p.by === "day" ? main : await read(`/api/report?${qs({ ...range, by: "day" })}`);
      const first = await read(`/api/report/misses?${qs({ ...range, limit: PAGE })}`);
      if (mine !== generation) return;
      report = main; byCell = cells; byDay = days; missesAnswer = first; misses = first.misses;
      loadedAt = new Date();
      renderAll();
    } catch (err) {
      if (mine === generation) status(errorText(err), true);
    }
  }

  async function loadMore() {
    if (!missesAnswer || missesAnswer.next_offset === null) return;
    const p = period();
    if (!p) return;
    const mine = generation;
    const range = { from: bound(p.from), to: bound(addDays(p.to, 1)) };
    try {
      const next = await read(`/api/report/misses?${qs({ ...range, limit: PAGE, offset: missesAnswer.next_offset })}`);
      if (mine !== generation) return;
      missesAnswer = next;
      misses = misses.concat(next.misses);
      renderMisses();
    } catch (err) { status(errorText(err), true); }
  }

  function status(text, bad) {
    $("status").textContent = text;
    $("status").classList.toggle("err", Boolean(bad));
  }

  function updateCsvLink(range, by) {
    const params = { ...range, by, format: "csv" };
    // A link cannot send a header: the read token goes as ?access_token= (docs/api.md).
    if (session.token) params.access_token = session.token;
    $("csv").href = `/api/report?${qs(params)}`;
  }

  // ------------------------------------------------------------------ rendering

  function groupLabel(by, g) {
    if (by === "kind") return has(`kind_${g}`) ? t(`kind_${g}`) : g;
    if (by === "subdistrict" && (g === null || g === "")) return t("no_subdistrict");
    return g === null ? "–" : g;
  }

  function renderAll() {
    if (!report) return;
    status(t("loaded", { time: loadedAt.toLocaleTimeString(loc(), { hour12: false }) }));
    renderNotes();
    renderSummary();
    renderTable();
    renderMap();
    renderChart();
    renderMisses();
    renderPrintTitle();
  }

  function renderNotes() {
    const notes = [];
    if (report.limited) notes.push(el("p", { class: "notice", id: "note-limited" }, t("limited")));
    if (report.truncated) notes.push(el("p", { class: "notice" }, t("truncated")));
    if (report.by === "subdistrict" && report.note && /no subdistrict boundaries/.test(report.note)) {
      notes.push(el("p", { class: "notice", id: "note-subdistrict" }, t("subdistrict_note")));
    }
    $("notes").replaceChildren(...notes);
  }

  function renderSummary() {
    const total = report.total;
    const target = Math.round(report.target_s);
    const fig = (id, value, label, sub) => el("div", { class: "fig", id },
      el("span", { class: "v" }, value), el("span", { class: "l" }, label), sub ? el("span", { class: "s" }, sub) : null);
    $("summary").replaceChildren(
      fig("s-incidents", String(total.incidents), t("s_incidents")),
      fig("s-within", pct(total.within_target_share), t("s_within", { s: target }), t("s_within_of", { n: total.decided })),
      fig("s-p50", mmss(total.p50_s), t("s_p50")),
      fig("s-p90", mmss(total.p90_s), t("s_p90")),
      fig("s-escalated", pct(total.escalated_share), t("s_escalated")),
      fig("s-alerts", num(total.alerts_per_incident, 2), t("s_alerts")),
    );
  }

  function cellsOf(r) {
    return [
      r.incidents, r.reached, pct(r.within_target_share), mmss(r.p50_s), mmss(r.p90_s),
      pct(r.escalated_share), num(r.alerts_per_incident, 2),
    ].map((v) => el("td", { class: "n" }, String(v)));
  }

  function renderTable() {
    $("th-group").textContent = t(`by_${report.by}`);
    $("groups").replaceChildren(...report.groups.map((g) => el("tr", { "data-group": g.group === null ? "" : g.group },
      el("th", { scope: "row" }, groupLabel(report.by, g.group)), cellsOf(g))));
    $("total").replaceChildren(el("tr", {}, el("th", { scope: "row" }, t("total")), cellsOf(report.total)));
    $("groups-empty").hidden = report.groups.length > 0;
  }

  // The map: the district and its cells as the live page draws them (app.js), coloured
  // by the share achieved in the period.
  function makeProjection(bounds) {
    const [minLon, minLat, maxLon, maxLat] = bounds;
    const k = Math.cos((((minLat + maxLat) / 2) * Math.PI) / 180);
    const scale = 10000;
    return {
      width: (maxLon - minLon) * k * scale,
      height: (maxLat - minLat) * scale,
      x: (lon) => (lon - minLon) * k * scale,
      y: (lat) => (maxLat - lat) * scale,
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

  async function loadArea() {
    area = await read("/api/area");
    const outline = area.features.filter((f) => f.properties.kind === "outline");
    projection = makeProjection(bbox(outline));
    const pad = 12;
    $("map").setAttribute("viewBox", `${-pad} ${-pad} ${projection.width + 2 * pad} ${projection.height + 2 * pad}`);
    cellPaths.clear();
    const cells = [];
    for (const f of area.features) {
      if (f.properties.kind !== "cell") continue;
      const path = svg("path", { d: ringsPath(f.geometry), "fill-rule": "evenodd", "data-cell": f.properties.id });
      path.append(svg("title", {}, f.properties.id));
      cells.push(path);
      cellPaths.set(f.properties.id, path);
    }
    $("g-cells").replaceChildren(...cells);
    const subs = area.features.filter((f) => f.properties.kind === "subdistrict");
    $("g-subdistricts").replaceChildren(...subs.map((f) => svg("path", { d: ringsPath(f.geometry) },
      undefined)));
    $("g-outline").replaceChildren(...outline.map((f) => svg("path", { d: ringsPath(f.geometry) })));
    if (outline[0]) $("area-name").textContent = outline[0].properties.name || "";
  }

  const SHARE_BANDS = [
    [0.9, "#2f9e5b", "legend_90"],
    [0.75, "#9bd27a", "legend_75"],
    [0.5, "#f3df7a", "legend_50"],
    [0.25, "#f09a5b", "legend_25"],
    [-1, "#d9534f", "legend_0"],
  ];
  const shareColour = (share) => SHARE_BANDS.find(([lo]) => share >= lo)[1];

  function renderMap() {
    const found = new Map((byCell ? byCell.groups : []).map((g) => [g.group, g]));
    for (const [id, path] of cellPaths) {
      const g = found.get(id);
      const share = g ? g.within_target_share : null;
      path.setAttribute("fill", share === null ? "none" : shareColour(share));
      path.setAttribute("data-share", share === null ? "" : String(share));
      path.firstChild.textContent = share === null ? t("cell_tip_none", { cell: id })
        : t("cell_tip", { cell: id, share: pct(share), n: g.decided });
    }
    const items = SHARE_BANDS.map(([, c, k]) => el("span", {}, el("i", { style: `background:${c}` }), t(k)));
    items.push(el("span", {}, el("i", { class: "nodata" }), t("legend_nodata")));
    $("legend").replaceChildren(...items);
  }

  // The chart: the within-target share (left axis, %) and P90 (right axis, s) per day.
  function renderChart() {
    const box = $("chart");
    const rows = (byDay ? byDay.groups : []).filter((g) => g.group);
    const p = period();
    if (!p || !rows.length) { box.replaceChildren(el("p", { class: "empty" }, t("chart_empty"))); $("chart-legend").replaceChildren(); return; }
    const days = [];
    for (let d = p.from; d <= p.to && days.length < 1200; d = addDays(d, 1)) days.push(d);
    const byDate = new Map(rows.map((g) => [g.group, g]));
    const W = 640, H = 260, L = 44, R = 48, T = 12, B = 30;
    const iw = W - L - R, ih = H - T - B;
    const target = report.target_s || 180;
    const p90max = Math.max(target * 1.5, ...rows.map((g) => g.p90_s || 0));
    const yMax = Math.ceil(p90max / 60) * 60;
    const x = (i) => L + (days.length === 1 ? iw / 2 : (i * iw) / (days.length - 1));
    const yShare = (s) => T + ih * (1 - s);
    const ySec = (s) => T + ih * (1 - s / yMax);
    const c = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": t("chart_title"), class: "chart-svg" });
    for (const s of [0, 0.25, 0.5, 0.75, 1]) {
      c.append(svg("line", { x1: L, x2: W - R, y1: yShare(s), y2: yShare(s), class: "grid" }));
      c.append(svg("text", { x: L - 6, y: yShare(s) + 4, class: "axis share", "text-anchor": "end" }, `${s * 100}%`));
    }
    for (let s = 0; s <= yMax; s += yMax / 4) {
      c.append(svg("text", { x: W - R + 6, y: ySec(s) + 4, class: "axis p90" }, mmss(s)));
    }
    c.append(svg("line", { x1: L, x2: W - R, y1: ySec(target), y2: ySec(target), class: "target" }));
    c.append(svg("text", { x: W - R - 4, y: ySec(target) - 4, class: "axis target-label", "text-anchor": "end" }, t("chart_target", { s: Math.round(target) })));
    const step = Math.max(1, Math.ceil(days.length / 8));
    days.forEach((d, i) => {
      const last = days.length - 1;
      if (i % step === 0 || (i === last && last % step >= step / 2)) {
        c.append(svg("text", { x: x(i), y: H - 10, class: "axis", "text-anchor": "middle" }, d.slice(5)));
      }
    });
    const line = (value, y, cls) => {
      let d = "", pen = false;
      const dots = [];
      days.forEach((day, i) => {
        const g = byDate.get(day);
        const v = g ? value(g) : null;
        if (v === null || v === undefined) { pen = false; return; }
        d += `${pen ? "L" : "M"}${x(i).toFixed(1)} ${y(v).toFixed(1)}`;
        pen = true;
        const dot = svg("circle", { cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: 3, class: cls, "data-day": day });
        dot.append(svg("title", {}, `${day} · ${cls === "share" ? pct(v) : mmss(v)}`));
        dots.push(dot);
      });
      c.append(svg("path", { d, class: `line ${cls}` }), ...dots);
    };
    line((g) => g.within_target_share, yShare, "share");
    line((g) => g.p90_s, ySec, "p90");
    box.replaceChildren(c);
    $("chart-legend").replaceChildren(
      el("span", {}, el("i", { class: "swatch share" }), t("chart_share")),
      el("span", {}, el("i", { class: "swatch p90" }), t("chart_p90")),
    );
  }

  function renderMisses() {
    if (!missesAnswer) return;
    const a = missesAnswer;
    $("reasons").replaceChildren(...Object.entries(a.by_reason).filter(([, n]) => n > 0)
      .map(([r, n]) => el("span", { class: `chip r-${r}`, "data-reason": r }, `${t(`reason_${r}`)} ${n}`)));
    $("misses").replaceChildren(...misses.map((m) => el("tr", { "data-id": m.id, "data-reason": m.reason },
      el("td", {}, cst(m.reported_at)),
      el("td", { class: "id" }, m.id),
      el("td", {}, has(`kind_${m.kind}`) ? t(`kind_${m.kind}`) : m.kind),
      el("td", {}, [m.cell, m.subdistrict].filter(Boolean).join(" / ")),
      el("td", { class: "addr" }, m.address || ""),
      el("td", {}, el("span", { class: `chip r-${m.reason}` }, t(`reason_${m.reason}`)),
        m.escalated ? el("span", { class: "esc" }, ` ${t("escalated")}`) : null),
      el("td", { class: "n" }, mmss(m.time_to_arrival_s)),
    )));
    $("misses-empty").hidden = misses.length > 0;
    $("misses-shown").textContent = a.total ? t("shown_of", { a: misses.length, b: a.total }) : "";
    $("misses-more").hidden = a.next_offset === null;
    $("misses-print-note").textContent = misses.length < a.total ? t("print_shown", { a: misses.length, b: a.total }) : "";
  }

  function renderPrintTitle() {
    const p = period();
    if (!p) return;
    $("print-period").textContent = t("print_title", {
      area: $("area-name").textContent, from: p.from, to: p.to, by: t(`by_${p.by}`),
    });
  }

  // ------------------------------------------------------------------ language

  function applyLanguage() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    document.title = lang === "zh" ? "报表 · 一呼百应" : "Report · Dispatch";
    $("lang").textContent = lang === "zh" ? "EN" : "中文";
    for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
    renderAll();
  }

  // ------------------------------------------------------------------ start

  $("lang").addEventListener("click", () => {
    lang = lang === "zh" ? "en" : "zh";
    localStorage.setItem("dispatch.lang", lang);
    applyLanguage();
  });
  $("print").addEventListener("click", () => window.print());
  $("controls").addEventListener("submit", (ev) => { ev.preventDefault(); load(); });
  $("by").addEventListener("change", () => load());
  for (const b of document.querySelectorAll("[data-preset]")) {
    b.addEventListener("click", () => {
      [$("from").value, $("to").value] = preset(b.dataset.preset);
      load();
    });
  }
  $("misses-more").addEventListener("click", () => loadMore());

  const params = new URLSearchParams(location.search);
  const [defFrom, defTo] = preset("30d");
  const isDay = (v) => /^\d{4}-\d{2}-\d{2}$/.test(v || "");
  $("from").value = isDay(params.get("from")) ? params.get("from") : defFrom;
  $("to").value = isDay(params.get("to")) ? params.get("to") : defTo;
  const by = params.get("by");
  $("by").value = ["subdistrict", "cell", "day", "kind"].includes(by) ? by : "cell";
  applyLanguage();
  load();
})();
