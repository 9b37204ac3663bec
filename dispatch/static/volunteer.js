/* The volunteer app: a phone's browser as a volunteer, speaking the wire protocol
 * (PROTOCOL.md) over MQTT over WebSockets straight to the broker, like a native app.
 *
 * Out:  <root>/volunteers/<id>/status   QoS 1  available | off_duty (+ skills, mode, lat, lon,
 *                                              and protocol 1.1: receipts, max_alerts_per_day,
 *                                              quiet_hours); the Last Will says "offline"
 *       <root>/volunteers/<id>/location QoS 0  every few seconds, only while on duty
 *       <root>/volunteers/<id>/reply    QoS 1  received (at once, protocol 1.1), then
 *                                              accept | decline an alert
 *       <root>/volunteers/<id>/arrived  QoS 1  "I'm here"
 * In:   <root>/volunteers/<id>/alert, .../assignment (QoS 1, never retained)
 *       <root>/incidents/<iid>/state while assigned (retained: our role, and whether the
 *       engine believes our arrival: "verified", protocol 1.1)
 *       <root>/volunteers/<id>/push     QoS 1  this browser's Web Push subscription, after
 *                                              sign-in (this project's addition)
 * Nothing is ever published retained. The broker checks the id and password; the page
 * learns the broker's address from GET /api/volunteer-app, the push key from GET /api/push.
 * The service worker (volunteer-sw.js) keeps the shell offline and shows pushed alerts
 * as notifications; an alert it hands over is answered over HTTP when MQTT is not up.
 */
"use strict";

