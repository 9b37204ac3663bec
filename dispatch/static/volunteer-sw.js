/* The volunteer app's service worker (served at /volunteer-sw.js, scope /volunteer).
 *
 * 1. The shell works offline: the page's own files are kept in a cache and served from
 *    it when the network fails (network first, so that a new version arrives at once).
 *    Nothing else is ever cached: no API answer, no alert.
 * 2. Web Push (docs/volunteer.md): the engine pushes each alert, encrypted, to this
 *    browser. The worker sends the delivery receipt ("received") over HTTP, and shows a
 *    notification with Accept and Decline, which answer the alert over HTTP
 *    (POST /api/alerts/{alert_id}/reply with the alert's reply token: the worker cannot
 *    hold the page's MQTT connection). Tapping the notification opens (or focuses) the
 *    page on the alert screen. An open, visible page rings by itself: then the worker
 *    only hands it the alert.
 */
"use strict";

const SHELL_CACHE = "volunteer-shell-v1";
const SHELL = [
  "/volunteer",
  "/static/volunteer.css",
  "/static/volunteer.js",
  "/static/vendor/mqtt.min.js",
  "/volunteer.webmanifest",
  "/static/volunteer-icon-192.png",
  "/static/volunteer-icon-512.png",
];
const KIND = {
  cardiac_arrest: "心脏骤停 Cardiac arrest", medical: "急症 Medical", fire: "火情 Fire",
  fall: "跌倒 Fall", lost_person: "走失 Lost person", security: "治安 Security",
  dispute: "纠纷 Dispute", other: "其他 Other",
};

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(SHELL_CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) if (name !== SHELL_CACHE) await caches.delete(name);
    await self.clients.claim();
  })());
});

self.addEventListener("fetch", (event) => {
  const req = event.request;
  const url = new URL(req.url);
  if (req.method !== "GET" || url.origin !== self.location.origin) return;
  if (!SHELL.includes(url.pathname)) return; // the API, alerts, everything else: network only
  event.respondWith((async () => {
    const cache = await caches.open(SHELL_CACHE);
    try {
      const fresh = await fetch(req, { cache: "no-cache" });
      if (fresh.ok) await cache.put(url.pathname, fresh.clone());
      return fresh;
    } catch (err) {
      const kept = await cache.match(url.pathname);
      if (kept) return kept;
      throw err;
    }
  })());
});

function answerAlert(alert, answer) {
  return fetch(alert.reply_url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ volunteer_id: alert.volunteer_id, answer, token: alert.reply_token }),
  }).then((r) => r.ok, () => false);
}

async function visiblePage() {
  const pages = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  return pages.find((c) => c.visibilityState === "visible" && new URL(c.url).pathname === "/volunteer");
}

self.addEventListener("push", (event) => {
  let alert = null;
  try { alert = event.data ? event.data.json() : null; } catch { alert = null; }
  if (!alert || alert.type !== "alert" || typeof alert.alert_id !== "string") return;
  event.waitUntil(onPush(alert));
});

// The handlers' work, apart from their events (the browser test calls them too).
async function onPush(alert) {
  const expires = Date.parse(alert.expires_at);
  if (isFinite(expires) && expires <= Date.now()) return; // stale: never ring
  // The receipt first (protocol 1.1): the engine knows this phone has the alert.
  const receipt = answerAlert(alert, "received");
  const page = await visiblePage();
  if (page) {
    page.postMessage({ type: "alert", alert });
  } else {
    const dist = alert.distance_m >= 1000 ? `${(alert.distance_m / 1000).toFixed(1)} km` : `${Math.round(alert.distance_m)} m`;
    await self.registration.showNotification(`紧急呼叫 Emergency: ${KIND[alert.kind] || alert.kind}`, {
      body: `${alert.address || ""}\n${dist} · ${Math.ceil(alert.eta_s / 60)} min`,
      tag: alert.alert_id,
      renotify: true,
      requireInteraction: true,
      vibrate: [400, 200, 400, 200, 400],
      timestamp: Date.now(),
      icon: "/static/volunteer-icon-192.png",
      data: alert,
      actions: [
        { action: "accept", title: "接受 Accept" },
        { action: "decline", title: "拒绝 Decline" },
      ],
    });
  }
  await receipt;
}

self.addEventListener("notificationclick", (event) => {
  event.waitUntil(onNotificationClick(event.notification, event.action));
});

async function onNotificationClick(note, action) {
  const alert = note.data;
  note.close();
  if (!alert || !alert.alert_id) return;
  const answer = action === "accept" || action === "decline" ? action : null;
  const expires = Date.parse(alert.expires_at);
  const live = !isFinite(expires) || expires > Date.now();
  const sent = answer && live ? await answerAlert(alert, answer) : false;
  if (answer === "decline" && sent) return; // done: nothing to open
  // Open the page on the alert (or, accepted, on the wait for dispatch's go).
  const message = { type: "alert", alert, answered: sent ? answer : null };
  const pages = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  const page = pages.find((c) => new URL(c.url).pathname === "/volunteer");
  if (page) {
    await page.focus().catch(() => null);
    page.postMessage(message);
    return;
  }
  const hash = encodeURIComponent(JSON.stringify(message));
  await self.clients.openWindow(`/volunteer#push=${hash}`);
}
