/*
 * Clickpulse — live dashboard (served at `/`).
 *
 * Data flow:
 *   - /api/dashboard/stream (Server-Sent Events, event `snapshot`) drives every panel except the
 *     state-machine log; the DOM and the charts are updated in place, never rebuilt.
 *   - /api/patterns/log is polled once a second for the state-machine log.
 *   - /api/products is read once to show product titles and to know which products have images.
 *
 * Test hooks: body[data-snapshot-count] counts snapshots received; the nav clock
 * (#event-clock) carries the newest snapshot's `now_ms` in data-now-ms.
 */
(function () {
  "use strict";

  const { el, fmtInt, fmtPct, fmtHM, fmtTime, fmtDateTime, setText, isNum } = CP;

  const DEVICES = [
    { key: "Desktop", color: "#6366f1" },
    { key: "Mobile", color: "#06b6d4" },
    { key: "Tablet", color: "#f59e0b" },
    { key: "Other", color: "#94a3b8" },
  ];
  const PRIMARY = "#6366f1";
  const TEAL = "#14b8a6";
  const MAX_COUNTRY_ROWS = 10;

  const state = {
    snapshotCount: 0,
    charts: {},
    catalog: new Map(), // product id → product
    latestKeys: null, // keys of the rows in "latest views", to flash new ones
    lastSnapshot: null,
    lastKpis: {},
  };

  // ------------------------------------------------------------------ helpers

  const arr = (v) => (Array.isArray(v) ? v : []);
  const obj = (v) => (v && typeof v === "object" && !Array.isArray(v) ? v : {});
  const num = (v) => (isNum(v) ? v : 0);

  /** Title for a product id: the snapshot's or catalogue's title, else a readable fallback. */
  function productTitle(productId, givenTitle) {
    if (productId === "home") return givenTitle && givenTitle !== "Unknown" ? givenTitle : "Home page";
    if (givenTitle && givenTitle !== "Unknown") return givenTitle;
    if (givenTitle === "Unknown" && !state.catalog.has(productId)) return "Unknown product";
    const product = state.catalog.get(productId);
    return product && product.title ? product.title : productId || "—";
  }

  /**
   * Whether we can show a picture of this product: only catalogue products have one. Until the
   * catalogue is loaded nothing is requested (a 404 would be a console error); the panels are
   * redrawn once it arrives.
   */
  function productHasImage(productId) {
    return CP.hasProductImage(productId) && state.catalog.has(productId);
  }

  function thumbFor(productId) {
    return productHasImage(productId) ? CP.productThumb(productId) : CP.imagePlaceholder("thumb");
  }

  /** A value with a proportional bar. */
  function barCell(value, max, color) {
    const pct = max > 0 ? Math.max(2, Math.round((value / max) * 100)) : 0;
    const fill = el("div", { className: "bar__fill", style: { width: `${pct}%` } });
    if (color) fill.style.background = color;
    return el("div", { className: "barcell" }, [
      el("div", { className: "bar", attrs: { "aria-hidden": "true" } }, [fill]),
      el("span", { className: "bar__value", text: fmtInt(value) }),
    ]);
  }

  function emptyRow(colspan, text) {
    return el("tr", { className: "empty-row" }, [el("td", { colSpan: colspan, text })]);
  }

  /** Tooltip title for a bucket: "14:05–14:06 UTC+1 (in progress)", in the chosen zone. */
  function bucketTitle(bucket, widthMs) {
    if (!bucket) return "";
    const range = `${fmtHM(bucket.start_ms)}–${fmtHM(bucket.start_ms + widthMs)} ${CP.zoneOffset(bucket.start_ms)}`;
    return bucket.final === false ? `${range} (in progress)` : range;
  }

  // ------------------------------------------------------------------ charts

  function chartsAvailable() {
    return typeof window.Chart === "function";
  }

  /** A vertical gradient under the line chart. */
  function areaGradient(context) {
    const { chart } = context;
    const { ctx, chartArea } = chart;
    if (!chartArea) return CP.withAlpha(PRIMARY, 0.12);
    const gradient = ctx.createLinearGradient(0, chartArea.top, 0, chartArea.bottom);
    gradient.addColorStop(0, CP.withAlpha(PRIMARY, 0.28));
    gradient.addColorStop(1, CP.withAlpha(PRIMARY, 0.02));
    return gradient;
  }

  const integerTicks = {
    precision: 0,
    callback: (value) => fmtInt(value),
  };

  function createCharts() {
    if (!chartsAvailable()) {
      for (const id of ["pv-empty", "apm-empty", "v30-empty", "category-empty", "device-empty"]) {
        const note = document.getElementById(id);
        note.hidden = false;
        note.textContent = "Charts could not be loaded.";
      }
      return;
    }
    const Chart = window.Chart;

    state.charts.pv = new Chart(document.getElementById("pv-chart"), {
      type: "line",
      data: {
        labels: [],
        datasets: [
          {
            label: "Page views",
            data: [],
            borderColor: PRIMARY,
            backgroundColor: areaGradient,
            fill: true,
            tension: 0.3,
            cubicInterpolationMode: "monotone", // never dips below zero between points
            borderWidth: 2.25,
            pointRadius: 2.5,
            pointHoverRadius: 5,
            pointBackgroundColor: PRIMARY,
            // Dashed segment into a bucket that is still filling up.
            segment: {
              borderDash: (ctx) => (state.charts.pv && state.charts.pv.$finals[ctx.p1DataIndex] === false ? [5, 4] : undefined),
            },
          },
        ],
      },
      options: {
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { grid: { display: false }, ticks: { maxRotation: 0, autoSkipPadding: 12 } },
          y: { beginAtZero: true, ticks: integerTicks, grace: "10%" },
        },
        plugins: {
          tooltip: {
            callbacks: {
              title: (items) => bucketTitle(state.charts.pv.$buckets[items[0].dataIndex], 60000),
              label: (item) => ` ${fmtInt(item.parsed.y)} page views`,
            },
          },
        },
      },
    });
    state.charts.pv.$finals = [];
    state.charts.pv.$buckets = [];

    state.charts.apm = barChart("active-per-minute-chart", "Active visitors", PRIMARY, 60000, "visitors");
    state.charts.v30 = barChart("visitors-30m-chart", "Visitors", TEAL, 30 * 60000, "visitors");

    state.charts.category = new Chart(document.getElementById("category-chart"), {
      type: "bar",
      data: { labels: [], datasets: [{ label: "Page views", data: [], backgroundColor: [], borderRadius: 5, maxBarThickness: 18 }] },
      options: {
        indexAxis: "y",
        scales: {
          x: { beginAtZero: true, ticks: integerTicks, grace: "5%" },
          y: { grid: { display: false }, ticks: { autoSkip: false, color: "#334155" } },
        },
        plugins: {
          tooltip: { callbacks: { label: (item) => ` ${fmtInt(item.parsed.x)} page views` } },
        },
      },
    });

    state.charts.device = new Chart(document.getElementById("device-chart"), {
      type: "doughnut",
      data: {
        labels: DEVICES.map((d) => d.key),
        datasets: [
          {
            data: DEVICES.map(() => 0),
            backgroundColor: DEVICES.map((d) => d.color),
            borderColor: "#ffffff",
            borderWidth: 2,
            hoverOffset: 4,
          },
        ],
      },
      options: {
        cutout: "70%",
        plugins: {
          tooltip: {
            callbacks: {
              label: (item) => {
                const total = item.dataset.data.reduce((a, b) => a + b, 0);
                return ` ${item.label}: ${fmtInt(item.parsed)} (${fmtPct(total ? item.parsed / total : 0)})`;
              },
            },
          },
        },
      },
      plugins: [donutCenterText],
    });
  }

  /** Writes the total in the middle of the donut. */
  const donutCenterText = {
    id: "donutCenterText",
    afterDraw(chart) {
      const data = chart.data.datasets[0].data;
      const total = data.reduce((a, b) => a + num(b), 0);
      if (!total) return;
      const { ctx, chartArea } = chart;
      const x = (chartArea.left + chartArea.right) / 2;
      const y = (chartArea.top + chartArea.bottom) / 2;
      const family = window.Chart.defaults.font.family;
      ctx.save();
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillStyle = "#0f172a";
      ctx.font = `700 22px ${family}`;
      ctx.fillText(fmtInt(total), x, y - 8);
      ctx.fillStyle = "#64748b";
      ctx.font = `500 11px ${family}`;
      ctx.fillText("page views", x, y + 12);
      ctx.restore();
    },
  };

  function barChart(canvasId, label, color, widthMs, unit) {
    const chart = new window.Chart(document.getElementById(canvasId), {
      type: "bar",
      data: { labels: [], datasets: [{ label, data: [], backgroundColor: [], borderRadius: 4, maxBarThickness: 28 }] },
      options: {
        scales: {
          x: { grid: { display: false }, ticks: { maxRotation: 0, autoSkipPadding: 10 } },
          y: { beginAtZero: true, ticks: integerTicks, grace: "10%" },
        },
        plugins: {
          tooltip: {
            callbacks: {
              title: (items) => bucketTitle(chart.$buckets[items[0].dataIndex], widthMs),
              label: (item) => ` ${fmtInt(item.parsed.y)} ${unit}`,
            },
          },
        },
      },
    });
    chart.$buckets = [];
    chart.$color = color;
    return chart;
  }

  /** Put a series of time buckets into a line/bar chart; in-progress buckets are drawn lighter. */
  function setBuckets(chart, buckets, valueKey) {
    if (!chart) return;
    const list = arr(buckets).filter((b) => b && isNum(b.start_ms));
    chart.$buckets = list;
    chart.$finals = list.map((b) => b.final !== false);
    chart.data.labels = list.map((b) => fmtHM(b.start_ms));
    const dataset = chart.data.datasets[0];
    dataset.data = list.map((b) => num(b[valueKey]));
    if (chart.config.type === "bar") {
      dataset.backgroundColor = list.map((b) => CP.withAlpha(chart.$color, b.final === false ? 0.35 : 0.85));
    } else {
      dataset.pointBackgroundColor = list.map((b) => (b.final === false ? "#ffffff" : PRIMARY));
      dataset.pointBorderColor = PRIMARY;
    }
    chart.update("none");
  }

  // ------------------------------------------------------------------ panels

  function renderKpi(id, value) {
    const node = document.getElementById(id);
    const text = isNum(value) ? fmtInt(value) : "—";
    if (node.textContent !== text) {
      node.textContent = text;
      // A short colour flash when the number changes (not on the first value).
      if (state.lastKpis[id] !== undefined) {
        node.classList.remove("bump");
        void node.offsetWidth; // restart the animation
        node.classList.add("bump");
      }
    }
    state.lastKpis[id] = text;
  }

  function renderKpis(snap, ready) {
    const offers = Object.values(obj(snap.offers_by_pattern_1h)).reduce((a, b) => a + num(b), 0);
    const views = arr(snap.page_views_per_minute).reduce((a, b) => a + num(b && b.views), 0);
    renderKpi("active-30m", ready ? num(snap.active_visitors_30m) : null);
    renderKpi("active-5m", ready ? num(snap.active_visitors_5m) : null);
    renderKpi("views-15m", ready ? views : null);
    renderKpi("offers-1h", ready ? offers : null);
  }

  function renderTimeCharts(snap, ready) {
    const { pv, apm, v30 } = state.charts;
    setBuckets(pv, ready ? snap.page_views_per_minute : [], "views");
    setBuckets(apm, ready ? snap.active_visitors_per_minute_30m : [], "visitors");
    setBuckets(v30, ready ? snap.visitors_per_30min : [], "visitors");
    for (const id of ["pv-empty", "apm-empty", "v30-empty"]) {
      document.getElementById(id).hidden = ready && chartsAvailable();
    }
  }

  function renderCategories(snap, ready) {
    const list = ready
      ? arr(snap.category_views_1h)
          .filter((c) => c && num(c.views) > 0)
          .sort((a, b) => num(b.views) - num(a.views))
      : [];
    const note = document.getElementById("category-empty");
    note.hidden = list.length > 0 || !chartsAvailable();
    if (!ready) note.textContent = "Waiting for the first events…";
    else note.textContent = "No page views in the last hour";
    const chart = state.charts.category;
    if (!chart) return;
    chart.data.labels = list.map((c) => CP.categoryLabel(c.category));
    chart.data.datasets[0].data = list.map((c) => num(c.views));
    chart.data.datasets[0].backgroundColor = list.map((c) => CP.withAlpha(CP.categoryColor(c.category), 0.85));
    chart.update("none");
  }

  function renderDevices(snap, ready) {
    const devices = obj(snap.device_views_10m);
    const values = DEVICES.map((d) => (ready ? num(devices[d.key]) : 0));
    const total = values.reduce((a, b) => a + b, 0);

    const note = document.getElementById("device-empty");
    note.hidden = total > 0 || !chartsAvailable();
    note.textContent = ready ? "No page views in the last 10 minutes" : "Waiting for the first events…";

    if (state.charts.device) {
      state.charts.device.data.datasets[0].data = values;
      state.charts.device.update("none");
    }

    const legend = document.getElementById("device-legend");
    CP.replaceChildren(
      legend,
      DEVICES.map((d, i) =>
        el("li", { dataset: { device: d.key } }, [
          el("span", { className: "legend__swatch", style: { background: d.color }, attrs: { "aria-hidden": "true" } }),
          el("span", { text: d.key }),
          el("span", { className: "legend__value", text: fmtInt(values[i]) }),
          el("span", { className: "legend__pct", text: total ? fmtPct(values[i] / total) : "—" }),
        ])
      )
    );
  }

  function renderTopProducts(snap, ready) {
    const tbody = document.querySelector("#top-products tbody");
    const list = ready ? arr(snap.top_products_1h).filter(Boolean) : [];
    if (list.length === 0) {
      CP.replaceChildren(tbody, emptyRow(4, ready ? "No product views in the last hour" : "Waiting for the first events…"));
      return;
    }
    const max = Math.max(...list.map((p) => num(p.views)));
    CP.replaceChildren(
      tbody,
      list.map((p, i) =>
        el("tr", { dataset: { productId: p.product_id || "", testid: "top-product-row" } }, [
          el("td", { className: "rank", dataset: { label: "#" }, text: String(i + 1) }),
          el("td", { className: "col-flex cell-head", dataset: { label: "Product" } }, [
            el("div", { className: "product-cell" }, [
              thumbFor(p.product_id),
              el("span", { className: "cell-title", title: `${productTitle(p.product_id, p.title)} (${p.product_id || "unknown"})`, text: productTitle(p.product_id, p.title) }),
            ]),
          ]),
          el("td", { dataset: { label: "Category" } }, [CP.categoryPill(p.category)]),
          el("td", { className: "num", dataset: { label: "Views" } }, [barCell(num(p.views), max)]),
        ])
      )
    );
  }

  function renderLatestViews(snap, ready) {
    const tbody = document.querySelector("#latest-views tbody");
    const list = ready ? arr(snap.latest_views).filter(Boolean) : [];
    if (list.length === 0) {
      CP.replaceChildren(tbody, emptyRow(6, ready ? "No page views yet" : "Waiting for the first events…"));
      state.latestKeys = ready ? new Set() : null;
      return;
    }
    const keyOf = (v) => `${v.ts_ms}|${v.visitor}|${v.product_id}`;
    const previous = state.latestKeys;
    state.latestKeys = new Set(list.map(keyOf));
    CP.replaceChildren(
      tbody,
      list.map((v) => {
        const isNew = previous !== null && !previous.has(keyOf(v));
        return el("tr", { className: isNew ? "is-new" : "", dataset: { testid: "latest-view-row", visitor: v.visitor || "" } }, [
          el("td", { className: "mono", title: fmtDateTime(v.ts_ms), dataset: { label: "Time" }, text: fmtTime(v.ts_ms) }),
          el("td", { className: "mono", title: v.visitor || "", dataset: { label: "Visitor" }, text: CP.shortVisitor(v.visitor) }),
          el("td", { className: "mono", dataset: { label: "IP" }, text: v.ip || "—" }),
          el("td", { title: (v.country || "unknown").toUpperCase(), dataset: { label: "Country" }, text: CP.countryName(v.country) }),
          el("td", { className: "col-flex cell-head", dataset: { label: "Product" } }, [el("span", { className: "cell-title", title: v.product_id || "", text: productTitle(v.product_id) })]),
          el("td", { dataset: { label: "Category" } }, [CP.categoryPill(v.category)]),
        ]);
      })
    );
  }

  function renderCountries(snap, ready) {
    const tbody = document.querySelector("#countries tbody");
    const list = ready
      ? arr(snap.country_views_30m)
          .filter((c) => c && num(c.views) > 0)
          .sort((a, b) => num(b.views) - num(a.views))
      : [];
    if (list.length === 0) {
      CP.replaceChildren(tbody, emptyRow(2, ready ? "No page views in the last 30 minutes" : "Waiting for the first events…"));
      return;
    }
    const total = list.reduce((a, c) => a + num(c.views), 0);
    const shown = list.slice(0, MAX_COUNTRY_ROWS);
    const rest = list.slice(MAX_COUNTRY_ROWS);
    const row = (label, code, views) =>
      el("tr", { dataset: { testid: "country-row", country: code } }, [
        el("td", { className: "cell-head", dataset: { label: "Country" } }, [
          el("div", { text: label }),
          el("div", { className: "muted", style: { fontSize: "12px" }, text: `${fmtPct(total ? views / total : 0)} of views` }),
        ]),
        el("td", { className: "num", dataset: { label: "Views" } }, [barCell(views, total)]),
      ]);
    const rows = shown.map((c) => row(CP.countryName(c.country), String(c.country || "unknown"), num(c.views)));
    if (rest.length > 0) {
      rows.push(row(`${rest.length} other ${rest.length === 1 ? "country" : "countries"}`, "other", rest.reduce((a, c) => a + num(c.views), 0)));
    }
    CP.replaceChildren(tbody, rows);
  }

  function renderOffersByPattern(snap, ready) {
    const list = document.getElementById("offers-by-pattern");
    const entries = Object.entries(obj(snap.offers_by_pattern_1h))
      .map(([name, count]) => [name, num(count)])
      .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    if (!ready || entries.length === 0) {
      CP.replaceChildren(list, el("li", { className: "empty-note", text: ready ? "No offers sent in the last hour" : "Waiting for the first events…" }));
      return;
    }
    const max = Math.max(...entries.map((e) => e[1]));
    CP.replaceChildren(
      list,
      entries.map(([name, count]) =>
        el("li", { dataset: { pattern: name, testid: "offer-pattern-row" } }, [
          el("div", { className: "ranked__row" }, [
            el("span", { className: "ranked__name", title: name, text: name }),
            el("span", { className: "ranked__value", text: fmtInt(count) }),
          ]),
          el("div", { className: "bar", attrs: { "aria-hidden": "true" } }, [
            el("div", { className: "bar__fill", style: { width: `${max > 0 ? Math.max(2, (count / max) * 100) : 0}%` } }),
          ]),
        ])
      )
    );
  }

  function renderWaiting(ready, connected) {
    document.getElementById("waiting").hidden = ready;
    setText(document.getElementById("waiting-title"), connected ? "Waiting for the first events…" : "Connecting to the live stream…");
  }

  /** Render one snapshot into every panel. */
  function renderSnapshot(raw) {
    const snap = obj(raw);
    state.snapshotCount += 1;
    document.body.dataset.snapshotCount = String(state.snapshotCount);
    state.lastSnapshot = snap;
    renderPanels(snap);
  }

  /** Fill every panel from a snapshot (also used to redraw once product titles are known). */
  function renderPanels(snap) {
    const ready = isNum(snap.now_ms);
    const clock = document.getElementById("event-clock");
    if (clock) clock.dataset.nowMs = ready ? String(snap.now_ms) : "";
    setText(document.getElementById("snapshot-time"), ready ? fmtDateTime(snap.now_ms) : "—");

    renderWaiting(ready, true);
    // Each panel is independent: a bad field in one must not blank the others. Numbers and
    // tables first (cheap, most watched), then the charts.
    const panels = [renderKpis, renderLatestViews, renderTopProducts, renderCountries, renderOffersByPattern, renderTimeCharts, renderCategories, renderDevices];
    for (const panel of panels) {
      try {
        panel(snap, ready);
      } catch (err) {
        console.warn(`dashboard: ${panel.name} failed`, err);
      }
    }
    if (window.CPShop) window.CPShop.panels(snap, ready, productTitle);
    honourLogAnchor();
  }

  // ------------------------------------------------------------------ live stream

  function setStreamStatus(kind, text) {
    const pill = document.getElementById("stream-status");
    pill.querySelector(".live-dot").classList.toggle("is-live", kind === "live");
    pill.classList.toggle("is-error", kind === "error");
    pill.dataset.state = kind;
    setText(document.getElementById("stream-status-text"), text);
  }

  function connectStream() {
    if (typeof EventSource !== "function") {
      pollSnapshots();
      return;
    }
    const source = new EventSource(`/api/dashboard/stream${accessQuery()}`);
    source.addEventListener("open", () => setStreamStatus("live", "Live"));
    source.addEventListener("snapshot", (event) => {
      setStreamStatus("live", "Live");
      let data = null;
      try {
        data = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      renderSnapshot(data);
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        // The server refused the stream (e.g. no aggregation stage): try again shortly.
        setStreamStatus("error", "Stream unavailable, retrying…");
        source.close();
        setTimeout(connectStream, 3000);
      } else {
        setStreamStatus("error", "Reconnecting…");
      }
    });
  }

  /**
   * Who this page is, for the server's privacy rules: visitors are shown pseudonymised and IPs
   * cut to their network unless the page carries the viewer token (open the dashboard once as
   * `/?viewer=TOKEN`; it is kept for the tab), and your own shop visitor (its identity token)
   * is shown as itself.
   */
  function accessQuery() {
    const params = new URLSearchParams();
    const fromUrl = new URLSearchParams(location.search).get("viewer");
    try {
      if (fromUrl) sessionStorage.setItem("clickpulse.viewer", fromUrl);
    } catch (_) {
      /* no storage: the token lasts for this page */
    }
    let viewer = fromUrl;
    try {
      viewer = viewer || sessionStorage.getItem("clickpulse.viewer");
    } catch (_) {
      /* no storage */
    }
    if (viewer) params.set("viewer", viewer);
    const me = CP.loadIdentity();
    if (me && me.token) {
      params.set("me", me.visitor);
      params.set("token", me.token);
    }
    const text = params.toString();
    return text ? `?${text}` : "";
  }

  /** Fallback for browsers without EventSource: poll the snapshot every two seconds. */
  async function pollSnapshots() {
    try {
      renderSnapshot(await CP.fetchJSON(`/api/dashboard${accessQuery()}`));
      setStreamStatus("live", "Live (polling)");
    } catch (_) {
      setStreamStatus("error", "Dashboard unavailable, retrying…");
    }
    setTimeout(pollSnapshots, 2000);
  }

  // ------------------------------------------------------------------ state-machine log

  const log = {
    timer: null,
    seq: 0,
    lastKey: null,
    identity: null,
    debounce: null,
    lastTransitions: null, // the newest answer, to re-render it in another time zone
    lastVisitor: "",
  };

  function logFilterValue() {
    const mine = document.getElementById("state-log-mine");
    if (mine.checked && log.identity) return log.identity.visitor;
    return document.getElementById("state-log-filter").value.trim();
  }

  function setLogStatus(kind, text) {
    const pill = document.getElementById("state-log-status");
    pill.querySelector(".live-dot").classList.toggle("is-live", kind === "live");
    pill.classList.toggle("is-error", kind === "error");
    setText(document.getElementById("state-log-status-text"), text);
  }

  /** Keep ?visitor= in the address bar in step with the filter (the #log anchor stays). */
  function syncUrl(visitor) {
    const url = new URL(location.href);
    if (visitor) url.searchParams.set("visitor", visitor);
    else url.searchParams.delete("visitor");
    if (url.href !== location.href) history.replaceState(null, "", url.href);
  }

  function scheduleLogPoll(delay) {
    clearTimeout(log.timer);
    log.timer = setTimeout(pollLog, delay);
  }

  async function pollLog() {
    const visitor = logFilterValue();
    const seq = ++log.seq;
    const params = new URLSearchParams({ limit: "50" });
    if (visitor) params.set("visitor", visitor);
    for (const [k, v] of new URLSearchParams(accessQuery())) params.set(k, v);
    try {
      const body = await CP.fetchJSON(`/api/patterns/log?${params}`, { timeoutMs: 5000 });
      if (seq !== log.seq) return; // a newer request (new filter) is under way
      log.lastTransitions = arr(body && body.transitions);
      log.lastVisitor = visitor;
      renderLog(log.lastTransitions, visitor);
      setLogStatus("live", "Live");
      honourLogAnchor();
    } catch (err) {
      if (seq !== log.seq) return;
      const unavailable = err instanceof CP.HttpError && err.status === 404;
      setLogStatus("error", unavailable ? "Detection not running" : "Reconnecting…");
      if (log.lastKey === null) {
        CP.replaceChildren(document.getElementById("state-log-body"), emptyRow(7, unavailable ? "The detection stage does not run in this process." : "The state-machine log is not reachable right now; retrying."));
        log.lastKey = "error";
      }
    }
    if (seq === log.seq) scheduleLogPoll(1000);
  }

  function causeBadge(cause) {
    const known = ["transition", "reset", "expired", "aborted"];
    const kind = known.includes(cause) ? cause : "reset";
    return el("span", { className: `badge badge--${kind}`, dataset: { cause: cause || "" }, text: cause || "—" });
  }

  function renderLog(transitions, visitor) {
    const tbody = document.getElementById("state-log-body");
    const own = log.identity && log.identity.visitor;
    // Skip the DOM work when nothing changed (keeps hover and text selection stable).
    const key = JSON.stringify([transitions, visitor, own, Boolean(log.outsideEveryAudience)]);
    if (key === log.lastKey) return;
    log.lastKey = key;

    if (transitions.length === 0) {
      // Your own shop visitor outside every audience starts no match: say so, instead of
      // promising transitions that cannot come.
      const outside = visitor && visitor === own && log.outsideEveryAudience;
      const text = outside
        ? `Your shop visitor's profile (${log.identity.gender}, ${log.identity.age}) is in no pattern's audience, so its page views start no match and no transitions will appear. Change the age or gender in the shop to try one.`
        : visitor
          ? `No transitions recorded for visitor ${visitor} yet. They appear as soon as this visitor's page views advance or reset a pattern.`
          : "No transitions yet. They appear as soon as page views start advancing a pattern.";
      CP.replaceChildren(tbody, emptyRow(7, text));
      return;
    }

    CP.replaceChildren(
      tbody,
      transitions.filter(Boolean).map((t) => {
        const isOwn = Boolean(own) && t.visitor === own;
        const hasOffer = t.offer !== undefined && t.offer !== null && t.offer !== "";
        const visitorButton = el("button", {
          type: "button",
          className: "visitor-link",
          title: `${t.visitor || ""} — show only this visitor`,
          text: CP.shortVisitor(t.visitor),
          on: { click: () => setFilter(t.visitor || "") },
        });
        return el(
          "tr",
          {
            dataset: {
              testid: "state-log-row",
              own: isOwn ? "true" : "false",
              visitor: t.visitor || "",
              cause: t.cause || "",
              pattern: t.pattern || "",
            },
          },
          [
            el("td", { className: "mono", title: fmtDateTime(t.ts_ms), dataset: { label: "Time" }, text: fmtTime(t.ts_ms) }),
            el("td", { dataset: { label: "Visitor" } }, [visitorButton, isOwn ? el("span", { className: "badge badge--offer", style: { marginLeft: "6px" }, text: "you" }) : null]),
            el("td", { className: "mono", dataset: { label: "Pattern" }, text: t.pattern || "—" }),
            el("td", { dataset: { label: "Transition" } }, [
              el("span", { className: "state", text: t.from || "—" }),
              el("span", { className: "arrow", attrs: { "aria-label": "to" }, text: "→" }),
              el("span", { className: `state${t.to === "offer" ? " state--offer" : ""}`, text: t.to || "—" }),
            ]),
            el("td", { dataset: { label: "Cause" } }, [causeBadge(t.cause)]),
            el("td", { className: "log-product", dataset: { label: "Product" } }, [
              el("div", { className: "product-cell" }, [
                t.category ? CP.categoryPill(t.category) : null,
                el("span", { className: "cell-title", title: t.product_id || "", text: productTitle(t.product_id) }),
              ]),
            ]),
            el("td", { className: hasOffer ? "" : "cell-empty", dataset: { label: "Offer" } }, [hasOffer ? el("span", { className: "badge badge--offer", dataset: { testid: "state-log-offer" }, text: `Offer: ${t.offer}` }) : ""]),
          ]
        );
      })
    );
  }

  /** Set the visitor filter from code (row click, toggle) and refresh at once. */
  function setFilter(visitor) {
    const input = document.getElementById("state-log-filter");
    const mine = document.getElementById("state-log-mine");
    input.value = visitor;
    mine.checked = Boolean(log.identity) && visitor !== "" && visitor === log.identity.visitor;
    onFilterChanged(0);
  }

  function onFilterChanged(delay) {
    syncUrl(logFilterValue());
    log.lastKey = null;
    log.seq++; // drop responses for the old filter
    clearTimeout(log.debounce);
    log.debounce = setTimeout(() => scheduleLogPoll(0), delay);
  }

  /** Show who "my shop visitor" is, and enable the toggle only when there is one. */
  function renderIdentity() {
    log.identity = CP.loadIdentity();
    const mine = document.getElementById("state-log-mine");
    const me = document.getElementById("state-log-me");
    mine.disabled = !log.identity;
    if (log.identity) {
      CP.replaceChildren(me, ["Your shop visitor: ", el("span", { className: "mono", text: log.identity.visitor })]);
      mine.checked = document.getElementById("state-log-filter").value.trim() === log.identity.visitor;
      const identity = log.identity;
      CP.fetchJSON(`/api/patterns?gender=${encodeURIComponent(identity.gender || "U")}&age=${encodeURIComponent(identity.age)}`)
        .then((body) => {
          if (log.identity !== identity) return;
          const patterns = Array.isArray(body && body.patterns) ? body.patterns : [];
          // The next poll's render picks it up (it is part of the render's key).
          log.outsideEveryAudience = patterns.length > 0 && patterns.every((p) => p.for_you === false);
        })
        .catch(() => {
          log.outsideEveryAudience = false;
        });
    } else {
      mine.checked = false;
      CP.replaceChildren(me, ["Open the ", el("a", { href: "/shop", text: "shop" }), " to get your own visitor id."]);
    }
  }

  function setupLog() {
    const input = document.getElementById("state-log-filter");
    const mine = document.getElementById("state-log-mine");
    const fromUrl = new URLSearchParams(location.search).get("visitor");
    if (fromUrl) input.value = fromUrl.trim();
    renderIdentity();

    input.addEventListener("input", () => {
      if (mine.checked && input.value.trim() !== (log.identity && log.identity.visitor)) mine.checked = false;
      onFilterChanged(300);
    });
    mine.addEventListener("change", () => {
      if (mine.checked && log.identity) input.value = log.identity.visitor;
      else if (!mine.checked && log.identity && input.value.trim() === log.identity.visitor) input.value = "";
      onFilterChanged(0);
    });
    // The shop (another tab) may create a new visitor: follow it.
    window.addEventListener("storage", (event) => {
      if (event.key === CP.IDENTITY_KEY) {
        const wasMine = mine.checked;
        renderIdentity();
        if (wasMine && log.identity) setFilter(log.identity.visitor);
        log.lastKey = null;
      }
    });
    pollLog();
  }

  // ------------------------------------------------------------------ boot

  async function loadCatalog() {
    try {
      const products = await CP.fetchJSON("/api/products");
      for (const p of arr(products)) if (p && p.id) state.catalog.set(p.id, p);
      // Redraw what was rendered with bare product ids (latest-view flashes are kept as they were).
      if (state.lastSnapshot) {
        const keys = state.latestKeys;
        renderPanels(state.lastSnapshot);
        state.latestKeys = keys;
      }
      log.lastKey = null;
    } catch (_) {
      /* titles then fall back to product ids; images to the id pattern */
    }
  }

  /**
   * `/?visitor=ID#log` should land on the log, but the panels above it grow when the first
   * snapshot arrives. Re-scroll to the anchor after each early render until the reader scrolls
   * or types, or for at most five seconds.
   */
  const anchor = { active: false, until: 0 };

  function watchLogAnchor() {
    if (location.hash !== "#log") return;
    anchor.active = true;
    anchor.until = Date.now() + 5000;
    const stop = () => {
      anchor.active = false;
    };
    for (const type of ["wheel", "touchstart", "keydown", "mousedown"]) {
      window.addEventListener(type, stop, { once: true, passive: true });
    }
    honourLogAnchor();
  }

  function honourLogAnchor() {
    if (!anchor.active) return;
    if (Date.now() > anchor.until) {
      anchor.active = false;
      return;
    }
    document.getElementById("log").scrollIntoView({ block: "start", behavior: "instant" });
  }

  /** Another time zone chosen in the top bar: every time and axis label is drawn again. */
  function onTimeZoneChanged() {
    if (state.lastSnapshot) {
      const keys = state.latestKeys; // not a "new row" flash for every row
      renderPanels(state.lastSnapshot);
      state.latestKeys = keys;
    }
    if (log.lastTransitions) {
      log.lastKey = null;
      renderLog(log.lastTransitions, log.lastVisitor);
    }
  }

  function boot() {
    CP.onTimeZone(onTimeZoneChanged);
    createCharts();
    if (window.CPShop) window.CPShop.createCharts();
    renderWaiting(false, false);
    // Empty panels before the first snapshot, so nothing looks broken while connecting.
    const blank = {};
    for (const panel of [renderTopProducts, renderLatestViews, renderCountries, renderOffersByPattern, renderDevices, renderCategories]) {
      panel(blank, false);
    }
    state.latestKeys = null;
    loadCatalog();
    connectStream();
    setupLog();
    watchLogAnchor();
  }

  boot();
})();