(() => {
  const LOCATION_EVERY_MS = 5000;
  const LOCATION_EVERY_GUIDED_MS = 2000; // on the way: the engine detects arrival sooner
  const EARTH_M = 6371008.8;
  // Quiet hours are the district's local time: China Standard Time (UTC+8, no DST).
  const DISTRICT_OFFSET_MS = 8 * 3600 * 1000;
  const DAY_MS = 86400 * 1000;
  const BUDGETS = [1, 2, 3, 5, 10, 20];
  const NO_LIMIT = 100; // the protocol's highest budget: how "no limit" is told (see sendStatus)

  const T = {
    zh: {
      conn_online: "在线", conn_connecting: "连接中…", conn_offline: "离线",
      offline_title: "离线：", offline_text: "收不到呼叫。正在自动重连…",
      signin_title: "志愿者登录", signin_lead: "用你的志愿者编号和密码登录，即可接收附近的求助呼叫。",
      vid: "志愿者编号", password: "密码", signin: "登录",
      demo_note: "演示模式：本演示的消息服务器不检查账号，任意编号都可登录，密码可留空。",
      bad_id: "编号只能包含字母、数字、_ 和 -（1–64 位）。",
      auth_failed: "编号或密码不正确，或该账号无权登录。",
      no_broker: "连不上消息服务器：",
      on_duty: "值班中", off_duty: "未值班", locating: "正在获取位置…",
      on_sub: "每 {s} 秒共享位置 · 精度约 {a} 米", off_sub: "未值班时不共享位置，也不会收到呼叫。",
      locating_sub: "请在浏览器弹窗中允许使用位置。",
      go_on: "开始值班", go_off: "结束值班",
      geo_denied: "未获得位置权限。值班需要共享位置，才能把你派往最近的求助者。请在浏览器设置中允许本网站使用位置，然后重试。",
      geo_unavailable: "暂时无法获取位置（{m}）。请到室外或打开 GPS 后重试。",
      geo_insecure: "此浏览器只在 https 或本机地址下提供定位。请通过 https 地址打开本页。",
      geo_missing: "此浏览器不支持定位。",
      mode: "出行方式", walk: "步行", bike: "自行车", ebike: "电动车",
      skills: "技能（登记在案）", skills_hint: "点按修改；值班时会随状态一同上报。",
      no_skills: "（无）",
      privacy: "隐私：只在值班时共享位置；服务端只保存你最新的一个位置，下班即删除，不记录轨迹。",
      limits: "呼叫次数与免打扰",
      budget: "每天最多接收呼叫", budget_none: "不限", budget_n: "{n} 次",
      quiet: "免打扰时段", quiet_from: "从", quiet_to: "到",
      limits_hint: "按北京时间。值班时会随状态一同上报；调度中心在免打扰时段内、或 24 小时内的呼叫已达上限时不会呼叫你。",
      resting_quiet: "休息中：免打扰时段，{t} 前不会收到呼叫。",
      resting_budget: "休息中：24 小时内已收到 {n} 次呼叫，{t} 前不会再呼叫你。",
      signout: "退出登录",
      push: "锁屏通知", push_on: "开启通知",
      push_ok: "已开启：锁屏或切到后台时，呼叫也会以通知的形式到达。",
      push_ask: "开启后，锁屏或切到后台时也能收到呼叫通知。",
      push_denied: "通知已被拒绝。请在浏览器设置中允许本网站的通知。",
      push_unsupported: "此浏览器不支持推送通知（iOS 需先“添加到主屏幕”）。",
      push_off: "调度中心未开启推送通知。",
      push_failed: "推送注册失败：",
      pushed_accepted: "已接受。请登录以接收调度确认和导航。",
      alert_label: "紧急呼叫", distance: "直线距离", eta: "预计到达",
      answer_within: "内请回复（之后呼叫失效）", accept: "接受", decline: "拒绝",
      waiting_title: "已接受，正在确认…", waiting_text: "调度中心正在确认由你前往。请稍候，不要离开本页面。",
      here: "我已到达", here_sent: "已报到达", here_locating: "正在确认位置…",
      role_primary: "你是本次的主要响应者，请尽快前往。",
      role_backup: "你作为后备前往：另有志愿者也在路上。如果别人先到或有人更快赶到，会通知你无需前往。",
      role_now_primary: "你现在是主要响应者。",
      far_title: "你似乎还没到现场",
      far_text: "按手机的定位，你离现场约 {d}（定位精度约 {a} 米）。现在报到达，调度中心会记为「未核实」，直到你的位置显示你在现场附近。",
      far_nofix: "手机还没有你的位置，调度中心无法核实你已到达，会记为「未核实」。",
      far_send: "仍然报到达", far_cancel: "先不报，继续前往",
      check_pending: "已报到达，等待调度中心核实…",
      check_yes: "调度中心已核实：你在现场。",
      check_no: "未核实：调度中心还没有收到你在现场附近的位置。请保持定位开启，位置一到就会核实。",
      open_nav: "用手机导航前往", amap: "高德地图", baidu: "百度地图",
      arrived_title: "已到达现场", arrived_text: "谢谢你！请先确保自身安全，再按需要提供帮助，等待专业救援到来。",
      dist_note: "到现场的直线距离", heading_live: "箭头已按手机朝向校正。",
      heading_north: "箭头以正北为上：请将手机顶部朝北。",
      no_fix: "等待定位…",
      stood_title: "无需前往", back: "返回值班",
      thanks_title: "谢谢你！",
      thanks_resolved: "事件已处理完毕。谢谢你赶到现场并提供帮助！",
      thanks_cancelled: "调度中心已结束这起事件。谢谢你赶到现场！",
      thanks_other: "现场已有足够的人手，你可以离开了。谢谢你赶到现场并提供帮助！",
      compass_on: "启用指南针", compass_denied: "未获得方向权限：箭头以正北为上。",
      nav_mode: "按{mode}路线",
      reason_filled: "已有其他志愿者前往，谢谢你的响应。",
      reason_faster: "有一位能更快赶到的志愿者接替了你，你可以返回了。谢谢你！",
      reason_moved: "事件地点已更改，已重新安排人员。",
      reason_on_scene: "已有志愿者到达现场，你可以返回了。谢谢你！",
      reason_expired: "呼叫已过期，已安排其他人员处理。",
      reason_declined: "你已拒绝这次呼叫。",
      reason_committed: "你已在处理另一起事件。",
      reason_elsewhere: "调度中心已另行安排人员。",
      reason_resolved: "事件已处理完毕，谢谢你！",
      reason_cancelled: "事件已取消，无需前往。",
      reason_merged: "这是同一事件的重复报告，已与另一报告合并。如那里仍需要你，你会收到新的呼叫。",
      reason_other: "调度中心的说明：{r}",
      withdraw: "我无法前往了", wd_title: "确定无法前往？", wd_text: "调度中心会立即另找志愿者代替你。",
      wd_send: "确定，无法前往", wd_cancel: "继续前往", wd_sending: "正在告知调度中心…",
      wd_noreply: "调度中心没有回应。如果确实无法前往，请打电话告知调度中心。",
      call_cr: "致电调度中心",
      withdrawn_title: "已告知调度中心", reason_withdrawn: "调度中心正在另找志愿者。谢谢你及时告知！",
      expired_toast: "呼叫已过期。",
      kinds: { cardiac_arrest: "心脏骤停", medical: "急症", fall: "跌倒", fire: "火情",
        dispute: "纠纷", security: "治安", lost_person: "走失", other: "其他" },
      prio: { 1: "危及生命", 2: "紧急", 3: "一般" },
      skill_names: { first_aid: "急救", patrol: "巡逻", mediation: "调解" },
      min: "分钟", sec: "秒", m: "米", km: "公里", no_address: "（无地址，按方向前往）",
    },
    en: {
      conn_online: "Online", conn_connecting: "Connecting…", conn_offline: "Offline",
      offline_title: "Offline:", offline_text: "alerts cannot reach you. Reconnecting by itself…",
      signin_title: "Volunteer sign-in", signin_lead: "Sign in with your volunteer id and password to receive calls for help nearby.",
      vid: "Volunteer id", password: "Password", signin: "Sign in",
      demo_note: "Demo mode: this demo's broker checks no accounts, so any id works and the password may be empty.",
      bad_id: "The id may only hold letters, digits, _ and - (1–64 characters).",
      auth_failed: "Wrong id or password, or this account may not sign in.",
      no_broker: "Cannot reach the message broker: ",
      on_duty: "On duty", off_duty: "Off duty", locating: "Finding your position…",
      on_sub: "Sharing location every {s} s · accuracy about {a} m", off_sub: "Off duty: no location is shared and no calls come.",
      locating_sub: "Please allow location in the browser's prompt.",
      go_on: "Go on duty", go_off: "Go off duty",
      geo_denied: "Location permission was not given. On duty your location is needed to send you to the nearest person in need. Allow location for this site in the browser settings, then try again.",
      geo_unavailable: "Your position is not available right now ({m}). Step outside or turn on GPS, then try again.",
      geo_insecure: "This browser gives a position only to https or local pages. Open this page by its https address.",
      geo_missing: "This browser cannot give a position.",
      mode: "How you travel", walk: "Walk", bike: "Bike", ebike: "E-bike",
      skills: "Skills on record", skills_hint: "Tap to change; sent with your status while on duty.",
      no_skills: "(none)",
      privacy: "Privacy: your location is shared only on duty; the server keeps only your latest position and forgets it when you go off duty. No track is recorded.",
      limits: "Alert limits and quiet hours",
      budget: "Alerts per day at most", budget_none: "No limit", budget_n: "{n}",
      quiet: "Quiet hours", quiet_from: "from", quiet_to: "to",
      limits_hint: "China time (UTC+8). Sent with your status while on duty: dispatch does not call you in your quiet hours, nor once you have had this many alerts in 24 hours.",
      resting_quiet: "Resting: quiet hours, no calls before {t}.",
      resting_budget: "Resting: {n} alerts in the last 24 hours, no calls before {t}.",
      signout: "Sign out",
      push: "Lock-screen notifications", push_on: "Turn on notifications",
      push_ok: "On: alerts also come as notifications while the screen is locked or the page is in the background.",
      push_ask: "Turn them on to get alerts while the screen is locked or the page is in the background.",
      push_denied: "Notifications are blocked. Allow them for this site in the browser's settings.",
      push_unsupported: "This browser has no push notifications (on iOS, add the page to the home screen first).",
      push_off: "Dispatch has push notifications turned off.",
      push_failed: "Push registration failed: ",
      pushed_accepted: "Accepted. Sign in to get dispatch's go and directions.",
      alert_label: "EMERGENCY CALL", distance: "Distance", eta: "Estimated arrival",
      answer_within: "left to answer", accept: "Accept", decline: "Decline",
      waiting_title: "Accepted, confirming…", waiting_text: "Dispatch is confirming that you go. Please wait and keep this page open.",
      here: "I'm here", here_sent: "Arrival sent", here_locating: "Checking your position…",
      role_primary: "You are the primary responder: please go now.",
      role_backup: "You are going as a BACKUP: another volunteer is on the way too. If they get there first, or someone faster is going, you will be stood down.",
      role_now_primary: "You are now the primary responder.",
      far_title: "You seem not to be there yet",
      far_text: "Your phone places you about {d} from the incident (accuracy about {a} m). If you send \"I'm here\" now, dispatch records it as UNVERIFIED until your position shows you near the scene.",
      far_nofix: "Your phone has no position yet: dispatch cannot check that you are there and records the arrival as UNVERIFIED.",
      far_send: "Send anyway", far_cancel: "Not yet, keep going",
      check_pending: "Arrival sent; waiting for dispatch to confirm…",
      check_yes: "Confirmed: dispatch sees you at the scene.",
      check_no: "Unverified: dispatch has no position of yours near the scene yet. Keep location on; it is confirmed as soon as your position shows you there.",
      open_nav: "Navigate with my phone", amap: "Amap", baidu: "Baidu Maps",
      arrived_title: "You are on scene", arrived_text: "Thank you! Keep yourself safe first, then help as needed until professionals arrive.",
      dist_note: "straight-line distance", heading_live: "The arrow follows the phone's heading.",
      heading_north: "The arrow is drawn with north up: point the top of the phone north.",
      no_fix: "Waiting for position…",
      stood_title: "You are not needed", back: "Back to duty",
      thanks_title: "Thank you!",
      thanks_resolved: "The incident has been dealt with. Thank you for going and helping!",
      thanks_cancelled: "The control room has closed this incident. Thank you for going!",
      thanks_other: "There are enough people on scene now; you may leave. Thank you for going and helping!",
      compass_on: "Turn on the compass", compass_denied: "No permission for the phone's heading: the arrow is drawn with north up.",
      nav_mode: "Route: {mode}",
      reason_filled: "Others are already on their way. Thank you for answering.",
      reason_faster: "A volunteer who will get there sooner is going in your place: you can turn back. Thank you!",
      reason_moved: "The incident's place changed; dispatch is finding people near it again.",
      reason_on_scene: "Others are on scene now; you can turn back. Thank you!",
      reason_expired: "The call expired; others are taking care of it.",
      reason_declined: "You declined this call.",
      reason_committed: "You are already helping at another incident.",
      reason_elsewhere: "The control room has sent someone else.",
      reason_resolved: "The incident has been dealt with. Thank you!",
      reason_cancelled: "The incident was cancelled; no need to go.",
      reason_merged: "This was another report of the same event and has been merged. If you are needed there, a new call will come.",
      reason_other: "From dispatch: {r}",
      withdraw: "I can't go after all", wd_title: "Can't go after all?", wd_text: "The control room will find someone else at once.",
      wd_send: "Yes, I can't go", wd_cancel: "Keep going", wd_sending: "Telling the control room…",
      wd_noreply: "No answer from the control room. If you really cannot go, call the control room.",
      call_cr: "Call the control room",
      withdrawn_title: "The control room knows", reason_withdrawn: "Someone else is being found. Thank you for saying so in time!",
      expired_toast: "The call expired.",
      kinds: { cardiac_arrest: "Cardiac arrest", medical: "Medical", fall: "Fall", fire: "Fire",
        dispute: "Dispute", security: "Security", lost_person: "Lost person", other: "Other" },
      prio: { 1: "Life-threatening", 2: "Urgent", 3: "Routine" },
      skill_names: { first_aid: "First aid", patrol: "Patrol", mediation: "Mediation" },
      min: "min", sec: "s", m: "m", km: "km", no_address: "(no address: follow the arrow)",
    },
  };

  const $ = (id) => document.getElementById(id);
  const store = window.localStorage;
  const session = window.sessionStorage;

  const S = {
    lang: store.getItem("vol.lang") || ((navigator.language || "zh").startsWith("zh") ? "zh" : "en"),
    app: null, // GET /api/volunteer-app
    vid: null,
    client: null,
    conn: "offline",
    everConnected: false,
    duty: "off", // off | locating | on
    mode: store.getItem("vol.mode") || "walk",
    skills: JSON.parse(store.getItem("vol.skills") || '["first_aid"]'),
    // Protocol 1.1 settings, remembered on this phone: null budget = no limit; quiet hours
    // {on, from: "HH:MM", to: "HH:MM"} in the district's local time.
    budget: readBudget(store.getItem("vol.budget")),
    quiet: readQuiet(store.getItem("vol.quiet")),
    alertTimes: readTimes(store.getItem("vol.alerts")), // when alerts came, for "resting"
    fix: null, // {lat, lon, accuracy, at}
    watchId: null,
    timer: null,
    heading: null,
    alert: null, // the alert on screen
    job: null, // {incident_id, alert_id, lat, lon, address, kind, priority, role, arrived, verified}
    audio: null,
    beepTimer: null,
    wakeLock: null,
    push: "", // "" (not known yet) | off | ask | ok | denied | unsupported | failed (setupPush)
    pushKey: null, // the engine's VAPID public key (GET /api/push)
    pushError: "",
  };

  function readBudget(raw) {
    const n = Number(raw);
    return raw && Number.isInteger(n) && n >= 1 && n <= 100 ? n : null;
  }

  function readQuiet(raw) {
    const hhmm = /^([01]\d|2[0-3]):[0-5]\d$/;
    try {
      const q = JSON.parse(raw || "null");
      if (q && hhmm.test(q.from) && hhmm.test(q.to)) return { on: Boolean(q.on), from: q.from, to: q.to };
    } catch { /* forget a broken setting */ }
    return { on: false, from: "22:00", to: "07:00" };
  }

  function readTimes(raw) {
    try {
      const list = JSON.parse(raw || "[]");
      return Array.isArray(list) ? list.filter((x) => typeof x === "number") : [];
    } catch {
      return [];
    }
  }

  const t = (key, vars) => {
    let s = T[S.lang][key];
    if (s === undefined) s = key;
    for (const [k, v] of Object.entries(vars || {})) s = s.replace(`{${k}}`, v);
    return s;
  };

  // ------------------------------------------------------------------ rendering

  function applyLang() {
    document.documentElement.lang = S.lang === "zh" ? "zh-CN" : "en";
    $("lang").textContent = S.lang === "zh" ? "EN" : "中文";
    for (const el of document.querySelectorAll("[data-t]")) el.textContent = t(el.dataset.t);
    renderCall();
    renderConn();
    renderDuty();
    renderSkills();
    renderLimits();
    if (S.alert) renderAlert();
    if (S.job) renderGuide();
    if (S.stood) renderStood();
    renderPush();
  }

  function show(screen) {
    document.body.dataset.screen = screen;
    window.scrollTo(0, 0);
  }

  function toast(text, ms = 3500) {
    const el = $("toast");
    el.textContent = text;
    el.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { el.hidden = true; }, ms);
  }

  function renderConn() {
    const el = $("conn");
    el.dataset.state = S.conn;
    $("conn-text").textContent = t(`conn_${S.conn}`);
    // The banner only once signed in: before that the sign-in form shows what is wrong.
    $("offline-banner").hidden = !(S.vid && S.everConnected && S.conn !== "online");
  }

  function renderDuty() {
    const card = $("duty-card");
    card.dataset.duty = S.duty;
    const btn = $("duty");
    if (S.duty === "on") {
      $("duty-state").textContent = t("on_duty");
      const acc = S.fix ? Math.round(S.fix.accuracy || 0) : "–";
      $("duty-sub").textContent = t("on_sub", { s: LOCATION_EVERY_MS / 1000, a: acc });
    } else if (S.duty === "locating") {
      $("duty-state").textContent = t("locating");
      $("duty-sub").textContent = t("locating_sub");
    } else {
      $("duty-state").textContent = t("off_duty");
      $("duty-sub").textContent = t("off_sub");
    }
    btn.textContent = S.duty === "off" ? t("go_on") : t("go_off");
    renderResting();
    btn.classList.toggle("stop", S.duty !== "off");
    for (const b of document.querySelectorAll("#modes button")) {
      b.setAttribute("aria-checked", String(b.dataset.mode === S.mode));
    }
  }

  function renderSkills() {
    const box = $("skills");
    const known = (S.app && S.app.skills) || ["first_aid", "patrol", "mediation"];
    const all = [...new Set([...known, ...S.skills])];
    box.replaceChildren(
      ...all.map((skill) => {
        const b = document.createElement("button");
        b.type = "button";
        b.dataset.skill = skill;
        b.textContent = T[S.lang].skill_names[skill] || skill;
        b.setAttribute("aria-pressed", String(S.skills.includes(skill)));
        return b;
      }),
    );
  }

  // Alert budget and quiet hours (protocol 1.1): the settings, and whether we rest now.
  function renderLimits() {
    const sel = $("budget");
    const opts = [[ "", t("budget_none") ], ...BUDGETS.map((n) => [String(n), t("budget_n", { n })])];
    if (S.budget !== null && !BUDGETS.includes(S.budget)) opts.push([String(S.budget), t("budget_n", { n: S.budget })]);
    sel.replaceChildren(...opts.map(([value, text]) => {
      const o = document.createElement("option");
      o.value = value;
      o.textContent = text;
      return o;
    }));
    sel.value = S.budget === null ? "" : String(S.budget);
    $("quiet-on").checked = S.quiet.on;
    $("quiet-from").value = S.quiet.from;
    $("quiet-to").value = S.quiet.to;
    $("quiet-times").hidden = !S.quiet.on;
  }

  const minutes = (hhmm) => Number(hhmm.slice(0, 2)) * 60 + Number(hhmm.slice(3, 5));

  // Why the engine will not alert us now, as the engine reckons it: {why, until} or null.
  // The budget is counted from the alerts this phone got (the engine counts the ones it
  // sent: the same unless an alert was lost on the way).
  function resting(now = Date.now()) {
    let rest = null;
    if (S.quiet.on && S.quiet.from !== S.quiet.to) {
      const start = minutes(S.quiet.from) * 60000;
      const end = minutes(S.quiet.to) * 60000;
      const tod = (now + DISTRICT_OFFSET_MS) % DAY_MS; // ms into the district's day
      const inside = start < end ? start <= tod && tod < end : tod >= start || tod < end;
      if (inside) rest = { why: "quiet", until: now + (((end - tod) % DAY_MS) + DAY_MS) % DAY_MS };
    }
    if (S.budget !== null) {
      const recent = S.alertTimes.filter((at) => at > now - DAY_MS);
      if (recent.length >= S.budget) {
        const until = recent[recent.length - S.budget] + DAY_MS;
        if (!rest || until > rest.until) rest = { why: "budget", until, n: recent.length };
      }
    }
    return rest;
  }

  function renderResting() {
    const card = $("duty-card");
    const el = $("duty-rest");
    const rest = S.duty === "on" ? resting() : null;
    card.dataset.resting = rest ? rest.why : "";
    el.hidden = !rest;
    if (!rest) return;
    const d = new Date(rest.until + DISTRICT_OFFSET_MS); // shown in the district's time
    const hhmm = `${String(d.getUTCHours()).padStart(2, "0")}:${String(d.getUTCMinutes()).padStart(2, "0")}`;
    const sameDay = rest.until - Date.now() < DAY_MS / 2;
    const when = sameDay ? hhmm : `${d.getUTCMonth() + 1}/${d.getUTCDate()} ${hhmm}`;
    el.textContent = t(`resting_${rest.why}`, { t: when, n: rest.n });
  }

  function saveLimits() {
    if (S.budget === null) store.removeItem("vol.budget");
    else store.setItem("vol.budget", String(S.budget));
    store.setItem("vol.quiet", JSON.stringify(S.quiet));
    renderLimits();
    renderResting();
    if (S.duty === "on") sendStatus();
  }

  function fmtDist(m) {
    if (m == null || !isFinite(m)) return "–";
    if (m < 1000) return `${Math.round(m)} ${t("m")}`;
    return `${(m / 1000).toFixed(m < 10000 ? 1 : 0)} ${t("km")}`;
  }

  function fmtEta(s) {
    if (s == null || !isFinite(s)) return "–";
    if (s < 60) return `${Math.round(s)} ${t("sec")}`;
    return `${Math.round(s / 60)} ${t("min")}`;
  }

  function kindName(kind) {
    return T[S.lang].kinds[kind] || kind;
  }

  // ------------------------------------------------------------------ MQTT

  function topic(...parts) {
    return [S.app.topic_root, "volunteers", S.vid, ...parts].join("/");
  }

  function brokerUrl() {
    if (S.app.mqtt_ws_url) return S.app.mqtt_ws_url;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const host = location.hostname.includes(":") ? `[${location.hostname}]` : location.hostname;
    return `${scheme}://${host}:${S.app.mqtt_ws_port}/mqtt`;
  }

  function publish(sub, body, qos) {
    if (!S.client) return;
    // MQTT.js queues while offline and sends on reconnect (QoS 1 ones are acknowledged).
    S.client.publish(topic(sub), JSON.stringify(body), { qos, retain: false });
  }

  function connect(vid, password) {
    return new Promise((resolve, reject) => {
      const v5 = S.app.mqtt_protocol === 5;
      const client = mqtt.connect(brokerUrl(), {
        // The client id is the volunteer id, as the shipped broker enforces
        // (use_username_as_clientid): one connection per volunteer.
        clientId: vid,
        username: vid,
        password: password || undefined,
        protocolVersion: v5 ? 5 : 4,
        clean: true, // alerts are never worth receiving late
        keepalive: 20,
        reconnectPeriod: 2000,
        connectTimeout: 8000,
        resubscribe: false, // the "connect" handler subscribes, every time
        // Presence (protocol 1.1): the broker says "offline" for us when the connection
        // drops without a clean goodbye (the phone lost its network, the page was killed).
        will: {
          topic: topic("status"), payload: JSON.stringify({ status: "offline" }), qos: 1, retain: false,
        },
      });
      let settled = false;
      client.on("connect", () => {
        client.subscribe([topic("alert"), topic("assignment")], { qos: 1 }, (err) => {
          if (err) console.warn("subscribe failed", err);
        });
        if (S.job) followState(S.job.incident_id);
        setConn("online");
        S.everConnected = true;
        if (!settled) { settled = true; resolve(client); }
        if (S.duty === "on") sendStatus(); // the engine may have forgotten us meanwhile
      });
      client.on("reconnect", () => setConn("connecting"));
      client.on("offline", () => setConn("offline"));
      client.on("close", () => { if (S.conn === "online") setConn("offline"); });
      client.on("error", (err) => {
        const code = err && (err.code ?? err.reasonCode);
        // 4/5 (3.1.1) and 134/135 (v5): bad user name or password, not authorised.
        if ([4, 5, 134, 135].includes(code)) {
          client.end(true);
          if (!settled) { settled = true; reject(new Error(t("auth_failed"))); }
          else signOut(t("auth_failed"));
        }
      });
      client.on("message", onMessage);
      S.client = client;
      setConn("connecting");
      // A broker that never answers: say so on the sign-in form, keep trying behind it.
      setTimeout(() => {
        if (!settled) {
          settled = true;
          reject(new Error(t("no_broker") + brokerUrl()));
        }
      }, 10000);
    });
  }

  function setConn(state) {
    S.conn = state;
    renderConn();
  }

  // The incident's retained state shows when the engine saw us arrive. A broker whose
  // ACL keeps volunteers to their own topics refuses this: then the page relies on its
  // own distance check and the "I'm here" button, which is fine. Kept apart from the
  // alert subscription so that a refusal never touches it.
  function followState(iid) {
    if (!S.client) return;
    S.client.subscribe(stateTopic(iid), { qos: 1 }, (err) => {
      if (err) console.info("incident state not readable here:", err.message);
    });
  }

  function stateTopic(iid) {
    return [S.app.topic_root, "incidents", iid, "state"].join("/");
  }

  function onMessage(tp, payload) {
    let body;
    try {
      body = JSON.parse(new TextDecoder().decode(payload));
    } catch {
      return; // an empty retained message clears a state; nothing else should be non-JSON
    }
    if (tp === topic("alert")) onAlert(body);
    else if (tp === topic("assignment")) onAssignment(body);
    else if (S.job && tp === stateTopic(S.job.incident_id)) onState(body);
  }

  // ------------------------------------------------------------------ duty and location

  function sendStatus() {
    const body = { status: "available", skills: S.skills, mode: S.mode };
    if (S.fix) { body.lat = S.fix.lat; body.lon = S.fix.lon; }
    // Protocol 1.1: this page answers every alert with a receipt, and its limits. The
    // engine keeps a setting that a status leaves out, so "no limit" is told as the
    // highest budget, and quiet hours turned off as null (an engine that cannot clear
    // them yet keeps the old ones: docs/protocol.md).
    body.receipts = true;
    body.max_alerts_per_day = S.budget === null ? NO_LIMIT : S.budget;
    body.quiet_hours = S.quiet.on && S.quiet.from !== S.quiet.to ? `${S.quiet.from}-${S.quiet.to}` : null;
    publish("status", body, 1);
  }

  function sendLocation(always = false) {
    if ((S.duty !== "on" && !always) || !S.fix) return;
    const body = { lat: S.fix.lat, lon: S.fix.lon, ts: new Date(S.fix.at).toISOString() };
    if (S.fix.accuracy != null) body.accuracy_m = Math.round(S.fix.accuracy * 10) / 10;
    publish("location", body, 0);
  }

  function onFix(pos) {
    S.fix = {
      lat: pos.coords.latitude, lon: pos.coords.longitude,
      accuracy: pos.coords.accuracy, at: pos.timestamp || Date.now(),
    };
    if (pos.coords.heading != null && isFinite(pos.coords.heading) && pos.coords.speed > 1) {
      S.gpsHeading = pos.coords.heading;
    }
    if (S.duty === "locating") {
      S.duty = "on";
      sendStatus(); // first status carries the position
      scheduleLocations();
    }
    renderDuty();
    if (S.job) renderGuide();
  }

  function onGeoError(err) {
    if (S.duty === "off") return;
    if (err.code === 1) { // PERMISSION_DENIED
      goOffDuty(false);
      showGeoError(t("geo_denied"));
    } else if (S.duty === "locating") {
      goOffDuty(false);
      showGeoError(t("geo_unavailable", { m: err.message || err.code }));
    } // on duty: keep the last fix, the watch goes on
  }

  function showGeoError(text) {
    const el = $("geo-error");
    el.textContent = text;
    el.hidden = !text;
  }

  function scheduleLocations() {
    clearInterval(S.timer);
    const every = S.job ? LOCATION_EVERY_GUIDED_MS : LOCATION_EVERY_MS;
    S.timer = setInterval(() => {
      // Some browsers only report a watch on movement: ask for a fresh fix when stale.
      if (!S.fix || Date.now() - S.fix.at > every) {
        navigator.geolocation.getCurrentPosition(onFix, onGeoError, {
          enableHighAccuracy: true, maximumAge: every, timeout: every * 2,
        });
      }
      sendLocation();
      renderResting(); // quiet hours begin and end by the clock
    }, every);
  }

  function goOnDuty() {
    showGeoError("");
    unlockAudio();
    if (S.push === "ask") setupPush(true); // a tap: the moment to ask for notifications
    if (!window.isSecureContext) return showGeoError(t("geo_insecure"));
    if (!("geolocation" in navigator)) return showGeoError(t("geo_missing"));
    S.duty = "locating";
    renderDuty();
    S.watchId = navigator.geolocation.watchPosition(onFix, onGeoError, {
      enableHighAccuracy: true, maximumAge: 2000, timeout: 20000,
    });
    keepAwake(true);
  }

  function goOffDuty(announce = true) {
    const was = S.duty;
    S.duty = "off";
    if (S.watchId != null) navigator.geolocation.clearWatch(S.watchId);
    S.watchId = null;
    clearInterval(S.timer);
    S.fix = null;
    if (announce && was === "on") publish("status", { status: "off_duty" }, 1);
    keepAwake(false);
    renderDuty();
  }

  async function keepAwake(on) {
    try {
      if (on && "wakeLock" in navigator && !S.wakeLock) {
        S.wakeLock = await navigator.wakeLock.request("screen");
        S.wakeLock.addEventListener("release", () => { S.wakeLock = null; });
      } else if (!on && S.wakeLock) {
        await S.wakeLock.release();
      }
    } catch { /* not allowed here: the screen may sleep, alerts still ring */ }
  }

  // ------------------------------------------------------------------ alerts

  function onAlert(a) {
    if (!a || typeof a.alert_id !== "string") return;
    const expires = Date.parse(a.expires_at);
    if (isFinite(expires) && expires <= Date.now()) return; // stale: never act on it
    // The receipt, at once, before the person decides (protocol 1.1): the engine knows
    // the phone got it; with none in time it alerts the next best without waiting.
    publish("reply", { alert_id: a.alert_id, answer: "received" }, 1);
    countAlert(a.alert_id);
    if (S.job && S.job.incident_id !== a.incident_id) return; // the engine should not, anyway
    S.alert = { ...a, expiresMs: isFinite(expires) ? expires : Date.now() + 90000 };
    renderAlert();
    $("alert").hidden = false;
    ring(true);
    clearInterval(S.countTimer);
    S.countTimer = setInterval(tickAlert, 250);
    tickAlert();
  }

  function countAlert(alertId) {
    if (S.counted === alertId) return; // a QoS 1 duplicate
    S.counted = alertId;
    const now = Date.now();
    S.alertTimes = [...S.alertTimes.filter((at) => at > now - DAY_MS), now].slice(-100);
    store.setItem("vol.alerts", JSON.stringify(S.alertTimes));
    renderResting();
  }

  function renderAlert() {
    const a = S.alert;
    $("a-kind").textContent = kindName(a.kind);
    $("a-prio").textContent = T[S.lang].prio[a.priority] || `P${a.priority}`;
    $("a-dist").textContent = fmtDist(a.distance_m);
    $("a-eta").textContent = fmtEta(a.eta_s);
    $("a-address").textContent = a.address || t("no_address");
    $("a-desc").textContent = a.description || ""; // what the caller said (an extension)
    $("a-desc").hidden = !a.description;
  }

  function tickAlert() {
    if (!S.alert) return;
    const left = Math.max(0, Math.ceil((S.alert.expiresMs - Date.now()) / 1000));
    $("a-count").textContent = `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
    if (left <= 0) {
      closeAlert();
      toast(t("expired_toast"));
    }
  }

  function closeAlert() {
    clearInterval(S.countTimer);
    ring(false);
    S.alert = null;
    $("alert").hidden = true;
  }

  function answer(kind) {
    const a = S.alert;
    if (!a) return;
    if (S.client && S.conn === "online") publish("reply", { alert_id: a.alert_id, answer: kind }, 1);
    else if (a.reply_token) replyOverHttp(a, kind); // a pushed alert on a page not signed in
    else publish("reply", { alert_id: a.alert_id, answer: kind }, 1); // queued until online
    closeAlert();
    if (kind === "accept" && !S.client) {
      toast(t("pushed_accepted"), 6000);
      return;
    }
    if (kind === "accept") {
      S.pending = { ...a };
      show("waiting");
    }
  }

  // ------------------------------------------------------------------ Web Push

  function replyOverHttp(a, kind) {
    return fetch(a.reply_url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ volunteer_id: a.volunteer_id, answer: kind, token: a.reply_token }),
    }).catch(() => null);
  }

  // An alert the service worker handed over (a push while the page was visible, or a
  // tap on its notification): shown like one from MQTT, unless already answered there.
  function onPushedAlert(msg) {
    const a = msg && msg.alert;
    if (!a || typeof a.alert_id !== "string") return;
    if (S.vid && a.volunteer_id !== S.vid) return; // someone else signed in on this phone
    const expires = Date.parse(a.expires_at);
    if (isFinite(expires) && expires <= Date.now()) return toast(t("expired_toast"));
    if (msg.answered === "accept") {
      if (S.client) { S.pending = { ...a }; show("waiting"); } else toast(t("pushed_accepted"), 6000);
      return;
    }
    if (msg.answered === "decline" || (S.alert && S.alert.alert_id === a.alert_id)) return;
    countAlert(a.alert_id);
    S.alert = { ...a, expiresMs: isFinite(expires) ? expires : Date.now() + 90000 };
    renderAlert();
    $("alert").hidden = false;
    ring(true);
    clearInterval(S.countTimer);
    S.countTimer = setInterval(tickAlert, 250);
    tickAlert();
  }

  function renderPush() {
    const state = S.push;
    $("push-row").dataset.push = state;
    const text = { ok: "push_ok", ask: "push_ask", denied: "push_denied",
      unsupported: "push_unsupported", off: "push_off", failed: "push_failed" }[state];
    $("push-state").textContent = text ? t(text) + (state === "failed" ? S.pushError : "") : "";
    $("push-on").hidden = state !== "ask" && state !== "failed";
  }

  function b64urlBytes(text) {
    const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
    return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  }

  // After sign-in: learn whether the engine pushes; subscribe at once where permission
  // was given before, else offer the button (asking needs a tap). `ask`: from a tap.
  async function setupPush(ask = false) {
    if (!("serviceWorker" in navigator) || !("PushManager" in window) || !("Notification" in window)) {
      S.push = "unsupported";
      return renderPush();
    }
    try {
      if (!S.pushKey) {
        const r = await fetch("/api/push", { cache: "no-store" });
        const info = r.ok ? await r.json() : {};
        if (!info.enabled || !info.public_key) { S.push = "off"; return renderPush(); }
        S.pushKey = info.public_key;
      }
      let permission = Notification.permission;
      if (permission === "default" && ask) permission = await Notification.requestPermission();
      if (permission !== "granted") {
        S.push = permission === "denied" ? "denied" : "ask";
        return renderPush();
      }
      const reg = await navigator.serviceWorker.ready;
      let sub = await reg.pushManager.getSubscription();
      const key = b64urlBytes(S.pushKey);
      const same = sub && sub.options && sub.options.applicationServerKey
        && new Uint8Array(sub.options.applicationServerKey).every((b, i) => b === key[i]);
      if (sub && !same) { await sub.unsubscribe(); sub = null; } // the engine's key changed
      if (!sub) sub = await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
      // Sent at every sign-in: the engine keeps it (a few per volunteer) and renews it.
      const json = sub.toJSON();
      publish("push", { endpoint: json.endpoint, keys: json.keys }, 1);
      S.push = "ok";
    } catch (e) {
      S.push = "failed";
      S.pushError = e && e.message ? e.message : String(e);
    }
    renderPush();
  }

  // A two-tone call that repeats until answered; vibration where the phone allows.
  function unlockAudio() {
    try {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      if (!S.audio && Ctx) S.audio = new Ctx();
      if (S.audio && S.audio.state === "suspended") S.audio.resume();
    } catch { /* no sound here: the card and vibration still show */ }
  }

  function beep() {
    const ctx = S.audio;
    if (ctx && ctx.state === "running") {
      const now = ctx.currentTime;
      for (let i = 0; i < 4; i++) {
        const osc = ctx.createOscillator();
        const gain = ctx.createGain();
        osc.type = "square";
        osc.frequency.value = i % 2 ? 660 : 988;
        gain.gain.setValueAtTime(0.0001, now + i * 0.22);
        gain.gain.exponentialRampToValueAtTime(0.5, now + i * 0.22 + 0.02);
        gain.gain.exponentialRampToValueAtTime(0.0001, now + i * 0.22 + 0.2);
        osc.connect(gain).connect(ctx.destination);
        osc.start(now + i * 0.22);
        osc.stop(now + i * 0.22 + 0.21);
      }
    }
    if (navigator.vibrate) navigator.vibrate([400, 150, 400, 150, 400]);
  }

  function ring(on) {
    clearInterval(S.beepTimer);
    S.beepTimer = null;
    if (on) {
      beep();
      S.beepTimer = setInterval(beep, 1600);
    } else if (navigator.vibrate) {
      navigator.vibrate(0);
    }
  }

  // ------------------------------------------------------------------ assignments

  function onAssignment(msg) {
    if (!msg || typeof msg.incident_id !== "string") return;
    const iid = msg.incident_id;
    if (msg.action === "go") {
      if (S.job && S.job.incident_id === iid) { // a repeated confirmation, or news for the job
        updateJob(msg);
        return;
      }
      const a = S.pending && S.pending.incident_id === iid ? S.pending
        : S.alert && S.alert.incident_id === iid ? S.alert : { incident_id: iid };
      if (S.alert && S.alert.incident_id === iid) closeAlert();
      S.pending = null;
      S.job = {
        incident_id: iid, alert_id: a.alert_id, kind: a.kind, priority: a.priority,
        lat: a.lat, lon: a.lon, address: a.address, description: a.description || "",
        arrived: false, hereSent: false,
        // protocol 1.1: "primary" or "backup"; a 1.0 engine sends none (then: primary).
        role: msg.role === "backup" ? "backup" : "primary",
        verified: null, // from the state: true, false (unverified "I'm here"), null (not yet)
      };
      followState(iid);
      $("here").disabled = false;
      $("withdraw").hidden = !a.alert_id; // a withdraw names the alert
      $("g-call").classList.remove("urgent");
      $("withdraw").disabled = false;
      $("withdraw").textContent = t("withdraw");
      $("arrived-box").hidden = true;
      $("far").hidden = true;
      $("s-guide").classList.remove("arrived-now");
      if (S.duty === "on") scheduleLocations();
      renderGuide();
      show("guide");
      if (navigator.vibrate) navigator.vibrate(200);
    } else if (msg.action === "stand_down") {
      const mine = (S.alert && S.alert.incident_id === iid)
        || (S.pending && S.pending.incident_id === iid)
        || (S.job && S.job.incident_id === iid);
      if (!mine) return; // e.g. the answer to our own decline: nothing to show
      // On scene and helping, or the incident dealt with: thanks, never "not needed".
      const onScene = Boolean(S.job && S.job.incident_id === iid && S.job.arrived);
      if (S.alert && S.alert.incident_id === iid) closeAlert();
      S.pending = null;
      if (S.job && S.job.incident_id === iid) {
        if (S.client) S.client.unsubscribe(stateTopic(iid));
        S.job = null;
        $("far").hidden = true;
        $("wd").hidden = true;
        if (S.duty === "on") scheduleLocations();
      }
      const reason = String(msg.reason || "");
      S.stood = { reason, thanks: onScene || /resolved/i.test(reason), onScene };
      renderStood();
      show("stood");
    }
  }

  // A later "go" for the job we have: the role may have changed (a backup now primary) or
  // the place moved (amended by the control room: new lat, lon, address).
  function updateJob(msg) {
    const j = S.job;
    if (msg.role === "primary" || msg.role === "backup") setRole(msg.role);
    if (typeof msg.lat === "number" && typeof msg.lon === "number") {
      j.lat = msg.lat;
      j.lon = msg.lon;
    }
    if (typeof msg.address === "string") j.address = msg.address;
    renderGuide();
  }

  function setRole(role) {
    const j = S.job;
    if (!j || j.role === role) return;
    const promoted = j.role === "backup" && role === "primary";
    j.role = role;
    renderGuide();
    if (promoted) {
      toast(t("role_now_primary"));
      if (navigator.vibrate) navigator.vibrate(200);
    }
  }

  // Reasons as the engine words them (dispatch/dispatcher.py), told in friendly words.
  function reasonText(reason) {
    const r = reason.toLowerCase();
    if (r === "withdrawn") return t("reason_withdrawn"); // the answer to our own withdraw
    if (r.includes("faster")) return t("reason_faster");
    if (r.includes("filled")) return t("reason_filled");
    if (r.includes("on scene") || r.includes("on_scene")) return t("reason_on_scene");
    if (r.includes("merged")) return t("reason_merged");
    if (r.includes("moved")) return t("reason_moved");
    if (r.includes("expired")) return t("reason_expired");
    if (r.includes("declined")) return t("reason_declined");
    if (r.includes("committed")) return t("reason_committed");
    if (r.includes("elsewhere")) return t("reason_elsewhere");
    if (r.includes("resolved")) return t("reason_resolved");
    if (r.includes("cancelled")) return t("reason_cancelled");
    return t("reason_other", { r: reason || "–" });
  }

  function renderStood() {
    const st = S.stood;
    $("s-stood").dataset.thanks = String(st.thanks);
    $("stood-title").textContent = st.thanks ? t("thanks_title")
      : st.reason === "withdrawn" ? t("withdrawn_title") : t("stood_title");
    let text = reasonText(st.reason);
    if (st.onScene) {
      text = /resolved/i.test(st.reason) ? t("thanks_resolved")
        : /cancelled/i.test(st.reason) ? t("thanks_cancelled") : t("thanks_other");
    }
    $("stood-reason").textContent = text;
  }

  function onState(state) {
    if (!S.job || !state || !Array.isArray(state.responders)) return;
    const me = state.responders.find((r) => r.volunteer_id === S.vid);
    if (me && (me.role === "primary" || me.role === "backup")) setRole(me.role);
    if (me && me.arrived_at) {
      // protocol 1.1: "verified" false is an "I'm here" with no position near the scene
      // yet; a 1.0 engine sends no "verified" and believed every arrival.
      S.job.verified = me.verified !== false;
      markArrived();
      renderCheck();
    }
    if (typeof state.lat === "number" && S.job.lat == null) {
      S.job.lat = state.lat;
      S.job.lon = state.lon;
      S.job.kind = S.job.kind || state.kind;
      S.job.priority = S.job.priority || state.priority;
      renderGuide();
    }
  }

  function markArrived() {
    if (!S.job || S.job.arrived) return;
    S.job.arrived = true;
    $("arrived-box").hidden = false;
    $("s-guide").classList.add("arrived-now");
    $("here").disabled = true;
    $("here").textContent = t("here_sent");
    $("far").hidden = true;
    $("withdraw").hidden = true; // on scene: a withdraw is for the way there
    $("wd").hidden = true;
    renderCheck();
  }

  // "I can't go after all" (this project's addition to the protocol, docs/protocol.md):
  // the engine releases us at once and finds someone else; its stand-down ("withdrawn")
  // brings the calm screen. An engine that does not know it rejects it: then say so.
  let withdrawTimer = null;
  function sendWithdraw() {
    $("wd").hidden = true;
    const j = S.job;
    if (!j || !j.alert_id || j.arrived) return;
    publish("reply", { alert_id: j.alert_id, answer: "withdraw" }, 1);
    const btn = $("withdraw");
    btn.disabled = true;
    btn.textContent = t("wd_sending");
    clearTimeout(withdrawTimer);
    withdrawTimer = setTimeout(() => {
      if (!S.job || S.job.incident_id !== j.incident_id) return; // answered
      btn.disabled = false;
      btn.textContent = t("withdraw");
      toast(t("wd_noreply"), 8000);
      $("g-call").classList.add("urgent"); // no answer: the call is what is left
    }, 10000);
  }

  // The control room's number ([control_room] phone, from GET /api/volunteer-app): a tel:
  // link on the alert, the guidance and the withdraw screens; none without a number.
  function renderCall() {
    const phone = S.app && typeof S.app.control_room_phone === "string" ? S.app.control_room_phone : "";
    const href = phone ? `tel:${phone.replace(/[^0-9+]/g, "")}` : null;
    for (const a of document.querySelectorAll("[data-call]")) {
      if (href) a.setAttribute("href", href); else a.removeAttribute("href");
      a.title = phone;
      a.hidden = !href;
    }
  }

  // Whether dispatch believes the arrival: only the incident's state can say (a broker
  // whose ACL hides it leaves "sent" on screen after the button, and nothing otherwise).
  function renderCheck() {
    const j = S.job;
    const el = $("arrival-check");
    if (!j || !j.arrived || (j.verified === null && !j.hereSent)) {
      el.hidden = true;
      return;
    }
    const v = j.verified === null ? "pending" : j.verified ? "yes" : "no";
    el.dataset.verified = v;
    el.textContent = t(`check_${v}`);
    el.hidden = false;
  }

  // ------------------------------------------------------------------ guidance

  function rad(d) { return (d * Math.PI) / 180; }

  function distanceM(lat1, lon1, lat2, lon2) {
    const dp = rad(lat2 - lat1);
    const dl = rad(lon2 - lon1);
    const h = Math.sin(dp / 2) ** 2 + Math.cos(rad(lat1)) * Math.cos(rad(lat2)) * Math.sin(dl / 2) ** 2;
    return 2 * EARTH_M * Math.asin(Math.sqrt(h));
  }

  function bearingDeg(lat1, lon1, lat2, lon2) {
    const y = Math.sin(rad(lon2 - lon1)) * Math.cos(rad(lat2));
    const x = Math.cos(rad(lat1)) * Math.sin(rad(lat2))
      - Math.sin(rad(lat1)) * Math.cos(rad(lat2)) * Math.cos(rad(lon2 - lon1));
    return ((Math.atan2(y, x) * 180) / Math.PI + 360) % 360;
  }

  function renderGuide() {
    const j = S.job;
    if (!j) return;
    $("g-kind").textContent = j.kind ? kindName(j.kind) : j.incident_id;
    const prio = $("g-prio");
    prio.textContent = j.priority ? T[S.lang].prio[j.priority] : "";
    prio.dataset.p = j.priority || "";
    prio.hidden = !j.priority;
    $("g-address").textContent = j.address || t("no_address");
    $("g-desc").textContent = j.description || "";
    $("g-desc").hidden = !j.description;
    const role = $("g-role");
    role.dataset.role = j.role;
    role.textContent = t(`role_${j.role}`);
    $("here").textContent = j.hereSent || j.arrived ? t("here_sent") : t("here");
    renderCheck();
    if (!$("far").hidden) renderFar();
    const hasTarget = typeof j.lat === "number" && typeof j.lon === "number";
    if (hasTarget) {
      const label = encodeURIComponent(j.address || kindName(j.kind) || "incident");
      const nav = navLinks(j.lat, j.lon, label, S.mode);
      $("nav-geo").href = nav.geo;
      $("nav-amap").href = nav.amap;
      $("nav-baidu").href = nav.baidu;
      $("nav-mode").textContent = t("nav_mode", { mode: t(S.mode) });
    }
    if (!hasTarget || !S.fix) {
      $("g-dist").textContent = "–";
      $("g-dist-note").textContent = t("no_fix");
      return;
    }
    const d = distanceM(S.fix.lat, S.fix.lon, j.lat, j.lon);
    $("g-dist").textContent = fmtDist(d);
    $("g-dist-note").textContent = t("dist_note");
    const bearing = bearingDeg(S.fix.lat, S.fix.lon, j.lat, j.lon);
    const heading = S.heading != null ? S.heading : S.gpsHeading != null ? S.gpsHeading : null;
    const turn = heading == null ? 0 : -heading;
    $("compass-rose").setAttribute("transform", `rotate(${turn})`);
    $("arrow").setAttribute("transform", `rotate(${bearing + turn})`);
    $("g-heading-note").textContent = heading != null ? t("heading_live")
      : S.compass === "denied" ? t("compass_denied") : t("heading_north");
    $("compass-on").hidden = heading != null || !compassNeedsAsking() || S.compass === "granted";
    if (S.app && d <= S.app.arrival_radius_m) markArrived(); // the engine sees the same
  }

  // A route for the way the volunteer travels (the mode chosen on the home screen). The
  // apps' URI schemes: Amap t=2 walk, t=3 ride (rideType=elebike for an e-bike); Baidu
  // mode=walking | riding (riding_type=1: e-bike). dev=1 / coord_type=wgs84: the apps
  // convert our WGS84 to their GCJ-02 themselves. A geo: link carries no mode.
  function navLinks(lat, lon, label, mode) {
    const amapMode = mode === "walk" ? "t=2" : mode === "ebike" ? "t=3&rideType=elebike" : "t=3";
    const baiduMode = mode === "walk" ? "mode=walking" : mode === "ebike" ? "mode=riding&riding_type=1" : "mode=riding";
    return {
      geo: `geo:${lat},${lon}?q=${lat},${lon}(${label})`,
      amap: `amapuri://route/plan/?dlat=${lat}&dlon=${lon}&dname=${label}&dev=1&${amapMode}`,
      baidu: `baidumap://map/direction?destination=latlng:${lat},${lon}|name:${label}&coord_type=wgs84&${baiduMode}`,
    };
  }

  // The compass: the phone's heading where the browser gives it (iOS: webkitCompassHeading
  // after a permission asked from a tap; elsewhere an absolute orientation), corrected for
  // a phone held sideways; otherwise the arrow is drawn with north up, as before.
  function onOrientation(e) {
    let h = null;
    if (typeof e.webkitCompassHeading === "number") h = e.webkitCompassHeading; // iOS
    else if (e.absolute && typeof e.alpha === "number") {
      const screenAngle = (screen.orientation && screen.orientation.angle) || window.orientation || 0;
      h = (360 - e.alpha + screenAngle) % 360;
    }
    if (h == null || !isFinite(h)) return;
    S.heading = h;
    $("compass-on").hidden = true;
    if (S.job && document.body.dataset.screen === "guide") renderGuide();
  }

  // iOS 13+ gives orientation only after asking, from a tap: on "accept" and on the button.
  const compassNeedsAsking = () => typeof DeviceOrientationEvent !== "undefined"
    && typeof DeviceOrientationEvent.requestPermission === "function";

  async function askCompass() {
    if (!compassNeedsAsking() || S.compass === "granted" || S.heading != null) return;
    try {
      S.compass = await DeviceOrientationEvent.requestPermission();
    } catch {
      S.compass = "denied";
    }
    // Refused: the note under the arrow says north up; the button stays to ask again.
    $("compass-on").hidden = S.compass === "granted" || S.heading != null;
    if (S.job) renderGuide();
  }

  // "I'm here": the engine believes it only with a recent position of ours within the
  // arrival radius plus its accuracy, so take a fresh fix first, warn when that fix puts
  // us far from the scene, and send the fix right before "arrived".
  const FIX_WAIT_MS = 4000;
  const MAX_SLACK_M = 100; // the engine counts a reported accuracy up to this

  function freshFix() {
    return new Promise((resolve) => {
      if (!("geolocation" in navigator)) { resolve(S.fix); return; }
      const done = (fix) => { clearTimeout(timer); resolve(fix); };
      const timer = setTimeout(() => done(S.fix), FIX_WAIT_MS + 500);
      navigator.geolocation.getCurrentPosition(
        (pos) => { onFix(pos); done(S.fix); },
        () => done(S.fix), // no fresh fix: the last one (or none) will do
        { enableHighAccuracy: true, maximumAge: 0, timeout: FIX_WAIT_MS },
      );
    });
  }

  // How far our last fix puts us from the scene, and whether that is too far to be believed.
  function farness() {
    const j = S.job;
    if (!j || typeof j.lat !== "number" || typeof j.lon !== "number") return null;
    if (!S.fix) return { far: true, d: null, acc: null };
    const d = distanceM(S.fix.lat, S.fix.lon, j.lat, j.lon);
    const acc = Math.min(Math.max(S.fix.accuracy || 0, 0), MAX_SLACK_M);
    const radius = (S.app && S.app.arrival_radius_m) || 30;
    return { far: d > radius + acc, d, acc };
  }

  async function imHere() {
    if (!S.job || S.job.hereSent) return;
    const iid = S.job.incident_id;
    const btn = $("here");
    btn.disabled = true;
    btn.textContent = t("here_locating");
    await freshFix();
    if (!S.job || S.job.incident_id !== iid) return; // stood down meanwhile
    btn.disabled = S.job.arrived;
    btn.textContent = S.job.arrived ? t("here_sent") : t("here");
    const f = farness();
    if (f && f.far) {
      renderFar();
      $("far").hidden = false;
      $("far-cancel").focus();
      return;
    }
    sendArrived();
  }

  function renderFar() {
    const f = farness();
    if (!f) return;
    $("far-title").textContent = t("far_title");
    $("far-text").textContent = f.d === null ? t("far_nofix")
      : t("far_text", { d: fmtDist(f.d), a: Math.round(f.acc) });
    $("far").dataset.distance = f.d === null ? "" : String(Math.round(f.d));
  }

  function sendArrived() {
    $("far").hidden = true;
    if (!S.job || S.job.hereSent) return;
    sendLocation(true); // the fix the engine checks the arrival against, just before it
    publish("arrived", { incident_id: S.job.incident_id }, 1);
    S.job.hereSent = true;
    $("here").textContent = t("here_sent");
    markArrived();
    renderCheck();
  }

  // ------------------------------------------------------------------ sign in and out

  async function signIn(ev) {
    ev.preventDefault();
    const vid = $("vid").value.trim();
    const password = $("password").value;
    const err = $("signin-error");
    err.hidden = true;
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(vid)) {
      err.textContent = t("bad_id");
      err.hidden = false;
      return;
    }
    $("signin").disabled = true;
    S.vid = vid;
    try {
      await connect(vid, password);
    } catch (e) {
      if (S.client) S.client.end(true);
      S.client = null;
      S.vid = null;
      setConn("offline");
      err.textContent = e.message;
      err.hidden = false;
      $("signin").disabled = false;
      return;
    }
    $("signin").disabled = false;
    store.setItem("vol.id", vid);
    session.setItem("vol.password", password); // this tab only, gone when it closes
    $("who").textContent = vid;
    show("home");
    renderConn();
    setupPush();
  }

  function signOut(message) {
    if (S.duty !== "off") goOffDuty(true);
    const client = S.client;
    S.client = null;
    S.vid = null;
    S.everConnected = false;
    if (client) client.end(false); // lets the off_duty status go out first
    session.removeItem("vol.password");
    $("who").textContent = "";
    setConn("offline");
    show("signin");
    if (message) {
      $("signin-error").textContent = message;
      $("signin-error").hidden = false;
    }
  }

  function bind() {
    $("lang").addEventListener("click", () => {
      S.lang = S.lang === "zh" ? "en" : "zh";
      store.setItem("vol.lang", S.lang);
      applyLang();
    });
    $("signin-form").addEventListener("submit", signIn);
    $("duty").addEventListener("click", () => (S.duty === "off" ? goOnDuty() : goOffDuty(true)));
    $("modes").addEventListener("click", (e) => {
      const b = e.target.closest("button[data-mode]");
      if (!b) return;
      S.mode = b.dataset.mode;
      store.setItem("vol.mode", S.mode);
      renderDuty();
      if (S.duty === "on") sendStatus();
    });
    $("skills").addEventListener("click", (e) => {
      const b = e.target.closest("button[data-skill]");
      if (!b) return;
      const s = b.dataset.skill;
      S.skills = S.skills.includes(s) ? S.skills.filter((x) => x !== s) : [...S.skills, s];
      store.setItem("vol.skills", JSON.stringify(S.skills));
      renderSkills();
      if (S.duty === "on") sendStatus();
    });
    $("budget").addEventListener("change", (e) => {
      S.budget = readBudget(e.target.value);
      saveLimits();
    });
    $("quiet-on").addEventListener("change", (e) => {
      S.quiet = { ...S.quiet, on: e.target.checked };
      saveLimits();
    });
    for (const id of ["quiet-from", "quiet-to"]) {
      $(id).addEventListener("change", (e) => {
        if (!/^\d\d:\d\d$/.test(e.target.value)) return renderLimits(); // cleared: keep the old
        S.quiet = { ...S.quiet, [id === "quiet-from" ? "from" : "to"]: e.target.value };
        saveLimits();
      });
    }
    $("accept").addEventListener("click", () => { askCompass(); answer("accept"); });
    $("compass-on").addEventListener("click", askCompass);
    $("decline").addEventListener("click", () => answer("decline"));
    $("here").addEventListener("click", imHere);
    $("far-send").addEventListener("click", sendArrived);
    $("far-cancel").addEventListener("click", () => { $("far").hidden = true; });
    $("withdraw").addEventListener("click", () => { $("wd").hidden = false; $("wd-cancel").focus(); });
    $("wd-cancel").addEventListener("click", () => { $("wd").hidden = true; });
    $("wd-send").addEventListener("click", sendWithdraw);
    $("stood-ok").addEventListener("click", () => { S.stood = null; show("home"); });
    $("signout").addEventListener("click", () => signOut());
    $("push-on").addEventListener("click", () => setupPush(true));
    if ("serviceWorker" in navigator) {
      navigator.serviceWorker.addEventListener("message", (e) => {
        if (e.data && e.data.type === "alert") onPushedAlert(e.data);
      });
    }
    window.addEventListener("online", () => { if (S.client && S.conn !== "online") S.client.reconnect(); });
    window.addEventListener("offline", () => setConn("offline"));
    window.addEventListener("deviceorientationabsolute", onOrientation);
    window.addEventListener("deviceorientation", onOrientation);
    window.addEventListener("pagehide", (e) => {
      // Closing the page while on duty: say so, so that nobody waits for us; then a clean
      // goodbye, best effort, so that the broker does not publish our Last Will ("offline")
      // after it. A phone that dies or loses its network has no pagehide: the will tells.
      if (S.duty === "on") publish("status", { status: "off_duty" }, 1);
      if (S.client && !e.persisted) S.client.end(false); // (persisted: it may come back)
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && S.duty !== "off") keepAwake(true);
    });
  }

  async function start() {
    bind();
    applyLang();
    // The service worker: the shell offline, and pushed alerts (volunteer-sw.js). Only in
    // a secure context (https, or localhost): elsewhere the page works without it.
    if ("serviceWorker" in navigator && window.isSecureContext) {
      navigator.serviceWorker.register("/volunteer-sw.js", { scope: "/volunteer" })
        .catch((e) => console.info("no service worker:", e.message));
    }
    // Opened from a notification: the alert rides in the URL's fragment (never sent).
    let pushed = null;
    if (location.hash.startsWith("#push=")) {
      try { pushed = JSON.parse(decodeURIComponent(location.hash.slice(6))); } catch { pushed = null; }
      history.replaceState(null, "", location.pathname);
    }
    const saved = store.getItem("vol.id");
    if (saved) $("vid").value = saved;
    try {
      const r = await fetch("/api/volunteer-app", { cache: "no-store" });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      S.app = await r.json();
    } catch (e) {
      show("signin");
      $("signin-error").textContent = t("no_broker") + e.message;
      $("signin-error").hidden = false;
      $("signin").disabled = true;
      return;
    }
    $("demo-note").hidden = !S.app.open_broker;
    renderCall();
    renderSkills();
    show("signin");
    applyLang();
    if (pushed) onPushedAlert(pushed);
    // A reload in the same tab signs in again by itself (the password lives in this tab).
    const password = session.getItem("vol.password");
    if (saved && password !== null) {
      $("password").value = password;
      $("signin-form").requestSubmit();
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
