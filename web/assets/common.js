/*
 * Clickpulse — shared browser helpers.
 *
 * Exposes one global, `CP`, used by dashboard.js, pipeline.js and shop.js:
 *   - fetchJSON / postJSON: same-origin JSON requests with a timeout
 *   - formatting: integers with thousands separators, rates, times in the chosen time zone
 *     (site or viewer, switched in the top bar; see "times" below)
 *   - display names: countries (ISO alpha-3), categories, short visitor ids
 *   - el(): small DOM builder that only ever sets text (never innerHTML with data)
 *   - identity storage (localStorage `clickpulse.identity`)
 *   - the top navigation bar, its time-zone switch and its live event-time clock (polls /api/stats)
 */
(function () {
  "use strict";

  const IDENTITY_KEY = "clickpulse.identity";
  const SVG_NS = "http://www.w3.org/2000/svg";

  // ---------------------------------------------------------------- requests

  /** Error thrown for non-2xx responses; carries the HTTP status. */
  class HttpError extends Error {
    constructor(status, message, response) {
      super(message);
      this.name = "HttpError";
      this.status = status;
      this.response = response;
    }
  }

  /** GET (or any method) a JSON endpoint; rejects on network errors, timeouts and non-2xx. */
  async function fetchJSON(url, options = {}) {
    const { timeoutMs = 10000, ...init } = options;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    try {
      const response = await fetch(url, {
        cache: "no-store",
        ...init,
        headers: { Accept: "application/json", ...(init.headers || {}) },
        signal: controller.signal,
      });
      const text = await response.text();
      let body = null;
      if (text) {
        try {
          body = JSON.parse(text);
        } catch (_) {
          body = null;
        }
      }
      if (!response.ok) {
        const message = (body && body.error) || `${response.status} ${response.statusText}`;
        throw new HttpError(response.status, message, response);
      }
      return body;
    } finally {
      clearTimeout(timer);
    }
  }

  /** POST a JSON body (or no body when `data` is undefined). Returns {status, body, response}. */
  async function postJSON(url, data, options = {}) {
    const { timeoutMs = 10000 } = options;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    try {
      const init = { method: "POST", headers: { Accept: "application/json" }, signal: controller.signal };
      if (data !== undefined) {
        init.headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(data);
      }
      const response = await fetch(url, init);
      const text = await response.text();
      let body = null;
      try {
        body = text ? JSON.parse(text) : null;
      } catch (_) {
        body = null;
      }
      return { status: response.status, ok: response.ok, body, response };
    } finally {
      clearTimeout(timer);
    }
  }

  // ---------------------------------------------------------------- numbers

  const intFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const oneDecimal = new Intl.NumberFormat("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 });
  const priceFormat = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);

  /** 12345 → "12,345"; anything that is not a number → "—". */
  function fmtInt(value) {
    return isNum(value) ? intFormat.format(value) : "—";
  }

  /** Events per second: one decimal below 100, whole numbers above. */
  function fmtRate(value) {
    if (!isNum(value)) return "—";
    return Math.abs(value) < 100 ? oneDecimal.format(value) : intFormat.format(value);
  }

  /** 0.1234 → "12.3%". */
  function fmtPct(fraction) {
    if (!isNum(fraction)) return "—";
    return `${oneDecimal.format(fraction * 100)}%`;
  }

  /** 92.04 → "$92.04". */
  function fmtPrice(value) {
    return isNum(value) ? priceFormat.format(value) : "";
  }

  /** Seconds → "3d 4h", "2h 05m", "4m 09s", "12s". */
  function fmtDuration(totalSeconds) {
    if (!isNum(totalSeconds) || totalSeconds < 0) return "—";
    const s = Math.floor(totalSeconds);
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = s % 60;
    const two = (n) => String(n).padStart(2, "0");
    if (d > 0) return `${d}d ${h}h`;
    if (h > 0) return `${h}h ${two(m)}m`;
    if (m > 0) return `${m}m ${two(sec)}s`;
    return `${sec}s`;
  }

  // ---------------------------------------------------------------- times (site or viewer zone)

  /*
   * Every time on every page is shown in one IANA time zone: the site's (GET /api/site →
   * {"time_zone": "Europe/Berlin"}, "UTC" when the server does not say) or the viewer's own
   * (Intl.DateTimeFormat().resolvedOptions().timeZone). The choice ("site" | "local") is kept in
   * localStorage `clickpulse.timeZone` and switched in the top bar; a change dispatches
   * `cp:timezone` on window (detail {zone, mode}) so pages re-render, and fills every
   * `[data-tz-name]` element with the zone's name. document.body.dataset.timeZone is the zone
   * in use (test hook).
   */
  const TZ_KEY = "clickpulse.timeZone";
  const SITE_TZ_CACHE = "clickpulse.siteTimeZone"; // sessionStorage: no UTC flash on the next page
  const TZ_EVENT = "cp:timezone";

  /** Whether `zone` is a time zone this browser knows. */
  function validZone(zone) {
    if (typeof zone !== "string" || zone.trim() === "") return false;
    try {
      new Intl.DateTimeFormat("en-US", { timeZone: zone });
      return true;
    } catch (_) {
      return false;
    }
  }

  // Old names some browsers' ICU still reports (Chromium says "Asia/Calcutta"): shown as today's.
  const ZONE_RENAMES = {
    "Asia/Calcutta": "Asia/Kolkata",
    "Asia/Saigon": "Asia/Ho_Chi_Minh",
    "Asia/Katmandu": "Asia/Kathmandu",
    "Asia/Rangoon": "Asia/Yangon",
    "Asia/Ulan_Bator": "Asia/Ulaanbaatar",
    "Europe/Kiev": "Europe/Kyiv",
    "America/Godthab": "America/Nuuk",
    "America/Buenos_Aires": "America/Argentina/Buenos_Aires",
    "Atlantic/Faeroe": "Atlantic/Faroe",
    "Pacific/Truk": "Pacific/Chuuk",
    "Pacific/Ponape": "Pacific/Pohnpei",
    "Pacific/Enderbury": "Pacific/Kanton",
    "Etc/UTC": "UTC",
    "Etc/GMT": "UTC",
    "Etc/UCT": "UTC",
    "Etc/Universal": "UTC",
    "Etc/Zulu": "UTC",
  };

  function modernZone(zone) {
    const renamed = ZONE_RENAMES[zone];
    return renamed && validZone(renamed) ? renamed : zone;
  }

  function browserZone() {
    try {
      const zone = modernZone(Intl.DateTimeFormat().resolvedOptions().timeZone);
      return validZone(zone) ? zone : "UTC";
    } catch (_) {
      return "UTC";
    }
  }

  function storedMode() {
    try {
      return localStorage.getItem(TZ_KEY) === "local" ? "local" : "site";
    } catch (_) {
      return "site";
    }
  }

  function cachedSiteZone() {
    try {
      const zone = sessionStorage.getItem(SITE_TZ_CACHE);
      return validZone(zone) ? zone : "UTC";
    } catch (_) {
      return "UTC";
    }
  }

  const tz = {
    mode: storedMode(),
    site: cachedSiteZone(),
    local: browserZone(),
    siteKnown: false, // set once /api/site has answered (or failed)
  };

  /** The IANA zone every time is shown in right now. */
  function timeZone() {
    return tz.mode === "local" ? tz.local : tz.site;
  }

  /** "site" or "local". */
  function timeZoneMode() {
    return tz.mode;
  }

  // One formatter per zone (creating them is the expensive part).
  const partFormats = new Map();
  function partsFormat(zone) {
    let f = partFormats.get(zone);
    if (!f) {
      f = new Intl.DateTimeFormat("en-US", {
        timeZone: zone,
        hourCycle: "h23",
        year: "numeric",
        month: "2-digit",
        day: "2-digit",
        hour: "2-digit",
        minute: "2-digit",
        second: "2-digit",
      });
      partFormats.set(zone, f);
    }
    return f;
  }

  /** {year, month, day, hour, minute, second} as zero-padded strings in the chosen zone, or null. */
  function timeParts(ms, zone = timeZone()) {
    if (!isNum(ms)) return null;
    const out = {};
    for (const part of partsFormat(zone).formatToParts(new Date(ms))) out[part.type] = part.value;
    if (out.hour === "24") out.hour = "00"; // very old engines ignore hourCycle
    return out;
  }

  const offsetFormats = new Map();
  /** The zone's offset at that instant: "UTC", "UTC+1", "UTC+5:30", "UTC−3". */
  function zoneOffset(ms, zone = timeZone()) {
    if (!isNum(ms)) return "";
    let f = offsetFormats.get(zone);
    if (f === undefined) {
      try {
        f = new Intl.DateTimeFormat("en-US", { timeZone: zone, timeZoneName: "shortOffset" });
      } catch (_) {
        f = null; // shortOffset unsupported: fall back to the zone's name
      }
      offsetFormats.set(zone, f);
    }
    if (!f) return zone;
    const name = (f.formatToParts(new Date(ms)).find((p) => p.type === "timeZoneName") || {}).value || "";
    const offset = name.replace(/^GMT/, "UTC").replace(/^UTC[+-]0(:00)?$/, "UTC");
    return offset || zone;
  }

  /** "HH:MM" in the chosen zone. */
  function fmtHM(ms) {
    const p = timeParts(ms);
    return p ? `${p.hour}:${p.minute}` : "—";
  }

  /** "HH:MM:SS" in the chosen zone. */
  function fmtTime(ms) {
    const p = timeParts(ms);
    return p ? `${p.hour}:${p.minute}:${p.second}` : "—";
  }

  /** "YYYY-MM-DD" in the chosen zone. */
  function fmtDate(ms) {
    const p = timeParts(ms);
    return p ? `${p.year}-${p.month}-${p.day}` : "—";
  }

  /** "YYYY-MM-DD HH:MM:SS UTC+1" in the chosen zone (its offset at that instant last). */
  function fmtDateTime(ms) {
    return isNum(ms) ? `${fmtDate(ms)} ${fmtTime(ms)} ${zoneOffset(ms)}` : "—";
  }

  /** A time-zone name for labels: "Europe/Berlin", "UTC". */
  function zoneLabel(zone = timeZone()) {
    return zone === "GMT" ? "UTC" : modernZone(zone);
  }

  /** Fill the page's zone labels and the test hook, then tell the page to re-render. */
  function applyTimeZone(notify = true) {
    const zone = timeZone();
    if (document.body) {
      document.body.dataset.timeZone = zone;
      document.body.dataset.timeZoneMode = tz.mode;
      document.body.dataset.siteTimeZone = tz.site;
      if (tz.siteKnown) document.body.dataset.siteTimeZoneKnown = "true";
    }
    for (const node of document.querySelectorAll("[data-tz-name]")) setText(node, zoneLabel(zone));
    syncZoneSwitch();
    if (notify) window.dispatchEvent(new CustomEvent(TZ_EVENT, { detail: { zone, mode: tz.mode } }));
  }

  /** Choose "site" or "local" (remembered), re-rendering every time on the page. */
  function setTimeZoneMode(mode) {
    tz.mode = mode === "local" ? "local" : "site";
    try {
      localStorage.setItem(TZ_KEY, tz.mode);
    } catch (_) {
      /* storage disabled: the choice lasts for this page */
    }
    applyTimeZone();
  }

  /** Subscribe to zone changes; the listener gets (zone, mode). */
  function onTimeZone(listener) {
    const handler = (event) => listener(event.detail.zone, event.detail.mode);
    window.addEventListener(TZ_EVENT, handler);
    return () => window.removeEventListener(TZ_EVENT, handler);
  }

  /** Ask the server for the site's zone; "UTC" when it does not say (404, old server, error). */
  async function loadSiteZone() {
    let zone = "UTC";
    try {
      const body = await fetchJSON("/api/site", { timeoutMs: 5000 });
      if (body && validZone(body.time_zone)) zone = modernZone(body.time_zone);
    } catch (_) {
      /* no /api/site (yet): the site zone is UTC */
    }
    try {
      sessionStorage.setItem(SITE_TZ_CACHE, zone);
    } catch (_) {
      /* no storage */
    }
    const changed = zone !== tz.site;
    tz.site = zone;
    tz.siteKnown = true;
    applyTimeZone(changed && tz.mode === "site");
  }

  // ---------------------------------------------------------------- display names

  const COUNTRY_NAMES = {
    usa: "United States",
    can: "Canada",
    gbr: "United Kingdom",
    deu: "Germany",
    fra: "France",
    pri: "Puerto Rico",
    tha: "Thailand",
    zaf: "South Africa",
    aus: "Australia",
    prt: "Portugal",
    mex: "Mexico",
    bra: "Brazil",
    ind: "India",
    jpn: "Japan",
    chn: "China",
    esp: "Spain",
    ita: "Italy",
    nld: "Netherlands",
    swe: "Sweden",
    che: "Switzerland",
    irl: "Ireland",
    bel: "Belgium",
    aut: "Austria",
    dnk: "Denmark",
    nor: "Norway",
    fin: "Finland",
    pol: "Poland",
    nzl: "New Zealand",
    sgp: "Singapore",
    kor: "South Korea",
    phl: "Philippines",
    isr: "Israel",
    arg: "Argentina",
    chl: "Chile",
    col: "Colombia",
    rus: "Russia",
    tur: "Turkey",
    are: "United Arab Emirates",
    hkg: "Hong Kong",
    twn: "Taiwan",
    mys: "Malaysia",
    idn: "Indonesia",
    vnm: "Vietnam",
    egy: "Egypt",
    nga: "Nigeria",
    unknown: "Unknown",
  };

  /** "usa" → "United States"; unmapped codes → upper case; empty → "Unknown". */
  function countryName(code) {
    if (typeof code !== "string" || code.trim() === "") return "Unknown";
    const key = code.trim().toLowerCase();
    return COUNTRY_NAMES[key] || key.toUpperCase();
  }

  /** "home&garden" → "Home & Garden", "books" → "Books". */
  function categoryLabel(category) {
    if (typeof category !== "string" || category === "") return "Unknown";
    return category
      .split("&")
      .map((part) => part.trim().replace(/(^|[\s_-])(\w)/g, (_, sep, ch) => `${sep === "_" ? " " : sep}${ch.toUpperCase()}`))
      .join(" & ");
  }

  // A stable colour per category so charts, pills and chips agree across pages.
  const CATEGORY_COLORS = {
    clothing: "#6366f1",
    shoes: "#06b6d4",
    handbags: "#ec4899",
    books: "#f59e0b",
    movies: "#8b5cf6",
    games: "#22c55e",
    electronics: "#3b82f6",
    computers: "#0ea5e9",
    "home&garden": "#84cc16",
    automotive: "#f97316",
    tools: "#a16207",
    accessories: "#d946ef",
    grocery: "#10b981",
  };
  const FALLBACK_COLORS = ["#64748b", "#14b8a6", "#e11d48", "#7c3aed", "#ca8a04", "#0891b2"];

  function categoryColor(category) {
    if (CATEGORY_COLORS[category]) return CATEGORY_COLORS[category];
    const text = String(category || "");
    let hash = 0;
    for (let i = 0; i < text.length; i++) hash = (hash * 31 + text.charCodeAt(i)) >>> 0;
    return FALLBACK_COLORS[hash % FALLBACK_COLORS.length];
  }

  /** A hex colour with an alpha channel: ("#6366f1", 0.15) → "rgba(99, 102, 241, 0.15)". */
  function withAlpha(hex, alpha) {
    const m = /^#?([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(hex || "");
    if (!m) return hex;
    return `rgba(${parseInt(m[1], 16)}, ${parseInt(m[2], 16)}, ${parseInt(m[3], 16)}, ${alpha})`;
  }

  /** A category pill element. */
  function categoryPill(category) {
    const color = categoryColor(category);
    return el("span", {
      className: "pill",
      style: { background: withAlpha(color, 0.12), color: shade(color) },
      dataset: { category: category || "" },
      text: categoryLabel(category),
    });
  }

  /** Darken a hex colour for readable text on its own tint. */
  function shade(hex) {
    const m = /^#?([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(hex || "");
    if (!m) return hex;
    const f = (h) => Math.round(parseInt(h, 16) * 0.62);
    return `rgb(${f(m[1])}, ${f(m[2])}, ${f(m[3])})`;
  }

  /**
   * Short form of a visitor id for tables: GUIDs become their first block
   * ("6375FC70-8A3D-…" → "6375FC70…"); readable three-word ids stay whole.
   */
  function shortVisitor(id) {
    if (typeof id !== "string" || id === "") return "—";
    const guid = /^\{?([0-9a-f]{8})-[0-9a-f]{4}-/i.exec(id);
    if (guid) return `${guid[1]}…`;
    return id.length > 24 ? `${id.slice(0, 22)}…` : id;
  }

  /** Whether a product id has a catalogue image (catalogue ids look like VD55177927). */
  function hasProductImage(productId) {
    return typeof productId === "string" && /^VD\d+$/i.test(productId);
  }

  function productImageUrl(productId) {
    return `/images/products/${encodeURIComponent(productId)}.png`;
  }

  // ---------------------------------------------------------------- DOM

  /**
   * Create an element. `attrs` keys: className, text, title, dataset {}, style {},
   * on {event: handler}, attrs {name: value}, and any other key is set as a property.
   * `children` may contain nodes, strings and null/false (skipped).
   */
  function el(tag, attrs = {}, children = []) {
    const node = document.createElement(tag);
    applyAttrs(node, attrs);
    appendChildren(node, children);
    return node;
  }

  function applyAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (key === "className") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "style") Object.assign(node.style, value);
      else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
      else if (key === "attrs") for (const [name, v] of Object.entries(value)) node.setAttribute(name, v);
      else node[key] = value;
    }
  }

  function appendChildren(node, children) {
    for (const child of [].concat(children)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
  }

  /** Create an SVG element with attributes. */
  function svg(tag, attrs = {}, children = []) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    appendChildren(node, children);
    return node;
  }

  /** Replace all children of `node`. */
  function replaceChildren(node, children) {
    node.replaceChildren(...[].concat(children).filter((c) => c !== null && c !== undefined && c !== false));
  }

  /** Set text only when it changed (avoids needless layout and keeps selections stable). */
  function setText(node, text) {
    if (node && node.textContent !== text) node.textContent = text;
  }

  /** A neutral image placeholder box (for products without a picture). */
  function imagePlaceholder(className) {
    const box = el("span", { className: `${className} thumb--placeholder`, attrs: { "aria-hidden": "true" } });
    box.append(
      svg("svg", { width: "18", height: "18", viewBox: "0 0 24 24", fill: "none", stroke: "currentColor", "stroke-width": "1.6" }, [
        svg("rect", { x: "3", y: "4", width: "18", height: "16", rx: "2" }),
        svg("circle", { cx: "9", cy: "10", r: "2" }),
        svg("path", { d: "M21 16l-5-5-9 9" }),
      ])
    );
    return box;
  }

  /** Product thumbnail, falling back to the placeholder when there is no image or it fails to load. */
  function productThumb(productId, className = "thumb") {
    if (!hasProductImage(productId)) return imagePlaceholder(className);
    const img = el("img", {
      className,
      src: productImageUrl(productId),
      alt: "",
      loading: "lazy",
      width: 36,
      height: 36,
    });
    img.addEventListener("error", () => img.replaceWith(imagePlaceholder(className)), { once: true });
    return img;
  }

  // ---------------------------------------------------------------- toasts

  function toastHost() {
    let host = document.getElementById("toasts");
    if (!host) {
      host = el("div", { id: "toasts", className: "toasts", attrs: { role: "status", "aria-live": "polite" } });
      document.body.append(host);
    }
    return host;
  }

  /** Show a small toast for `ms` milliseconds. Returns the element. */
  function toast(message, { testid, kind = "ok", ms = 4000 } = {}) {
    const icon = el("span", { className: "toast__icon", attrs: { "aria-hidden": "true" }, text: kind === "error" ? "!" : "✓" });
    const node = el("div", { className: `toast${kind === "error" ? " toast--error" : ""}` }, [icon, message]);
    if (testid) node.dataset.testid = testid;
    toastHost().append(node);
    setTimeout(() => {
      node.classList.add("is-leaving");
      setTimeout(() => node.remove(), 320);
    }, ms);
    return node;
  }

  // ---------------------------------------------------------------- identity

  /** The stored shop identity {visitor, token, gender, age}, or null. */
  function loadIdentity() {
    try {
      const raw = localStorage.getItem(IDENTITY_KEY);
      if (!raw) return null;
      const value = JSON.parse(raw);
      if (!value || typeof value.visitor !== "string" || value.visitor === "") return null;
      return {
        visitor: value.visitor,
        token: typeof value.token === "string" ? value.token : "",
        gender: ["F", "M", "U"].includes(value.gender) ? value.gender : "F",
        age: clampAge(value.age),
      };
    } catch (_) {
      return null;
    }
  }

  function saveIdentity(identity) {
    try {
      localStorage.setItem(IDENTITY_KEY, JSON.stringify(identity));
    } catch (_) {
      /* storage full or disabled: the identity then lives for this page only */
    }
  }

  function clampAge(age) {
    const n = Math.round(Number(age));
    if (!Number.isFinite(n)) return 30;
    return Math.min(65, Math.max(18, n));
  }

  /** Ask the server for a fresh visitor id and token. */
  async function requestIdentity() {
    const { ok, status, body } = await postJSON("/api/identity");
    if (!ok || !body || typeof body.visitor !== "string") {
      throw new HttpError(status, (body && body.error) || "Could not create a visitor identity");
    }
    return { visitor: body.visitor, token: String(body.token || "") };
  }

  // ---------------------------------------------------------------- navigation

  const LOGO_PATH = "M3 16h5l2.5-6 4 12 3.5-9 2 3H29";

  /** The pulse logo as an inline SVG element. */
  function logo() {
    const gradientId = "cp-logo-gradient";
    return svg("svg", { class: "brand__logo", viewBox: "0 0 32 32", "aria-hidden": "true", focusable: "false" }, [
      svg("defs", {}, [
        svg("linearGradient", { id: gradientId, x1: "0", y1: "0", x2: "1", y2: "1" }, [
          svg("stop", { offset: "0", "stop-color": "#6366f1" }),
          svg("stop", { offset: "1", "stop-color": "#06b6d4" }),
        ]),
      ]),
      svg("rect", { x: "0", y: "0", width: "32", height: "32", rx: "8", fill: `url(#${gradientId})` }),
      svg("path", {
        d: LOGO_PATH,
        fill: "none",
        stroke: "#ffffff",
        "stroke-width": "2.4",
        "stroke-linecap": "round",
        "stroke-linejoin": "round",
      }),
    ]);
  }

  function currentSection() {
    const path = location.pathname;
    if (path === "/pipeline" || path.startsWith("/pipeline")) return "pipeline";
    if (path === "/shop" || path.startsWith("/shop/")) return "shop";
    return "dashboard";
  }

  /** Fill the `#topnav` header (present in every page) with brand, links and the clock. */
  function mountNav() {
    const host = document.getElementById("topnav");
    if (!host) return;
    const active = currentSection();
    const link = (key, href, label) =>
      el("li", {}, [
        el("a", {
          href,
          text: label,
          dataset: { testid: `nav-${key}` },
          attrs: active === key ? { "aria-current": "page" } : {},
        }),
      ]);

    const clock = el(
      "div",
      {
        id: "event-clock",
        className: "clock",
        dataset: { testid: "event-clock" },
        title: "Event time of the clickstream being processed.",
      },
      [
        el("span", { className: "live-dot", id: "event-clock-dot", attrs: { "aria-hidden": "true" } }),
        el("span", { className: "clock__label", text: "Event time" }),
        el("span", { className: "clock__time", id: "event-clock-time", dataset: { testid: "event-clock-time" }, text: "—" }),
        el("span", { className: "clock__badge", id: "event-clock-speed", dataset: { testid: "event-clock-speed" }, hidden: true }),
        el("span", { className: "clock__badge", id: "event-clock-pass", dataset: { testid: "event-clock-pass" }, hidden: true }),
      ]
    );

    const inner = el("div", { className: "topnav__inner" }, [
      el("a", { className: "brand", href: "/", attrs: { "aria-label": "Clickpulse home" } }, [logo(), el("span", { text: "Clickpulse" })]),
      el("nav", { attrs: { "aria-label": "Main" } }, [
        el("ul", { className: "navlinks" }, [
          link("dashboard", "/", "Dashboard"),
          link("pipeline", "/pipeline", "Pipeline"),
          link("shop", "/shop", "Shop"),
        ]),
      ]),
      el("div", { className: "topnav__tools" }, [clock, zoneSwitch()]),
    ]);
    host.replaceChildren(inner);
    host.dataset.testid = "topnav";
  }

  const GLOBE_PATH = "M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20zM2 12h20M12 2a15.3 15.3 0 0 1 4 10 15.3 15.3 0 0 1-4 10 15.3 15.3 0 0 1-4-10 15.3 15.3 0 0 1 4-10z";

  /** The "Site time / Your time" select of the top bar. */
  function zoneSwitch() {
    const select = el(
      "select",
      {
        id: "tz-switch",
        className: "tzswitch__select",
        dataset: { testid: "tz-switch" },
        on: { change: (event) => setTimeZoneMode(event.target.value) },
      },
      [el("option", { value: "site", dataset: { testid: "tz-site" } }), el("option", { value: "local", dataset: { testid: "tz-local" } })]
    );
    return el(
      "label",
      {
        className: "tzswitch",
        title: "Time zone of every time on this page: the site's or your browser's",
      },
      [
        svg("svg", { class: "tzswitch__icon", width: "14", height: "14", viewBox: "0 0 24 24", fill: "none", stroke: "currentColor", "stroke-width": "2", "aria-hidden": "true" }, [
          svg("path", { d: GLOBE_PATH }),
        ]),
        el("span", { className: "visually-hidden", text: "Time zone" }),
        select,
      ]
    );
  }

  /** Keep the switch's texts and value in step with the zones. */
  function syncZoneSwitch() {
    const select = document.getElementById("tz-switch");
    if (!select) return;
    const [site, local] = select.options;
    setText(site, `Site time (${zoneLabel(tz.site)})`);
    setText(local, `Your time (${zoneLabel(tz.local)})`);
    if (select.value !== tz.mode) select.value = tz.mode;
  }

  // ---------------------------------------------------------------- sideways-scrolling boxes

  /*
   * A table wider than its card (a tablet, a long value) scrolls sideways inside its
   * `.table-scroll` / `.log-scroll` box; while it does, a hint at the box's left says so.
   */
  function setupScrollHints() {
    if (typeof ResizeObserver !== "function") return;
    for (const box of document.querySelectorAll(".table-scroll, .log-scroll")) {
      if (box.querySelector("[data-scroll-hint]")) continue;
      const hint = el("p", {
        className: "scroll-hint",
        hidden: true,
        dataset: { scrollHint: "" },
        text: "Scroll sideways to see every column →",
      });
      box.prepend(hint);
      const update = () => {
        const overflowing = box.scrollWidth > box.clientWidth + 1;
        if (hint.hidden === overflowing) hint.hidden = !overflowing;
      };
      const observer = new ResizeObserver(update);
      observer.observe(box);
      for (const child of box.children) if (child !== hint) observer.observe(child);
    }
  }

  // ---------------------------------------------------------------- narrow-screen collapsibles

  /*
   * `<details data-collapse-narrow>`: always open (and not collapsible) on wide screens; closed
   * by default below the media query in its data-collapse-narrow attribute (default 900 px), so
   * a long secondary card does not push the main content down on a phone.
   */
  function setupCollapsibles() {
    for (const details of document.querySelectorAll("details[data-collapse-narrow]")) {
      const query = window.matchMedia(details.dataset.collapseNarrow || "(max-width: 900px)");
      const summary = details.querySelector(":scope > summary");
      const apply = () => {
        details.open = !query.matches;
        details.classList.toggle("is-collapsible", query.matches);
        if (summary) summary.tabIndex = query.matches ? 0 : -1;
      };
      apply();
      if (query.addEventListener) query.addEventListener("change", apply);
      if (summary) {
        summary.addEventListener("click", (event) => {
          if (!query.matches) event.preventDefault(); // wide: the card stays open
        });
      }
    }
  }

  // ---------------------------------------------------------------- stats polling + clock

  const statsListeners = new Set();
  let lastStats = null;
  let statsTimer = null;

  /** Subscribe to /api/stats (polled once a second). Called with (stats|null, error|null). */
  function onStats(listener) {
    statsListeners.add(listener);
    if (lastStats) listener(lastStats, null);
    return () => statsListeners.delete(listener);
  }

  async function pollStats() {
    let stats = null;
    let error = null;
    try {
      stats = await fetchJSON("/api/stats", { timeoutMs: 5000 });
      lastStats = stats;
    } catch (err) {
      error = err;
    }
    for (const listener of statsListeners) {
      try {
        listener(stats, error);
      } catch (err) {
        console.warn("stats listener failed", err);
      }
    }
    statsTimer = setTimeout(pollStats, 1000);
  }

  /** The event time the clock shows: the pipeline's event clock (what live clicks are stamped
   * with), else the replay's position, else the aggregation watermark. */
  function eventTimeOf(stats) {
    if (stats && stats.clock && isNum(stats.clock.now_ms)) return stats.clock.now_ms;
    const stages = (stats && stats.stages) || {};
    const replay = stages.replay && stages.replay.details;
    if (replay && isNum(replay.event_time_ms)) return replay.event_time_ms;
    const aggregate = stages.aggregate && stages.aggregate.details;
    if (aggregate && isNum(aggregate.watermark_ms)) return aggregate.watermark_ms;
    return null;
  }

  /** "300x" → "× 300", "max" → "max". */
  function fmtSpeed(speed) {
    if (typeof speed !== "string" && !isNum(speed)) return "";
    const text = String(speed).trim();
    const m = /^([\d.]+)\s*x$/i.exec(text);
    if (m) return `× ${fmtInt(Number(m[1]))}`;
    if (isNum(speed)) return `× ${fmtInt(speed)}`;
    return text;
  }

  /** Whether any stage currently processes events. */
  function anyStageActive(stats) {
    const stages = (stats && stats.stages) || {};
    return Object.values(stages).some((s) => s && isNum(s.events_per_second) && s.events_per_second > 0);
  }

  function updateClock(stats, error) {
    const timeEl = document.getElementById("event-clock-time");
    if (!timeEl) return;
    const dot = document.getElementById("event-clock-dot");
    const speedEl = document.getElementById("event-clock-speed");
    const passEl = document.getElementById("event-clock-pass");
    const clock = document.getElementById("event-clock");

    if (error || !stats) {
      dot.classList.remove("is-live");
      clock.title = "The server is not reachable right now; retrying every second.";
      return;
    }
    const eventTime = eventTimeOf(stats);
    setText(timeEl, eventTime === null ? "waiting for events" : fmtDateTime(eventTime));
    timeEl.title = eventTime === null ? "" : `${eventTime} ms since 1970 (UTC)`;
    clock.dataset.eventTimeMs = eventTime === null ? "" : String(eventTime);
    const replay = (stats.stages && stats.stages.replay && stats.stages.replay.details) || {};
    // Only a clock that is not the real one gets a badge: `--speed N` (N ≠ 1), `max`.
    const realTime = replay.speed === undefined || replay.speed === "1x" || replay.speed === 1;
    const speed = realTime ? "" : fmtSpeed(replay.speed);
    speedEl.hidden = speed === "";
    setText(speedEl, speed ? `${speed} speed` : "");
    speedEl.title = speed
      ? `Event time runs at ${replay.speed} real time (started with --speed): it is not the wall clock.`
      : "";
    clock.title = realTime
      ? `Event time of the clickstream (${zoneLabel()}): the real clock.`
      : `Event time of the clickstream (${zoneLabel()}), running at ${replay.speed} real time.`;

    // The live replay (days overlaid) runs on day after day: its passes are just days.
    const pass = isNum(replay.pass) && !replay.overlay ? replay.pass : 0;
    passEl.hidden = !(pass > 0);
    setText(passEl, pass > 0 ? `pass ${fmtInt(pass)}` : "");
    passEl.title = `The replay loops over the log: it has started over ${fmtInt(pass)} time(s), each pass shifted forward in event time.`;

    dot.classList.toggle("is-live", anyStageActive(stats));
  }

  function startClock() {
    onStats(updateClock);
    if (statsTimer === null) pollStats();
  }

  // ---------------------------------------------------------------- Chart.js defaults

  function applyChartDefaults() {
    if (!window.Chart) return;
    const C = window.Chart;
    C.defaults.font.family = getComputedStyle(document.body).fontFamily;
    C.defaults.font.size = 12;
    C.defaults.color = "#64748b";
    C.defaults.borderColor = "#eef0f4";
    C.defaults.animation = false;
    C.defaults.maintainAspectRatio = false;
    C.defaults.responsive = true;
    C.defaults.plugins.legend.display = false;
    C.defaults.plugins.tooltip.backgroundColor = "#0f172a";
    C.defaults.plugins.tooltip.padding = 10;
    C.defaults.plugins.tooltip.cornerRadius = 8;
    C.defaults.plugins.tooltip.titleFont = { weight: "600" };
  }

  // ---------------------------------------------------------------- boot

  function boot() {
    mountNav();
    applyTimeZone(false);
    loadSiteZone();
    setupCollapsibles();
    setupScrollHints();
    applyChartDefaults();
    startClock();
    // Times in the clock follow the zone at once, not at the next poll.
    onTimeZone(() => {
      if (lastStats) updateClock(lastStats, null);
    });
    // A zone chosen in another tab applies here too.
    window.addEventListener("storage", (event) => {
      if (event.key !== TZ_KEY) return;
      const mode = storedMode();
      if (mode !== tz.mode) {
        tz.mode = mode;
        applyTimeZone();
      }
    });
  }

  window.CP = {
    HttpError,
    fetchJSON,
    postJSON,
    isNum,
    fmtInt,
    fmtRate,
    fmtPct,
    fmtPrice,
    fmtDuration,
    fmtHM,
    fmtTime,
    fmtDate,
    fmtDateTime,
    // Older names, kept for scripts not yet updated: they follow the chosen zone too.
    fmtUtcHM: fmtHM,
    fmtUtcTime: fmtTime,
    fmtUtcDate: fmtDate,
    fmtUtcDateTime: fmtDateTime,
    timeZone,
    timeZoneMode,
    setTimeZoneMode,
    onTimeZone,
    zoneLabel,
    zoneOffset,
    TZ_KEY,
    fmtSpeed,
    countryName,
    categoryLabel,
    categoryColor,
    categoryPill,
    withAlpha,
    shortVisitor,
    hasProductImage,
    productImageUrl,
    productThumb,
    imagePlaceholder,
    el,
    svg,
    replaceChildren,
    setText,
    toast,
    loadIdentity,
    saveIdentity,
    clampAge,
    requestIdentity,
    onStats,
    eventTimeOf,
    IDENTITY_KEY,
  };

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", boot);
  } else {
    boot();
  }
})();
