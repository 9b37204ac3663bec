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
      fig_offline: "{n} 人值班但失联", fig_resting: "{n} 人休息中",
      report_link: "报表", cell_today: "今日 {n} 起，按时到场 {a}/{b}，P90 {p90}",
      fig_offline_tip: "在值班、但手机已断线（连接中断或页面被关闭）：不会被呼叫，直到重新上线。",
      fig_resting_tip: "在值班、但处于免打扰时段或当天呼叫次数已达上限：暂不呼叫。",
      tab_queue: "队列", tab_history: "历史", tab_report: "报警录入", queue_empty: "当前没有待处理事件",
      history_since: "时间范围", range_1h: "最近 1 小时", range_today: "今天", range_24h: "最近 24 小时",
      range_7d: "最近 7 天", refresh: "刷新", h_time: "报警时间", h_kind: "类型", h_address: "地址",
      h_cell: "网格", h_state: "状态", h_tta: "到场用时", history_empty: "此时间范围内没有已结束的事件",
      report_hint: "输入地址可搜索地名和以往报警地址；或在地图上点击以设置位置。", f_kind: "类型", f_priority: "优先级", priority_default: "按类型默认",
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
      // events in the detail's history (docs/api.md "Types")
      ev_reported: "报警", ev_state: "状态", ev_alerted: "已通知", ev_declined: "已拒绝", ev_expired: "通知过期",
      ev_late_accept: "接受过晚", ev_stood_down: "已撤回", ev_assigned: "已派遣", ev_arrived: "到达",
      ev_overdue: "超时未到", ev_escalated: "升级", ev_resolved: "结案", ev_cancelled: "取消",
      ev_received: "已送达", ev_undelivered: "未送达", ev_withdrawn: "志愿者退出", ev_amended: "已修改",
      // alert statuses
      as_pending: "等待回复", as_accepting: "接受确认中", as_accepted: "已接受", as_declined: "已拒绝",
      as_expired: "已过期", as_stood_down: "已撤回", as_undelivered: "未送达", as_withdrawn: "已退出",
      how_button: "按了「我已到达」", how_geofence: "定位进入现场范围", how_position: "定位证实在现场附近",
      why_late: "超过预计时间", why_no_progress: "没有向现场移动", why_offline: "手机离线",
      wave: "第 {n} 轮", wave_hand: "手动指派", metres: "{m} 米", waited: "已等 {s}",
      mode_walk: "步行", mode_bike: "自行车", mode_ebike: "电动车",
      sk_first_aid: "急救", sk_patrol: "巡逻", sk_mediation: "调解", sk_none: "任意技能", sk_sep: "、",
      by_engine: "系统", by_operator: "操作员",
      // the engine's own texts (dispatch/dispatcher.py), matched by ENGINE_TEXTS below
      r_too_slow: "最快的志愿者约需 {best} 秒赶到，加上已用去和出发所需的 {used} 秒，超过 {target} 秒目标",
      r_none_useful: "没有能在 {eta} 秒内（最远 {radius} 米）赶到的可调志愿者（需要：{skills}）",
      r_none_radius: "{radius} 米内没有可调志愿者（需要：{skills}）",
      r_budget: "通知名额（{n} 人）已用完，仍无人接受", r_no_accept: "{n} 轮通知后仍无人接受",
      r_overdue_no_accept: "响应者超时未到，{n} 轮通知后也没有其他人接受",
      r_all_declined: "所有被通知的志愿者都已拒绝或超时，附近也没有其他人",
      r_escalated_by: "由 {by} 升级", r_resolved_by: "由 {by} 结案", r_cancelled_by: "由 {by} 取消",
      r_alert_expired: "通知已过期", r_you_declined: "志愿者已拒绝", r_filled: "已有足够的人前往",
      r_committed: "已在处理另一起事件", r_faster: "有能更快赶到的志愿者接替",
      r_faster_backup: "有能更快赶到的志愿者，改为后备", r_now_primary: "改为主要响应者",
      r_enough: "到场人数已够", r_elsewhere: "调度中心已另派他人", r_no_longer: "不再需要",
      r_incident: "事件{state}", r_moved: "事件地点已更改", r_location_updated: "地点已更新",
      r_confirmed: "已确认", r_by_operator: "操作员指派", r_withdrew: "志愿者表示无法前往",
      // errors
      err_operator_disabled: "操作功能未启用：引擎没有配置操作令牌。请设置环境变量 DISPATCH_HTTP_OPERATOR_TOKEN 或配置项 [http] operator_token，然后重启引擎。",
      err_400: "请求内容有误，请检查后重试", err_404: "找不到该事件或志愿者（可能已结束）",
      err_409: "事件当前的状态不允许此操作（可能已结束或已有变化）", err_413: "内容过长",
      // duplicate reports
      act_merge: "合并", dup_of: "疑似重复：#{id}", dup_title: "同类报警，相距不到 100 米、3 分钟以内：可能是同一事件",
      dup_merge: "并入 #{id}", merged_into: "已并入 #{id}", merged_from: "已并入本事件：{ids}",
      ev_duplicate_suspected: "疑似重复", ev_merged: "合并", ev_dup_of: "可能与 #{id} 相同（相距 {m} 米、{s}）",
      ev_merged_into: "并入 #{id}", ev_merged_from: "#{id} 已并入本事件",
      r_merged_by: "由 {by} 并入 #{id}", r_merged: "同一事件的重复报告已合并",
      err_merge_into_itself: "不能并入自身", err_already_merged: "该事件已并入其他事件",
      err_target_ended: "目标事件已结束：只能并入进行中的事件", err_other_kind: "两起事件类型不同，不能直接合并",
      err_incident_ended: "该事件已结束，无法合并",
      err_422: "位置在服务区域之外", err_503: "引擎暂时连不上后台服务，请稍后再试",
      err_network: "连不上调度引擎，请检查网络", err_other: "请求失败（HTTP {status}）",
      operator_off: "操作未启用",
      // attention, search
      mute_on: "提醒开", mute_off: "已静音", mute_title: "新的 P1 事件和每次升级时响铃并弹出通知",
      notify_p1: "新的 P1 事件：{kind}", notify_escalated: "需人工处理：{kind}",
      search: "搜索地址、编号、网格…", all_kinds: "全部类型", all_states: "全部状态",
      filtered_empty: "没有符合条件的事件", shown_of: "{a}/{b}",
      // amending an incident (protocol 1.1)
      act_edit: "修改…", edit_title: "修改事件", edit_hint: "在地图上点击可移动事件位置。只提交改动过的内容。",
      edit_save: "保存修改", edit_ok: "{id}：已修改", edit_nothing: "没有改动",
      edit_place: "位置：{lat}, {lon}", edit_place_new: "新位置：{lat}, {lon}（保存后生效）",
      f_skills: "所需技能（逗号分隔）", f_place: "位置", ch_moved: "位置已移动", ch_sep: "；", ch_kv: "{k}：{v}",
      // places (the gazetteer and earlier reports), undo, subdistricts
      place_search: "输入地址或地名搜索…", src_gazetteer: "地名", src_incident: "以往报警", places_none: "没有匹配的地点",
      place_set: "位置已设为「{name}」",
      undo: "撤销", undo_pending: "{act} {id}：{s} 秒后发送", undone: "已撤销：{act} {id}",
      all_subdistricts: "全部街道",
    },
    en: {
      title: "Dispatch control room", fig_incidents: "Today", fig_p50: "P50 to arrival",
      fig_p90: "P90 to arrival", fig_within: "Within {s} s", fig_within_of: "of {n} decided", fig_reached: "Reached",
      fig_unverified: "{n} unverified", fig_open: "Open", fig_escalated: "Escalated",
      fig_available: "Volunteers free", fig_offline: "{n} on duty, unreachable", fig_resting: "{n} resting",
      report_link: "Report", cell_today: "today {n}: {a}/{b} on scene in time, P90 {p90}",
      fig_offline_tip: "On duty, but the phone dropped off (lost its connection or the page was closed): not alerted until it is back.",
      fig_resting_tip: "On duty, but in their quiet hours or past their alerts for the day: not alerted for now.",
      tab_queue: "Queue", tab_history: "History", tab_report: "Report",
      queue_empty: "No open incidents", history_since: "Range", range_1h: "Last hour", range_today: "Today",
      range_24h: "Last 24 hours", range_7d: "Last 7 days", refresh: "Refresh", h_time: "Reported",
      h_kind: "Kind", h_address: "Address", h_cell: "Cell", h_state: "State", h_tta: "To arrival",
      history_empty: "No closed incidents in this range", report_hint: "Type an address to search named places and earlier reports, or click on the map to set the location.",
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
      ev_reported: "reported", ev_state: "state", ev_alerted: "alerted", ev_declined: "declined",
      ev_expired: "alert expired", ev_late_accept: "accepted too late", ev_stood_down: "stood down",
      ev_assigned: "assigned", ev_arrived: "arrived", ev_overdue: "overdue", ev_escalated: "escalated",
      ev_resolved: "resolved", ev_cancelled: "cancelled", ev_received: "delivered", ev_undelivered: "not delivered",
      ev_withdrawn: "volunteer withdrew", ev_amended: "amended",
      as_pending: "waiting", as_accepting: "accepting", as_accepted: "accepted", as_declined: "declined",
      as_expired: "expired", as_stood_down: "stood down", as_undelivered: "not delivered", as_withdrawn: "withdrew",
      how_button: "pressed \"I'm here\"", how_geofence: "position inside the scene", how_position: "position confirms it",
      why_late: "past the expected time", why_no_progress: "not moving towards the scene", why_offline: "phone offline",
      wave: "wave {n}", wave_hand: "by hand", metres: "{m} m", waited: "waited {s}",
      mode_walk: "walk", mode_bike: "bike", mode_ebike: "e-bike",
      sk_first_aid: "first aid", sk_patrol: "patrol", sk_mediation: "mediation", sk_none: "no particular skills", sk_sep: ", ",
      by_engine: "the engine", by_operator: "operator",
      r_too_slow: "The fastest volunteer needs about {best} s; with the {used} s already gone or needed to set off, more than the {target} s target",
      r_none_useful: "No available volunteer with {skills} who could be there within {eta} s ({radius} m at most)",
      r_none_radius: "No available volunteer with {skills} within {radius} m",
      r_budget: "The alert budget ({n}) is spent and nobody accepted", r_no_accept: "Nobody accepted after {n} waves",
      r_overdue_no_accept: "Responders overdue, and nobody else accepted after {n} waves",
      r_all_declined: "Every alerted volunteer declined or timed out, and nobody else is in reach",
      r_escalated_by: "Escalated by {by}", r_resolved_by: "Resolved by {by}", r_cancelled_by: "Cancelled by {by}",
      r_alert_expired: "alert expired", r_you_declined: "the volunteer declined", r_filled: "enough are going",
      r_committed: "busy with another incident", r_faster: "a faster responder took the place",
      r_faster_backup: "a faster responder is going: now a backup", r_now_primary: "now the primary responder",
      r_enough: "enough responders on scene", r_elsewhere: "the control room sent someone else",
      r_no_longer: "no longer needed", r_incident: "incident {state}", r_moved: "the incident moved",
      r_location_updated: "location updated", r_confirmed: "confirmed", r_by_operator: "assigned by an operator",
      r_withdrew: "the volunteer cannot go after all",
      err_operator_disabled: "Operator actions are off: the engine has no operator token. Set DISPATCH_HTTP_OPERATOR_TOKEN or [http] operator_token, then restart the engine.",
      err_400: "The request was refused: check what you entered", err_404: "No such incident or volunteer (it may have ended)",
      err_409: "Not possible in the incident's current state (it may have ended or changed)", err_413: "Too long",
      // duplicate reports
      act_merge: "Merge", dup_of: "Likely duplicate of #{id}", dup_title: "Same kind, under 100 m and 3 minutes apart: probably the same event",
      dup_merge: "Merge into #{id}", merged_into: "Merged into #{id}", merged_from: "Merged into this: {ids}",
      ev_duplicate_suspected: "likely duplicate", ev_merged: "merged", ev_dup_of: "probably the same as #{id} ({m} m, {s} apart)",
      ev_merged_into: "into #{id}", ev_merged_from: "#{id} merged into this",
      r_merged_by: "Merged into #{id} by {by}", r_merged: "merged with another report of the same event",
      err_merge_into_itself: "An incident cannot be merged into itself", err_already_merged: "Already merged into another incident",
      err_target_ended: "That incident has ended: merge into an open one", err_other_kind: "The two incidents are of different kinds",
      err_incident_ended: "This incident has ended: it cannot be merged",
      err_422: "The place is outside the service area", err_503: "The engine cannot reach its back end; try again shortly",
      err_network: "Cannot reach the dispatch engine: check the network", err_other: "The request failed (HTTP {status})",
      operator_off: "Operator actions off",
      mute_on: "Alerts on", mute_off: "Muted", mute_title: "Ring and notify for a new P1 incident and every escalation",
      notify_p1: "New P1 incident: {kind}", notify_escalated: "Needs a person: {kind}",
      search: "Search address, id, cell…", all_kinds: "All kinds", all_states: "All states",
      filtered_empty: "No incident matches", shown_of: "{a}/{b}",
      act_edit: "Edit…", edit_title: "Edit the incident", edit_hint: "Click on the map to move the incident. Only what you change is sent.",
      edit_save: "Save changes", edit_ok: "{id}: changed", edit_nothing: "Nothing was changed",
      edit_place: "Place: {lat}, {lon}", edit_place_new: "New place: {lat}, {lon} (on saving)",
      f_skills: "Skills needed (comma-separated)", f_place: "Place", ch_moved: "moved", ch_sep: "; ", ch_kv: "{k}: {v}",
      place_search: "Type an address or a place name…", src_gazetteer: "place", src_incident: "earlier report",
      places_none: "No place matches", place_set: "Place set to \"{name}\"",
      undo: "Undo", undo_pending: "{act} {id}: sent in {s} s", undone: "Undone: {act} {id}",
      all_subdistricts: "All subdistricts",
    },
  };
  // The engine's texts that reach people (escalation, end and stand-down reasons), in the
  // engine's exact words (dispatch/dispatcher.py): [pattern, key, names of the groups].
  // tests/unit/test_volunteer_app.py checks that each still matches the engine's text.
  // ENGINE_TEXTS begin
  const ENGINE_TEXTS = [
    [/^the fastest volunteer needs about (\d+) s and (\d+) s are gone or needed to set off: more than the (\d+) s target$/, "r_too_slow", ["best", "used", "target"]],
    [/^no available volunteer with (.+) who could be there within (\d+) s \((\d+) m at most\)$/, "r_none_useful", ["skills", "eta", "radius"]],
    [/^no available volunteer with (.+) within (\d+) m$/, "r_none_radius", ["skills", "radius"]],
    [/^the alert budget \((\d+)\) is spent and nobody accepted$/, "r_budget", ["n"]],
    [/^nobody accepted after (\d+) waves$/, "r_no_accept", ["n"]],
    [/^responders overdue, and nobody else accepted after (\d+) waves$/, "r_overdue_no_accept", ["n"]],
    [/^every alerted volunteer declined or timed out, and nobody else is in reach$/, "r_all_declined", []],
    [/^escalated by (.+)$/, "r_escalated_by", ["by"]],
    [/^resolved by (.+)$/, "r_resolved_by", ["by"]],
    [/^cancelled by (.+)$/, "r_cancelled_by", ["by"]],
    [/^merged into (\S+) by (.+)$/, "r_merged_by", ["id", "by"]],
    [/^incident merged into another report of the same event$/, "r_merged", []],
    [/^alert expired$/, "r_alert_expired", []],
    [/^you declined this alert$/, "r_you_declined", []],
    [/^filled by others$/, "r_filled", []],
    [/^already committed to another incident$/, "r_committed", []],
    [/^a faster responder is going; you go on as a backup$/, "r_faster_backup", []],
    [/^a faster responder is going$/, "r_faster", []],
    [/^you are now the primary responder$/, "r_now_primary", []],
    [/^enough responders on scene$/, "r_enough", []],
    [/^assigned elsewhere by the control room$/, "r_elsewhere", []],
    [/^no longer needed$/, "r_no_longer", []],
    [/^incident moved$/, "r_moved", []],
    [/^incident (open|alerting|assigned|on_scene|escalated|resolved|cancelled)$/, "r_incident", ["state"]],
    [/^location updated$/, "r_location_updated", []],
    [/^confirmed$/, "r_confirmed", []],
    [/^assigned by operator$/, "r_by_operator", []],
    [/^withdrawn$|^the volunteer withdrew$/, "r_withdrew", []],
  ];
  // ENGINE_TEXTS end
  const KINDS = ["cardiac_arrest", "medical", "fall", "fire", "dispute", "security", "lost_person", "other"];
  const ENDED = new Set(["resolved", "cancelled"]);

  let lang = localStorage.getItem("dispatch.lang") || "zh";
  const t = (key, vars) => {
    let s = (TEXT[lang] && TEXT[lang][key]) || TEXT.en[key] || key;
    for (const [k, v] of Object.entries(vars || {})) s = s.replace(`{${k}}`, () => String(v));
    return s;
  };
  const has = (key) => Boolean(TEXT[lang][key] || TEXT.en[key]);
  // An engine or a person's name: the engine's own placeholders are translated.
  const byName = (by) => (by === "engine" ? t("by_engine") : by === "operator" ? t("by_operator") : by);
  const skillsText = (list) => (list === "no particular skills" ? t("sk_none")
    : list.split(", ").map((k) => (has(`sk_${k}`) ? t(`sk_${k}`) : k)).join(t("sk_sep")));
  const modeName = (mode) => (has(`mode_${mode}`) ? t(`mode_${mode}`) : mode);

  // One of the engine's texts in the page's language; anything else (an operator's own
  // words, a text this page does not know yet) as it is.
  function engineText(text) {
    if (!text) return "";
    for (const [re, key, names] of ENGINE_TEXTS) {
      const m = re.exec(text);
      if (!m) continue;
      const vars = {};
      names.forEach((name, i) => {
        const v = m[i + 1];
        vars[name] = name === "skills" ? skillsText(v) : name === "by" ? byName(v)
          : name === "state" ? t(`state_${v}`) : v;
      });
      return t(key, vars);
    }
    return text;
  }

  // Why the engine escalated, from its code and figures (escalation_code and
  // escalation_params, dispatch/effects.py Escalation) in the page's words; an operator's
  // own words, and records from before the codes, by their text.
  const ESCALATIONS = {
    too_slow: "r_too_slow", nobody_in_time: "r_none_useful", nobody_in_reach: "r_none_radius",
    alert_budget_spent: "r_budget", nobody_accepted: "r_no_accept",
    responders_overdue: "r_overdue_no_accept", all_declined: "r_all_declined", operator: "r_escalated_by",
  };
  function escalationText(code, params, text) {
    const key = ESCALATIONS[code];
    if (!key || (code === "operator" && !/^escalated by /.test(text || ""))) return engineText(text);
    const p = params || {};
    const skills = Array.isArray(p.skills) && p.skills.length ? p.skills.join(", ") : "no particular skills";
    return t(key, { ...p, skills: skillsText(skills), by: byName(String(p.by || "")) });
  }

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
  let subdistricts = []; // the deployment's subdistrict names (/api/area), for the filters
  let places = []; // the gazetteer (/api/places): names on the map

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
    constructor(status, message, code) { super(message); this.status = status; this.code = code || null; }
  }
  const NETWORK = -1; // no answer at all (status 0 is an action the operator called off)

  // What went wrong, in the page's language. The engine's messages are English and
  // precise: the English page shows them, the Chinese one says the same by status.
  function errorText(err) {
    if (!(err instanceof ApiError)) return t("err_network");
    if (err.code === "operator_disabled" || /^operator actions are disabled/.test(err.message)) {
      return t("err_operator_disabled");
    }
    if (err.code === "token_invalid" || err.code === "token_missing") return t("token_wrong");
    if (err.status === NETWORK) return t("err_network");
    if (lang === "en" && err.message) return err.message;
    if (err.code && has(`err_${err.code}`)) return t(`err_${err.code}`);
    return has(`err_${err.status}`) ? t(`err_${err.status}`) : t("err_other", { status: err.status });
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (session.token) headers.Authorization = `Bearer ${session.token}`;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(NETWORK, String(err && err.message ? err.message : err));
    }
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok) {
      throw new ApiError(response.status, (data && data.error) || response.statusText, data && data.code);
    }
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
  $("operator").addEventListener("click", () => {
    if (operatorOff) toast(t("err_operator_disabled"), true);
    else askToken().catch(() => {});
  });

  // The engine runs without an operator token (a plain `dispatch run`): no token can
  // work, so say that instead of asking for one (GET /api/incidents tells).
  let operatorOff = false;
  const isOperatorOff = (err) => err instanceof ApiError
    && (err.code === "operator_disabled" || /^operator actions are disabled/.test(err.message));

  function renderOperator() {
    const b = $("operator");
    b.classList.toggle("off", operatorOff);
    b.title = operatorOff ? t("err_operator_disabled") : "";
    b.textContent = operatorOff ? t("operator_off")
      : session.token ? t("signed_in_as", { name: session.by || "operator" }) : t("sign_in");
  }

  // Every operator action: the token from this session (asked once), `by` from the name.
  async function operate(method, path, body) {
    // Known to be off (the listing said so; a restarted engine is read again on reconnect).
    if (operatorOff) throw new ApiError(403, t("err_operator_disabled"), "operator_disabled");
    if (!session.token) await askToken();
    try {
      return await api(method, path, body);
    } catch (err) {
      if (isOperatorOff(err)) {
        operatorOff = true;
        renderOperator();
        throw err;
      }
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
      if (!session.token && !operatorOff) await askToken(); // first, so that `by` is the name just given
      const state = await operate("POST", `/api/incidents/${encodeURIComponent(id)}/${action}`,
        { by: session.by || "operator", ...(extra || {}) });
      upsert(state);
      toast(t("action_ok", { id, act: t(`act_${action}`).replace("…", "") }));
    } catch (err) {
      if (err.status !== 0) toast(errorText(err), true, err.message);
    }
  }

  // ------------------------------------------------------------------ undo

  // Resolve, escalate and cancel (after their confirmation) are held here for UNDO_MS
  // with an "Undo" button, and only then sent: undone, nothing ever reaches the engine,
  // so there is nothing to take back there. A page that closes meanwhile sends what it
  // holds at once (fetch keepalive outlives the page). Assign and amend go at once.
  const UNDO_MS = 5000;
  const held = new Map(); // id -> {action, body, due, timer}
  let undoTicker = null;

  async function hold(id, action) {
    if (held.has(id)) return;
    if (!operatorOff && !session.token) {
      try { await askToken(); } catch (_) { return; } // first, so that `by` is the name given
    }
    if (operatorOff) { act(id, action); return; } // nothing to hold: say what is wrong now
    const h = { action, body: { by: session.by || "operator" }, due: Date.now() + UNDO_MS };
    h.timer = setTimeout(() => send(id), UNDO_MS);
    held.set(id, h);
    renderUndo();
    scheduleRender();
  }
  function send(id) {
    const h = held.get(id);
    if (!h) return;
    clearTimeout(h.timer);
    held.delete(id);
    renderUndo();
    scheduleRender();
    act(id, h.action, h.body);
  }
  function undo(id) {
    const h = held.get(id);
    if (!h) return;
    clearTimeout(h.timer);
    held.delete(id);
    renderUndo();
    scheduleRender();
    toast(t("undone", { id, act: t(`act_${h.action}`) }));
  }
  // The bar names the latest held action and counts down; each held row has its own button.
  function renderUndo() {
    const bar = $("undo");
    const last = [...held.entries()].pop();
    clearInterval(undoTicker);
    if (!last) { bar.hidden = true; return; }
    const [id, h] = last;
    const paint = () => {
      const secs = Math.max(0, Math.ceil((h.due - Date.now()) / 1000));
      $("undo-text").textContent = t("undo_pending", { id, act: t(`act_${h.action}`), s: secs });
    };
    paint();
    bar.dataset.id = id;
    bar.hidden = false;
    undoTicker = setInterval(paint, 250);
  }
  $("undo-button").addEventListener("click", () => undo($("undo").dataset.id));
  // Closing or reloading the page sends what is held: the operator confirmed it.
  window.addEventListener("pagehide", () => {
    for (const [id, h] of held) {
      clearTimeout(h.timer);
      const headers = { "Content-Type": "application/json" };
      if (session.token) headers.Authorization = `Bearer ${session.token}`;
      fetch(`/api/incidents/${encodeURIComponent(id)}/${h.action}`,
        { method: "POST", headers, body: JSON.stringify(h.body), keepalive: true }).catch(() => {});
    }
    held.clear();
  });

  let toastTimer = null;
  // `detail`: the engine's own words, on hover (the toast itself is in the page's language).
  function toast(message, isError, detail) {
    const node = $("toast");
    node.textContent = message;
    node.title = detail && detail !== message ? detail : "";
    node.className = isError ? "toast err" : "toast";
    node.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { node.hidden = true; }, isError ? 8000 : 3500);
  }

  // ------------------------------------------------------------------ incidents

  function upsert(state) {
    if (!state || !state.id) return;
    // An action's answer carries no subdistrict (the listing and the detail do): keep it.
    const known = open.get(state.id) || history.get(state.id);
    if (known && state.subdistrict === undefined && known.subdistrict) state.subdistrict = known.subdistrict;
    if (ENDED.has(state.state)) {
      open.delete(state.id);
      if (historyLoaded) history.set(state.id, state);
    } else {
      const old = open.get(state.id);
      if (old && old.version > state.version) return; // an older answer overtaken
      open.set(state.id, state);
    }
    notice(state);
    scheduleRender();
    if (selected === state.id) refreshDetail();
  }

  // ------------------------------------------------------------------ attention

  // A new P1 incident and every escalation ring (WebAudio, no file) and raise a browser
  // notification, unless muted (remembered). What the page finds when it opens is not news.
  const attention = {
    muted: localStorage.getItem("dispatch.muted") === "1",
    primed: false, // after the first queue: from then on, what is new is news
    seen: new Map(), // id -> the last state seen
    log: [], // what rang, for the tests: {kind, id, sound, notified}
    audio: null,
  };

  function notice(s) {
    const before = attention.seen.get(s.id);
    attention.seen.set(s.id, s.state);
    if (!attention.primed || ENDED.has(s.state)) return;
    if (s.state === "escalated" && before !== "escalated") alarm("escalated", s);
    else if (before === undefined && s.priority === 1) alarm("p1", s);
  }

  function unlockAudio() {
    try {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      if (!attention.audio && Ctx) attention.audio = new Ctx();
      if (attention.audio && attention.audio.state === "suspended") attention.audio.resume();
    } catch (_) { /* no sound here: the notification and the red row still show */ }
  }
  // Browsers start sound only after a gesture: the first click or key anywhere unlocks it.
  document.addEventListener("pointerdown", unlockAudio, { once: true, capture: true });
  document.addEventListener("keydown", unlockAudio, { once: true, capture: true });

  function beep(kind) {
    const ctx = attention.audio;
    if (!ctx || ctx.state !== "running") return false;
    const at = ctx.currentTime;
    // escalation: three falling tones; a new P1: two rising ones
    const tones = kind === "escalated" ? [880, 660, 440] : [660, 880];
    tones.forEach((f, i) => {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.type = "sine";
      osc.frequency.value = f;
      gain.gain.setValueAtTime(0.0001, at + i * 0.25);
      gain.gain.exponentialRampToValueAtTime(0.4, at + i * 0.25 + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, at + i * 0.25 + 0.22);
      osc.connect(gain).connect(ctx.destination);
      osc.start(at + i * 0.25);
      osc.stop(at + i * 0.25 + 0.23);
    });
    return true;
  }

  function alarm(kind, s) {
    const entry = { kind, id: s.id, sound: false, notified: false, muted: attention.muted };
    attention.log.push(entry);
    if (attention.log.length > 100) attention.log.shift();
    if (attention.muted) return;
    entry.sound = beep(kind);
    if ("Notification" in window && Notification.permission === "granted") {
      try {
        const n = new Notification(t(kind === "escalated" ? "notify_escalated" : "notify_p1", { kind: t(`kind_${s.kind}`) }), {
          body: [s.address || s.id, kind === "escalated" ? escalationText(s.escalation_code, s.escalation_params, s.escalation_reason) : ""].filter(Boolean).join("\n"),
          tag: `${kind}-${s.id}`,
        });
        n.onclick = () => { window.focus(); select(s.id); n.close(); };
        entry.notified = true;
      } catch (_) { /* e.g. a browser that allows notifications only from a service worker */ }
    }
  }

  function renderMute() {
    const b = $("mute");
    b.textContent = attention.muted ? t("mute_off") : t("mute_on");
    b.setAttribute("aria-pressed", String(attention.muted));
    b.title = t("mute_title");
  }
  $("mute").addEventListener("click", () => {
    attention.muted = !attention.muted;
    localStorage.setItem("dispatch.muted", attention.muted ? "1" : "0");
    renderMute();
    if (!attention.muted) {
      unlockAudio();
      if ("Notification" in window && Notification.permission === "default") {
        Notification.requestPermission().catch(() => {});
      }
    }
  });

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
    if (typeof body.operator_actions === "boolean" && operatorOff !== !body.operator_actions) {
      operatorOff = !body.operator_actions;
      renderOperator();
    }
    const seen = new Set();
    for (const s of body.incidents) { seen.add(s.id); open.set(s.id, s); notice(s); }
    attention.primed = true;
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

  // ------------------------------------------------------------------ search and filters

  const OPEN_STATES = ["open", "alerting", "assigned", "on_scene", "escalated"];
  function fillFilters() {
    const fill = (id, first, values, name) => {
      const node = $(id);
      const value = node.value;
      node.replaceChildren(el("option", { value: "" }, t(first)), ...values.map((v) => el("option", { value: v }, t(`${name}_${v}`))));
      node.value = value;
    };
    fill("q-kind", "all_kinds", KINDS, "kind");
    fill("h-kind", "all_kinds", KINDS, "kind");
    fill("q-state", "all_states", OPEN_STATES, "state");
    fill("h-state", "all_states", [...ENDED], "state");
    for (const id of ["q-text", "h-text"]) $(id).placeholder = t("search");
    // The deployment's subdistricts ([area] subdistricts, from /api/area): names as they are.
    for (const id of ["q-sub", "h-sub"]) {
      const node = $(id);
      const value = node.value;
      node.replaceChildren(el("option", { value: "" }, t("all_subdistricts")),
        ...subdistricts.map((name) => el("option", { value: name }, name)));
      node.value = subdistricts.includes(value) ? value : "";
      node.hidden = !subdistricts.length;
    }
  }

  // Words typed match the id, address, cell, description, kind and state in either
  // language, and responders' ids; every word must match.
  function matcher(prefix) {
    const words = $(`${prefix}-text`).value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const kind = $(`${prefix}-kind`).value;
    const state = $(`${prefix}-state`).value;
    const sub = $(`${prefix}-sub`).value;
    return (s) => {
      if ((kind && s.kind !== kind) || (state && s.state !== state)) return false;
      if (sub && s.subdistrict !== sub) return false;
      if (!words.length) return true;
      const hay = [s.id, s.address, s.cell, s.description, s.subdistrict,
        TEXT.zh[`kind_${s.kind}`], TEXT.en[`kind_${s.kind}`], TEXT.zh[`state_${s.state}`], TEXT.en[`state_${s.state}`],
        ...(s.responders || []).map((r) => r.volunteer_id)].filter(Boolean).join(" ").toLowerCase();
      return words.every((w) => hay.includes(w));
    };
  }
  const filtering = (prefix) => Boolean($(`${prefix}-text`).value.trim() || $(`${prefix}-kind`).value
    || $(`${prefix}-state`).value || $(`${prefix}-sub`).value);
  for (const id of ["q-text", "q-kind", "q-state", "q-sub"]) $(id).addEventListener("input", () => scheduleRender());
  for (const id of ["h-text", "h-kind", "h-state", "h-sub"]) $(id).addEventListener("input", () => renderHistory());

  const rows = new Map(); // id -> {node, version, lang}
  function renderQueue() {
    const list = $("queue");
    const all = [...open.values()];
    const items = all.filter(matcher("q")).sort(urgency);
    const shown = new Set(items.map((s) => s.id));
    $("queue-count").textContent = filtering("q") ? t("shown_of", { a: items.length, b: all.length }) : String(all.length);
    $("queue-empty").hidden = items.length > 0;
    $("queue-empty").textContent = all.length ? t("filtered_empty") : t("queue_empty");
    for (const [id, row] of rows) if (!shown.has(id)) { row.node.remove(); rows.delete(id); }
    let previous = null;
    for (const s of items) {
      let row = rows.get(s.id);
      const hk = held.has(s.id) ? held.get(s.id).action : "";
      if (!row || row.version !== s.version || row.lang !== lang || row.held !== hk) {
        const node = queueItem(s);
        if (row) row.node.replaceWith(node);
        row = { node, version: s.version, lang, held: hk };
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
    // Ending or escalating an incident: a second click confirms, then it is held for a
    // few seconds with an "Undo" (see hold) before it is sent.
    const confirmable = (label, action, cls) => {
      const b = el("button", { type: "button", class: cls || "danger", "data-act": action }, label);
      b.addEventListener("click", (ev) => {
        ev.stopPropagation();
        if (!b.classList.contains("confirming")) {
          b.classList.add("confirming");
          b.textContent = t("confirm");
          setTimeout(() => { b.classList.remove("confirming"); b.textContent = label; }, 4000);
          return;
        }
        hold(s.id, action);
      });
      return b;
    };
    const plain = (label, action, handler) => el("button", {
      type: "button", "data-act": action,
      onclick: (ev) => { ev.stopPropagation(); handler(); },
    }, label);
    const h = held.get(s.id);
    const node = el("li", {
      class: `inc p${s.priority}${s.state === "escalated" ? " escalated" : ""}${h ? " held" : ""}`,
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
        duplicateInfo(s),
        s.state === "escalated" && s.escalation_reason ? el("div", { class: "reason" }, escalationText(s.escalation_code, s.escalation_params, s.escalation_reason)) : null,
        responders.length ? el("ul", { class: "responders" }, responders) : null,
        el("div", { class: "meta" }, `${t("alerts_sent", { n: s.alerts_sent })} · ${t("needed", { n: s.responders_needed })}`)),
      h ? el("div", { class: "actions" }, plain(`${t("undo")} · ${t(`act_${h.action}`)}`, "undo", () => undo(s.id)))
      : el("div", { class: "actions" },
        confirmable(t("act_resolve"), "resolve", "confirm"),
        s.state === "escalated" ? null : confirmable(t("act_escalate"), "escalate", "confirm"),
        plain(t("act_assign"), "assign", () => openAssign(s)),
        confirmable(t("act_cancel"), "cancel")));
    return node;
  }

  // Duplicate reports (docs/protocol.md): a likely duplicate's badge, linking to the first
  // report, with "merge into" (a second click confirms, as for cancel); where a merged
  // report went; what was merged into this one. null when none of these.
  function duplicateInfo(s) {
    const link = (key, id) => el("a", {
      href: "#", class: "dup-link", "data-id": id,
      onclick: (ev) => { ev.preventDefault(); ev.stopPropagation(); select(id); },
    }, t(key, { id }));
    if (s.merged_into) return el("div", { class: "dup merged" }, link("merged_into", s.merged_into));
    const parts = [];
    const into = s.likely_duplicate_of;
    if (into && !ENDED.has(s.state)) {
      parts.push(el("span", { class: "dup-badge", title: t("dup_title") }, link("dup_of", into)));
      const label = t("dup_merge", { id: into });
      const b = el("button", { type: "button", class: "confirm", "data-act": "merge" }, label);
      b.addEventListener("click", (ev) => {
        ev.stopPropagation();
        if (!b.classList.contains("confirming")) {
          b.classList.add("confirming");
          b.textContent = t("confirm");
          setTimeout(() => { b.classList.remove("confirming"); b.textContent = label; }, 4000);
          return;
        }
        act(s.id, "merge", { into });
      });
      if (!operatorOff && open.has(into)) parts.push(b); // the first ended: nothing to merge into
    }
    if (s.merged_from && s.merged_from.length) {
      parts.push(el("span", { class: "hint" }, t("merged_from", { ids: s.merged_from.map((x) => `#${x}`).join(", ") })));
    }
    return parts.length ? el("div", { class: "dup" }, parts) : null;
  }
  // A timeline line's words for the duplicate events; null for the others.
  function duplicateEvent(e) {
    if (e.type === "duplicate_suspected") return t("ev_dup_of", { id: e.of, m: Math.round(e.distance_m), s: mmss(Math.abs(e.apart_s)) });
    if (e.type === "merged") return e.into ? t("ev_merged_into", { id: e.into }) : t("ev_merged_from", { id: e.merged });
    return null;
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
      .forEach((v) => list.append(el("option", { value: v.id },
        `${t("metres", { m: Math.round(dist(v) * 111195) })} · ${modeName(v.mode)}`)));
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
    if (editing && editing.id !== id) closeEdit();
    selected = id;
    scheduleRender();
    refreshDetail();
  }
  $("detail-close").addEventListener("click", () => { closeEdit(); selected = null; $("detail").hidden = true; scheduleRender(); });

  function eventName(e) {
    if (e.type === "state") return `${stateName(e.from)} → ${stateName(e.to)}`;
    return has(`ev_${e.type}`) ? t(`ev_${e.type}`) : e.type;
  }
  const stateName = (state) => (has(`state_${state}`) ? t(`state_${state}`) : state);

  function eventDetail(e) {
    const parts = [e.volunteer_id, e.role ? t(`role_${e.role}`) : null];
    if (e.type === "alerted" && typeof e.wave === "number") parts.push(e.wave ? t("wave", { n: e.wave }) : t("wave_hand"));
    if ((e.type === "alerted" || e.type === "assigned") && typeof e.eta_s === "number") parts.push(`${t("eta")} ${mmss(e.eta_s)}`);
    if (e.how && has(`how_${e.how}`)) parts.push(t(`how_${e.how}`));
    if (e.why && has(`why_${e.why.replace(/ /g, "_")}`)) parts.push(t(`why_${e.why.replace(/ /g, "_")}`));
    if (e.type === "overdue" && typeof e.waited_s === "number") parts.push(t("waited", { s: mmss(e.waited_s) }));
    if (e.type === "amended" && e.changes) parts.push(changesText(e.changes));
    parts.push(duplicateEvent(e));
    // "escalated by X" already names who: the reason says it in the page's words
    const reason = !e.reason ? null
      : e.type === "escalated" ? escalationText(e.code, e.params, e.reason) : engineText(e.reason);
    if (e.by && !(e.reason && /^escalated by /.test(e.reason))) parts.push(`${t("by")} ${byName(e.by)}`);
    parts.push(reason);
    if (e.type === "arrived" && e.verified === false) parts.push(t("unverified"));
    if (e.type === "target_missed" && e.claimed_arrival) parts.push(t("ev_claimed"));
    if (e.type === "target_missed" && e.target_s) parts.push(mmss(e.target_s));
    return parts.filter(Boolean).join(" · ");
  }

  // What an amendment changed, in the page's words: "address: 小营巷 40 号; moved".
  function changesText(changes) {
    const out = [];
    for (const [k, v] of Object.entries(changes)) {
      if (k === "lat" || k === "lon") { // one line for the place, whichever coordinate moved
        if (!out.includes(t("ch_moved"))) out.push(t("ch_moved"));
        continue;
      }
      const label = k === "responders_needed" ? t("f_responders") : has(`f_${k}`) ? t(`f_${k}`) : k;
      let value = v;
      if (k === "kind") value = t(`kind_${v}`);
      else if (k === "priority") value = `P${v}`;
      else if (k === "skills") value = v.length ? skillsText(v.join(", ")) : t("sk_none");
      out.push(t("ch_kv", { k: label.replace(/（.*|\s*\(.*/, ""), v: value }));
    }
    return out.join(t("ch_sep"));
  }

  async function refreshDetail() {
    if (!selected) return;
    const id = selected;
    let d;
    try { d = await read(`/api/incidents/${encodeURIComponent(id)}`); } catch (_) { return; }
    if (selected !== id) return;
    const times = Object.entries(d.times).filter(([, v]) => v)
      .map(([k, v]) => el("tr", {}, el("td", {}, t(`t_${k}`)), el("td", {}, dayTime(v))));
    const alerts = d.alerts.map((a) => el("tr", { "data-status": a.status },
      el("td", {}, a.volunteer_id), el("td", {}, a.wave ? t("wave", { n: a.wave }) : t("wave_hand")),
      el("td", {}, has(`as_${a.status}`) ? t(`as_${a.status}`) : a.status),
      el("td", {}, `${t("eta")} ${mmss(a.eta_s)}`), el("td", {}, t("metres", { m: Math.round(a.distance_m) }))));
    const events = d.events.map((e) => el("tr", { class: `ev-${e.type}` },
      el("td", {}, hhmm(e.at)), el("td", {}, eventName(e)),
      el("td", {}, eventDetail(e))));
    $("detail-body").replaceChildren(...[
      el("h3", {}, `${t(`kind_${d.kind}`)} · ${t(`state_${d.state}`)}`),
      el("div", { class: "hint" }, `${d.id} · ${d.cell || ""} · P${d.priority}`),
      el("div", {}, d.address || ""), d.description ? el("div", { class: "hint" }, d.description) : null,
      d.escalation_reason ? el("div", { class: "reason" }, escalationText(d.escalation_code, d.escalation_params, d.escalation_reason)) : null,
      d.end_reason ? el("div", { class: "hint" }, engineText(d.end_reason)) : null,
      duplicateInfo(d),
      ENDED.has(d.state) || operatorOff ? null : el("div", { class: "detail-actions" },
        el("button", { type: "button", "data-act": "edit", onclick: () => openEdit(d) }, t("act_edit"))),
      el("h4", {}, t("detail_times")), el("table", { class: "times" }, times),
      alerts.length ? el("h4", {}, t("detail_alerts")) : null, alerts.length ? el("table", {}, alerts) : null,
      el("h4", {}, t("detail_events")), el("table", {}, events)].filter(Boolean));
    $("detail").hidden = false;
    if (editing && editing.id === id && ENDED.has(d.state)) closeEdit();
  }

  // ------------------------------------------------------------------ amend (protocol 1.1)

  // The incident being edited (its state when the form opened), and a new place picked on
  // the map. Only the fields that differ from when the form opened are sent (PATCH).
  let editing = null;
  function openEdit(d) {
    editing = { id: d.id, d, lat: null, lon: null };
    const kinds = $("e-kind");
    kinds.replaceChildren(...KINDS.map((k) => el("option", { value: k }, t(`kind_${k}`))));
    kinds.value = d.kind;
    $("e-priority").value = String(d.priority);
    $("e-address").value = d.address || "";
    $("e-description").value = d.description || "";
    $("e-responders").value = String(d.responders_needed);
    $("e-skills").value = (d.skills || []).join(", ");
    $("edit-result").textContent = "";
    showPlace();
    $("edit-form").hidden = false;
    $("edit-form").scrollIntoView({ block: "nearest" });
    $("e-address").focus();
  }
  function showPlace() {
    if (!editing) return;
    const moved = editing.lat !== null;
    const lat = moved ? editing.lat : editing.d.lat, lon = moved ? editing.lon : editing.d.lon;
    $("e-place").textContent = t(moved ? "edit_place_new" : "edit_place", { lat: lat.toFixed(5), lon: lon.toFixed(5) });
    $("e-place").classList.toggle("warn", moved);
  }
  function closeEdit() {
    editing = null;
    $("edit-form").hidden = true;
    $("g-pick").replaceChildren();
  }
  $("edit-cancel").addEventListener("click", closeEdit);
  $("edit-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!editing) return;
    const d = editing.d, body = {};
    const address = $("e-address").value.trim(), description = $("e-description").value.trim();
    if (address !== (d.address || "")) body.address = address;
    if (description !== (d.description || "")) body.description = description;
    if ($("e-kind").value !== d.kind) body.kind = $("e-kind").value;
    if (Number($("e-priority").value) !== d.priority) body.priority = Number($("e-priority").value);
    const n = Number($("e-responders").value);
    if (n !== d.responders_needed) body.responders = n;
    const skills = $("e-skills").value.split(/[,，、\s]+/).map((x) => x.trim()).filter(Boolean);
    if (skills.join(",") !== (d.skills || []).join(",")) body.skills = skills;
    if (editing.lat !== null) { body.lat = editing.lat; body.lon = editing.lon; }
    const result = $("edit-result");
    if (!Object.keys(body).length) { result.className = "result"; result.textContent = t("edit_nothing"); return; }
    try {
      if (!session.token && !operatorOff) await askToken();
      body.by = session.by || "operator";
      const id = editing.id;
      const state = await operate("PATCH", `/api/incidents/${encodeURIComponent(id)}`, body);
      closeEdit();
      upsert(state); // the same shape as GET: the queue and the detail update at once
      toast(t("edit_ok", { id }));
    } catch (err) {
      if (err.status === 0) return; // the token was not given
      result.className = "result err";
      result.textContent = errorText(err);
      result.title = err.message;
    }
  });

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
    } catch (err) { toast(errorText(err), true, err.message); }
  }

  function renderHistory() {
    const items = [...history.values()].filter(matcher("h"))
      .sort((a, b) => Date.parse(b.reported_at) - Date.parse(a.reported_at));
    $("history-empty").hidden = items.length > 0;
    $("history-empty").textContent = history.size ? t("filtered_empty") : t("history_empty");
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
      if (err.status === 0) return; // the token was not given
      result.className = "result err";
      result.textContent = errorText(err);
      result.title = err.message;
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
    subdistricts = [...new Set(area.features.filter((f) => f.properties.kind === "subdistrict")
      .map((f) => f.properties.name).filter(Boolean))].sort((a, b) => a.localeCompare(b, "zh-CN"));
    fillFilters();
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

  // A cell's hover text: its coverage now and today's figures there (/api/figures by_cell).
  function cellTitle(id, eta) {
    const parts = [id];
    if (eta !== undefined) parts.push(eta === null ? t("legend_none") : `${t("eta")} ${mmss(eta)}`);
    const f = figures && figures.by_cell && figures.by_cell[id];
    if (f) {
      parts.push(t("cell_today", { n: f.incidents, a: f.within_target, b: f.decided,
        p90: mmss(f.p90_time_to_arrival_s) }));
    }
    return parts.join(" · ");
  }

  function renderCoverage() {
    const on = $("layer-coverage").checked && coverage;
    for (const [id, path] of cellPaths) {
      path.setAttribute("fill", "none");
      path.setAttribute("fill-opacity", "0.5");
      path.firstChild.textContent = cellTitle(id);
    }
    if (!on) { $("cov-summary").textContent = ""; return; }
    for (const c of coverage.cells) {
      const path = cellPaths.get(c.cell);
      if (!path) continue;
      path.setAttribute("fill", coverageColour(c.eta_s));
      path.firstChild.textContent = cellTitle(c.cell, c.eta_s);
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
      const skills = v.skills.map((k) => (has(`sk_${k}`) ? t(`sk_${k}`) : k)).join(t("sk_sep"));
      title.textContent = `${v.id} · ${modeName(v.mode)}${skills ? ` · ${skills}` : ""}${v.incident_id ? ` → ${v.incident_id}` : ""}`;
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
    }
    renderLabels();
  }

  // ------------------------------------------------------------------ names on the map

  function renderPlaces() {
    const g = $("g-places");
    g.replaceChildren();
    if (!projection) return;
    const r = 2.2 * upp();
    for (const p of places) {
      const dot = svg("circle", { cx: projection.x(p.lon).toFixed(1), cy: projection.y(p.lat).toFixed(1), r: r.toFixed(2) });
      const title = svg("title");
      title.textContent = p.name_en ? `${p.name} · ${p.name_en}` : p.name;
      dot.append(title);
      g.append(dot);
    }
    renderLabels();
  }

  // Labels never overlap: they are laid out greedily, most important first (incidents
  // by urgency, then the gazetteer's names by rank), each tried right of its point, then
  // left, above and below, and left out where all of those are taken. Names keep off the
  // incident markers; an incident's label does too where it can, else it may lie over
  // another marker (never over a label). Boxes are measured (getBBox), never guessed.
  function renderLabels() {
    const g = $("g-labels");
    g.replaceChildren();
    if (!projection) return;
    const u = upp();
    const taken = []; // labels placed
    const marks = []; // incident markers
    const hits = (list, b) => list.some((o) => b.x < o.x + o.width && o.x < b.x + b.width
      && b.y < o.y + o.height && o.y < b.y + b.height);
    const markR = 9 * u;
    const incidents = [...open.values()].sort(urgency);
    for (const s of incidents) {
      const x = projection.x(s.lon), y = projection.y(s.lat);
      marks.push({ x: x - markR, y: y - markR, width: 2 * markR, height: 2 * markR });
    }
    const pad = 2 * u;
    const place = (text, x, y, gap, cls, size, attrs, overMarks) => {
      const node = svg("text", { class: cls, "font-size": (size * u).toFixed(1), "stroke-width": (3 * u).toFixed(1), ...attrs });
      node.textContent = text;
      g.append(node);
      const spots = [["start", x + gap, y + size * u * 0.35], ["end", x - gap, y + size * u * 0.35],
        ["middle", x, y - gap - size * u * 0.2], ["middle", x, y + gap + size * u * 0.9]];
      for (const free of overMarks ? [true, false] : [true]) {
        for (const [anchor, lx, ly] of spots) {
          node.setAttribute("x", lx.toFixed(1)); node.setAttribute("y", ly.toFixed(1));
          node.setAttribute("text-anchor", anchor);
          const b = node.getBBox();
          const box = { x: b.x - pad, y: b.y - pad, width: b.width + 2 * pad, height: b.height + 2 * pad };
          if (!hits(taken, box) && !(free && hits(marks, box))) { taken.push(box); return true; }
        }
      }
      node.remove();
      return false;
    };
    // The marker's own box is taken: its label goes beside it, never on another marker.
    for (const s of incidents) {
      place(t(`kind_${s.kind}`), projection.x(s.lon), projection.y(s.lat), markR * 1.3, "mark-label", 14, { "data-id": s.id }, true);
    }
    const byRank = [...places].sort((a, b) => a.rank - b.rank);
    for (const p of byRank) {
      place(placeName(p), projection.x(p.lon), projection.y(p.lat), 4 * u, "place-label", 12, { "data-place": p.name });
    }
  }

  async function loadPlaces() {
    try { places = (await read("/api/places")).places; } catch (_) { places = []; }
    renderPlaces();
  }

  // ------------------------------------------------------------------ base map tiles

  // Only when the deployment has its own tiles ([map] tile_url): Web Mercator tiles laid
  // under the drawing. Over a district the page's own projection and Web Mercator differ
  // by well under a pixel, so each tile is placed by its corners.
  let mapSettings = null;
  const tileX = (lon, z) => ((lon + 180) / 360) * 2 ** z;
  const tileY = (lat, z) => {
    const r = (lat * Math.PI) / 180;
    return ((1 - Math.log(Math.tan(r) + 1 / Math.cos(r)) / Math.PI) / 2) * 2 ** z;
  };
  const tileLon = (x, z) => (x / 2 ** z) * 360 - 180;
  const tileLat = (y, z) => (Math.atan(Math.sinh(Math.PI * (1 - (2 * y) / 2 ** z))) * 180) / Math.PI;
  function renderTiles() {
    const g = $("g-tiles");
    g.replaceChildren();
    if (!projection || !mapSettings || !mapSettings.tile_url) return;
    const vb = $("map").viewBox.baseVal;
    const minLon = projection.lon(vb.x), maxLon = projection.lon(vb.x + vb.width);
    const maxLat = projection.lat(vb.y), minLat = projection.lat(vb.y + vb.height);
    const box = $("map").getBoundingClientRect();
    // the zoom whose 256-pixel tiles come closest to the screen's pixels, at most ~120 tiles
    let z = Math.round(Math.log2((360 * Math.max(1, box.width)) / ((maxLon - minLon) * 256)));
    z = Math.max(1, Math.min(mapSettings.tile_max_zoom || 18, z));
    while (z > 1 && (Math.floor(tileX(maxLon, z)) - Math.floor(tileX(minLon, z)) + 1)
      * (Math.floor(tileY(minLat, z)) - Math.floor(tileY(maxLat, z)) + 1) > 120) z -= 1;
    for (let tx = Math.floor(tileX(minLon, z)); tx <= Math.floor(tileX(maxLon, z)); tx++) {
      for (let ty = Math.floor(tileY(maxLat, z)); ty <= Math.floor(tileY(minLat, z)); ty++) {
        const x0 = projection.x(tileLon(tx, z)), x1 = projection.x(tileLon(tx + 1, z));
        const y0 = projection.y(tileLat(ty, z)), y1 = projection.y(tileLat(ty + 1, z));
        const href = mapSettings.tile_url.replace("{z}", z).replace("{x}", tx).replace("{y}", ty);
        g.append(svg("image", { href, x: x0.toFixed(1), y: y0.toFixed(1), width: (x1 - x0).toFixed(1),
          height: (y1 - y0).toFixed(1), preserveAspectRatio: "none", "data-tile": `${z}/${tx}/${ty}` }));
      }
    }
  }
  async function loadMapSettings() {
    try { mapSettings = await read("/api/map"); } catch (_) { mapSettings = null; }
    const attribution = $("map-attribution");
    attribution.textContent = (mapSettings && mapSettings.tile_url && mapSettings.tile_attribution) || "";
    attribution.hidden = !attribution.textContent;
    renderTiles();
  }

  $("map").addEventListener("click", (ev) => {
    if (!projection) return;
    const map = $("map");
    const pt = map.createSVGPoint();
    pt.x = ev.clientX; pt.y = ev.clientY;
    const p = pt.matrixTransform(map.getScreenCTM().inverse());
    pickPlace(projection.lat(p.y), projection.lon(p.x));
  });

  // A place chosen by a click on the map or from the address search: marked on the map,
  // and it goes into the report form (or, with the edit form open, moves the incident).
  function pickPlace(lat, lon) {
    const x = projection.x(lon), y = projection.y(lat);
    const r = 10 * upp();
    const cls = editing ? "pick moved" : "pick";
    $("g-pick").replaceChildren(
      svg("circle", { cx: x, cy: y, r, class: cls }),
      svg("path", { d: `M${x - 2 * r} ${y}H${x + 2 * r}M${x} ${y - 2 * r}V${y + 2 * r}`, class: cls }));
    if (editing) { // the edit form is open: the click moves the incident (on saving)
      editing.lat = Number(lat.toFixed(6)); editing.lon = Number(lon.toFixed(6));
      showPlace();
      return;
    }
    $("r-lat").value = lat.toFixed(6);
    $("r-lon").value = lon.toFixed(6);
    showTab("report");
  }

  // ------------------------------------------------------------------ address search

  // Typing an address asks GET /api/places?q= (the gazetteer and addresses of earlier
  // reports), at most one request per pause in typing; picking one sets the place.
  let placeTimer = null;
  let placeSeq = 0;
  let suggestions = [];
  let suggestAt = -1;
  const placeName = (p) => (lang === "en" && p.name_en ? p.name_en : p.name);
  function closeSuggest() {
    $("r-places").hidden = true;
    $("r-places").replaceChildren();
    $("r-address").setAttribute("aria-expanded", "false");
    suggestions = []; suggestAt = -1;
  }
  function renderSuggest() {
    const list = $("r-places");
    list.replaceChildren(...(suggestions.length ? suggestions.map((p, i) => el("li", {
      role: "option", "data-source": p.source, "aria-selected": String(i === suggestAt),
      onmousedown: (ev) => { ev.preventDefault(); choosePlace(p); },
    }, el("span", {}, p.source === "gazetteer" ? placeName(p) : p.name),
    p.source === "gazetteer" && lang === "zh" && p.name_en ? el("small", {}, p.name_en) : null,
    el("small", {}, t(`src_${p.source}`))))
      : [el("li", { class: "none" }, t("places_none"))]));
    list.hidden = false;
    $("r-address").setAttribute("aria-expanded", "true");
  }
  function choosePlace(p) {
    // The gazetteer's name in Chinese goes into the report (what the volunteers read).
    $("r-address").value = p.name;
    closeSuggest();
    pickPlace(p.lat, p.lon);
    $("report-result").className = "result";
    $("report-result").textContent = t("place_set", { name: p.source === "gazetteer" ? placeName(p) : p.name });
  }
  $("r-address").addEventListener("input", () => {
    clearTimeout(placeTimer);
    const q = $("r-address").value.trim().slice(0, 64);
    if (!q) { closeSuggest(); return; }
    placeTimer = setTimeout(async () => {
      const seq = ++placeSeq;
      let body;
      try { body = await read(`/api/places?q=${encodeURIComponent(q)}&limit=8`); } catch (_) { return; }
      if (seq !== placeSeq || $("r-address").value.trim().slice(0, 64) !== q) return; // typed on
      suggestions = body.places; suggestAt = suggestions.length ? 0 : -1;
      renderSuggest();
    }, 150);
  });
  $("r-address").addEventListener("keydown", (ev) => {
    if ($("r-places").hidden) return;
    if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      ev.preventDefault();
      if (!suggestions.length) return;
      suggestAt = (suggestAt + (ev.key === "ArrowDown" ? 1 : suggestions.length - 1)) % suggestions.length;
      renderSuggest();
    } else if (ev.key === "Enter" && suggestAt >= 0) {
      ev.preventDefault(); // picks the place; the form is sent with the button
      choosePlace(suggestions[suggestAt]);
    } else if (ev.key === "Escape") closeSuggest();
  });
  $("r-address").addEventListener("blur", () => setTimeout(closeSuggest, 150));
  window.addEventListener("resize", () => { renderVolunteers(); renderPlaces(); renderMarkers(); renderTiles(); });
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
    // The tab's title: how many wait for a person, seen from another tab or window.
    document.title = escalated ? `(${escalated}) ${t("title")}` : t("title");
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
    // Protocol 1.1: on duty but not alertable now (an engine before it sends neither).
    for (const [id, n, key] of [["f-offline", f.offline_volunteers, "fig_offline"],
      ["f-resting", f.resting_volunteers, "fig_resting"]]) {
      const el = $(id);
      el.textContent = n ? t(key, { n }) : "";
      el.title = t(`${key}_tip`);
      el.hidden = !n;
    }
    if (cellPaths.size) renderCoverage(); // the cells' hover texts carry today's figures
  }

  // ------------------------------------------------------------------ language

  function applyLanguage() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
    $("lang").textContent = lang === "zh" ? "EN" : "中文";
    setConn($("conn").dataset.state);
    $("toast").hidden = true; // said in the other language
    $("report-result").textContent = ""; // the same
    $("assign-list").replaceChildren(); // filled again, in this language, when next opened
    renderMute();
    fillFilters();
    fillKinds();
    if (editing) { // the open edit form, in this language, keeping what was chosen
      const kind = $("e-kind").value;
      $("e-kind").replaceChildren(...KINDS.map((k) => el("option", { value: k }, t(`kind_${k}`))));
      $("e-kind").value = kind;
      showPlace();
    }
    renderOperator();
    renderLegend();
    renderFigures();
    if (!$("r-places").hidden) renderSuggest();
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
      toast(errorText(err), true, err.message);
    }
    loadPlaces(); loadMapSettings();
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
  // For the browser tests: where on the screen a place is (to click the map there).
  function screenPoint(lat, lon) {
    const pt = $("map").createSVGPoint();
    pt.x = projection.x(lon); pt.y = projection.y(lat);
    const p = pt.matrixTransform($("map").getScreenCTM());
    return { x: p.x, y: p.y };
  }
  window.dispatchPage = { open, history, attention, engineText, escalationText, screenPoint, held, UNDO_MS,
    get lastEventId() { return lastEventId; } };
  start();
})();
