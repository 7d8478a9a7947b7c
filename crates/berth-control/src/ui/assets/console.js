// berth console: keeps ages ticking, refreshes the page's live region on audit events
// (Server-Sent Events from /v1/events/stream), and adds copy buttons. The pages work without it.
"use strict";
(function () {
  const main = document.getElementById("main");
  if (!main) return;
  let skew = 0; // server seconds minus browser seconds
  function syncClock() {
    const serverNow = Number(main.dataset.now);
    if (serverNow) skew = serverNow - Date.now() / 1000;
  }
  function rel(secs) {
    const n = Math.abs(secs);
    let t;
    if (n < 120) t = n + " s";
    else if (n < 7200) t = Math.floor(n / 60) + " min";
    else if (n < 172800) t = Math.floor(n / 3600) + " h";
    else t = Math.floor(n / 86400) + " d";
    return secs < 0 ? "in " + t : t + " ago";
  }
  function tick() {
    const now = Math.floor(Date.now() / 1000 + skew);
    for (const el of document.querySelectorAll("[data-since]")) {
      el.textContent = Math.max(0, now - Number(el.dataset.since)) + " s";
    }
    for (const el of document.querySelectorAll("time[data-ts]")) {
      el.textContent = rel(now - Number(el.dataset.ts));
    }
  }
  function copyButtons() {
    for (const b of document.querySelectorAll("button[data-copy]")) {
      b.hidden = false;
      b.onclick = function () {
        const src = document.getElementById(b.dataset.copy);
        if (src && navigator.clipboard) {
          navigator.clipboard.writeText(src.textContent).then(function () { b.textContent = "Copied"; });
        }
      };
    }
  }
  // Refreshes `main` from the server, at most once a second, never while the user types in it.
  let pending = false, last = 0;
  function refresh() {
    if (pending) return;
    pending = true;
    const wait = Math.max(0, 1000 - (Date.now() - last));
    setTimeout(function run() {
      const active = document.activeElement;
      if (active && main.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName)) {
        setTimeout(run, 1000);
        return;
      }
      last = Date.now();
      fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) {
          const doc = new DOMParser().parseFromString(html, "text/html");
          const fresh = doc.getElementById("main");
          if (fresh && fresh.dataset.live === main.dataset.live) {
            main.innerHTML = fresh.innerHTML;
            main.dataset.now = fresh.dataset.now;
            syncClock();
            copyButtons();
            tick();
          }
        })
        .catch(function () {})
        .then(function () { pending = false; });
    }, wait);
  }
  function concerns(ev) {
    const live = main.dataset.live || "";
    if (live === "all") return true;
    if (live.startsWith("owner:")) {
      const owner = live.slice(6);
      return ev.owner === owner || ev.scope === "workspace:" + owner;
    }
    return false;
  }
  function listen() {
    if (!main.dataset.live || !window.EventSource) return;
    const status = document.getElementById("live-status");
    const source = new EventSource("/v1/events/stream");
    source.onopen = function () { if (status) status.className = "live-on"; };
    source.onerror = function () { if (status) status.className = "live-off"; };
    source.onmessage = function (m) {
      try {
        if (concerns(JSON.parse(m.data))) refresh();
      } catch (e) { /* not an event */ }
    };
  }
  // "/" focuses the search box, as on many consoles.
  document.addEventListener("keydown", function (e) {
    if (e.key !== "/" || /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName)) return;
    const search = document.querySelector("input[type=search]");
    if (search) { e.preventDefault(); search.focus(); }
  });
  syncClock();
  copyButtons();
  tick();
  setInterval(tick, 1000);
  listen();
})();
