/*! clickpulse.js — send page views to a Clickpulse collector.
 *
 * Include it on any page:
 *   <script src="https://your-clickpulse-host/clickpulse.js" data-visitor="optional-id" async></script>
 *
 * It sends one page view per page load to POST /collect on the host it was loaded from, as a
 * `text/plain` JSON body (no CORS preflight; the collector must allow the page's origin with
 * `--cors-origin`). The visitor id is `data-visitor` if given, else a random id kept in
 * localStorage. `window.clickpulse.track({gender, age, url})` sends a view by hand, and
 * `window.clickpulse.identify(id)` switches the visitor id.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  var endpoint = new URL("/collect", script ? script.src : window.location.href).toString();
  var KEY = "clickpulse.visitor";

  function randomId() {
    var bytes = new Uint8Array(16);
    (window.crypto || window.msCrypto).getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  function visitorId() {
    var given = script && script.getAttribute("data-visitor");
    if (given) return given;
    try {
      var stored = window.localStorage.getItem(KEY);
      if (stored) return stored;
      var fresh = randomId();
      window.localStorage.setItem(KEY, fresh);
      return fresh;
    } catch (e) {
      return randomId();
    }
  }

  var visitor = visitorId();

  function track(extra) {
    var click = { visitor: visitor, url: window.location.href };
    if (extra) {
      if (extra.url) click.url = extra.url;
      if (extra.gender) click.gender = extra.gender;
      if (typeof extra.age === "number") click.age = extra.age;
    }
    var body = JSON.stringify(click);
    if (window.fetch) {
      return window.fetch(endpoint, { method: "POST", body: body, keepalive: true, headers: { "Content-Type": "text/plain" } });
    }
    if (navigator.sendBeacon) {
      navigator.sendBeacon(endpoint, body);
    }
    return Promise.resolve();
  }

  window.clickpulse = {
    track: track,
    identify: function (id) { visitor = String(id); },
    visitor: function () { return visitor; },
  };
  if (!script || script.getAttribute("data-auto") !== "false") {
    track();
  }
})();
