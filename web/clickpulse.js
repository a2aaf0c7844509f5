/*! clickpulse.js — send page views and interactions to a Clickpulse collector.
 *
 * Include it on any page:
 *   <script src="https://your-clickpulse-host/clickpulse.js" async></script>
 *
 * It sends one page view per page load to POST /collect on the host it was loaded from, as a
 * `text/plain` JSON body (no CORS preflight). The collector takes page views only from its own
 * pages and the origins started with `--cors-origin` (an `Origin`/`Referer` check), and only
 * with a visitor's identity token: on its first page view a browser asks `POST /api/identity`
 * for a visitor id and its token (kept in localStorage) and sends both with every view, so no
 * other page can send views as this visitor. Without an identity (the request failed) a view is
 * counted under an anonymous id the server derives from the day, the address and the browser.
 *
 * `window.clickpulse.track("add_to_cart", {product: {id, price, quantity, currency}})` sends an
 * interaction (`remove_from_cart`, `begin_checkout`, `purchase` with an `order`, `search` with a
 * `query`, or a custom name; the fields are those of docs/click-format.md);
 * `window.clickpulse.track({gender, age, url})` sends a page view by hand (every page view
 * carries the page's referrer and title);
 * `window.clickpulse.identify(visitor, token)` switches to an identity your backend got from
 * `POST /api/identity`; `window.clickpulse.visitor()` is the current id (or null).
 */
(function () {
  "use strict";
  var script = document.currentScript;
  var base = script ? script.src : window.location.href;
  var endpoint = new URL("/collect", base).toString();
  var identityEndpoint = new URL("/api/identity", base).toString();
  var KEY = "clickpulse.identity";

  function stored() {
    try {
      var value = JSON.parse(window.localStorage.getItem(KEY) || "null");
      if (value && typeof value.visitor === "string" && typeof value.token === "string") return value;
    } catch (e) {
      /* storage unavailable or damaged: ask for a new identity */
    }
    return null;
  }

  function remember(identity) {
    try {
      if (identity) window.localStorage.setItem(KEY, JSON.stringify(identity));
      else window.localStorage.removeItem(KEY);
    } catch (e) {
      /* storage unavailable: the identity lasts for this page */
    }
  }

  function fetchIdentity() {
    if (!window.fetch) return Promise.resolve(null);
    return window
      .fetch(identityEndpoint, { method: "POST" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (v) {
        if (!v || typeof v.visitor !== "string" || typeof v.token !== "string") return null;
        var identity = { visitor: v.visitor, token: v.token };
        remember(identity);
        return identity;
      })
      .catch(function () { return null; });
  }

  var identity = stored();
  var ready = identity ? Promise.resolve(identity) : fetchIdentity();

  function send(body) {
    if (window.fetch) {
      return window.fetch(endpoint, { method: "POST", body: body, keepalive: true, headers: { "Content-Type": "text/plain" } });
    }
    if (navigator.sendBeacon) navigator.sendBeacon(endpoint, body);
    return Promise.resolve(null);
  }

  // The fields of an event the collector takes from the page (docs/click-format.md).
  var FIELDS = ["url", "gender", "age", "session_id", "referrer", "page_title", "utm", "product", "order", "query", "properties"];

  // track() or track({fields}): a page view; track("type", {fields}): that event.
  function track(type, fields) {
    if (typeof type !== "string") {
      fields = type;
      type = "page_view";
    }
    return ready.then(function (id) {
      identity = id;
      var click = { url: window.location.href };
      if (type !== "page_view") click.type = type;
      if (type === "page_view") {
        if (document.referrer) click.referrer = document.referrer;
        if (document.title) click.page_title = document.title;
      }
      if (id) {
        click.visitor = id.visitor;
        click.token = id.token;
      }
      if (fields) {
        FIELDS.forEach(function (name) {
          if (fields[name] !== undefined && fields[name] !== null) click[name] = fields[name];
        });
      }
      return send(JSON.stringify(click)).then(function (r) {
        // A token the server no longer takes (a new server secret): start a new identity.
        if (r && r.status === 400 && id) {
          remember(null);
          ready = fetchIdentity();
        }
        return r;
      });
    });
  }

  window.clickpulse = {
    track: track,
    identify: function (visitor, token) {
      identity = { visitor: String(visitor), token: String(token) };
      remember(identity);
      ready = Promise.resolve(identity);
    },
    visitor: function () { return identity ? identity.visitor : null; },
  };
  if (!script || script.getAttribute("data-auto") !== "false") {
    track();
  }
})();
