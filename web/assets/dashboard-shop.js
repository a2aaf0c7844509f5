/*
 * The dashboard's shop panels: sessions, sources and conversions, drawn from the snapshot's
 * `shop` object (see crates/engine/src/window/snapshot.rs, `ShopSnapshot`). Money arrives in
 * hundredths of the currency's unit; averages and rates are worked out here from the sums.
 *
 * dashboard.js calls CPShop.createCharts() once and CPShop.panels(snap, ready) with each
 * snapshot.
 */
window.CPShop = (function () {
  "use strict";

  const { el, fmtInt, fmtPct, fmtHM, fmtDuration, setText, isNum } = CP;
  const arr = (v) => (Array.isArray(v) ? v : []);
  const obj = (v) => (v && typeof v === "object" && !Array.isArray(v) ? v : {});
  const num = (v) => (isNum(v) ? v : 0);

  const SERIES = [
    { key: "add_to_cart", label: "Adds to cart", color: "#6366f1" },
    { key: "begin_checkout", label: "Checkouts", color: "#f59e0b" },
    { key: "purchases", label: "Purchases", color: "#10b981" },
  ];
  const SOURCE_NAMES = {
    direct: "Direct",
    search: "Search engines",
    social: "Social networks",
    referral: "Other sites",
    email: "E-mail",
    paid: "Ads",
  };

  let chart = null;
  let buckets = [];

  /** "€12.34" for hundredths of a currency ("" for none sent: a plain number). */
  function fmtMoney(hundredths, currency) {
    const value = num(hundredths) / 100;
    if (currency && /^[A-Z]{3}$/.test(currency)) {
      try {
        return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(value);
      } catch (_) {
        // An unknown code: the number and the code.
      }
    }
    return `${value.toFixed(2)}${currency ? ` ${currency}` : ""}`;
  }

  /** The revenue list as text: the biggest currency first, others after it. */
  function moneyText(list, pick) {
    const shown = arr(list)
      .filter((m) => m && num(m.orders) > 0)
      .sort((a, b) => num(b.hundredths) - num(a.hundredths));
    if (shown.length === 0) return null;
    return shown.map((m) => pick(m)).join(" + ");
  }

  function createCharts() {
    if (typeof window.Chart !== "function") {
      const note = document.getElementById("conversions-empty");
      note.hidden = false;
      note.textContent = "Charts could not be loaded.";
      return;
    }
    chart = new window.Chart(document.getElementById("conversions-chart"), {
      type: "bar",
      data: {
        labels: [],
        datasets: SERIES.map((s) => ({ label: s.label, data: [], backgroundColor: s.color, borderRadius: 3, maxBarThickness: 14 })),
      },
      options: {
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { grid: { display: false }, ticks: { maxRotation: 0, autoSkipPadding: 10 } },
          y: { beginAtZero: true, ticks: { precision: 0, callback: (v) => fmtInt(v) }, grace: "10%" },
        },
        plugins: {
          legend: { display: true, position: "bottom", labels: { boxWidth: 10 } },
          tooltip: {
            callbacks: {
              title: (items) => {
                const b = buckets[items[0].dataIndex];
                if (!b) return "";
                const range = `${fmtHM(b.start_ms)}–${fmtHM(b.start_ms + 60000)} ${CP.zoneOffset(b.start_ms)}`;
                return b.final === false ? `${range} (in progress)` : range;
              },
              footer: (items) => {
                const b = buckets[items[0].dataIndex];
                const revenue = b && moneyText(b.revenue, (m) => fmtMoney(m.hundredths, m.currency));
                return revenue ? `Revenue ${revenue}` : "";
              },
            },
          },
        },
      },
    });
  }

  function renderKpis(shop, ready) {
    const c = obj(shop.conversions_1h);
    const s = obj(shop.sessions_1h);
    const set = (id, text) => setText(document.getElementById(id), ready ? text : "—");
    set("active-sessions", fmtInt(num(shop.active_sessions)));
    set("carts-1h", fmtInt(num(c.add_to_cart)));
    set("checkouts-1h", fmtInt(num(c.begin_checkout)));
    set("purchases-1h", fmtInt(num(c.purchases)));
    set("conversion-rate", num(s.started) > 0 ? fmtPct(num(c.purchases) / num(s.started)) : "—");
    set("revenue-1h", moneyText(c.revenue, (m) => fmtMoney(m.hundredths, m.currency)) || fmtMoney(0, ""));
    set("aov-1h", moneyText(c.revenue, (m) => fmtMoney(Math.round(num(m.hundredths) / num(m.orders)), m.currency)) || "—");
    set("searches-1h", fmtInt(num(c.searches)));
  }

  function renderSessions(shop, ready) {
    const s = obj(shop.sessions_1h);
    const ended = num(s.ended);
    const set = (id, text) => setText(document.getElementById(id), ready ? text : "—");
    set("sessions-started", fmtInt(num(s.started)));
    set("sessions-ended", fmtInt(ended));
    set("session-duration", ended ? fmtDuration(num(s.duration_ms) / ended / 1000) : "—");
    set("session-pages", ended ? (num(s.pages) / ended).toFixed(1) : "—");
    set("bounce-rate", ended ? fmtPct(num(s.bounces) / ended) : "—");
  }

  function renderChart(shop, ready) {
    buckets = ready ? arr(shop.conversions_per_minute).filter((b) => b && isNum(b.start_ms)) : [];
    const note = document.getElementById("conversions-empty");
    note.hidden = ready && chart !== null;
    if (!chart) return;
    chart.data.labels = buckets.map((b) => fmtHM(b.start_ms));
    SERIES.forEach((s, i) => {
      chart.data.datasets[i].data = buckets.map((b) => num(b[s.key]));
    });
    chart.update("none");
  }

  /** A ranked list with bars; `label` names a key, `empty` is shown for none. */
  function rankedList(id, entries, { label = (k) => k, empty, heading, testid }) {
    const list = document.getElementById(id);
    const rows = arr(entries).filter((e) => e && num(e.count) > 0);
    const items = [];
    if (heading) items.push(el("li", { className: "ranked__heading", text: heading }));
    if (rows.length === 0) {
      items.push(el("li", { className: "empty-note", text: empty }));
      CP.replaceChildren(list, items);
      return;
    }
    const max = Math.max(...rows.map((e) => num(e.count)));
    for (const e of rows) {
      items.push(
        el("li", { dataset: { key: e.key, testid } }, [
          el("div", { className: "ranked__row" }, [
            el("span", { className: "ranked__name", title: e.key, text: label(e.key) }),
            el("span", { className: "ranked__value", text: fmtInt(num(e.count)) }),
          ]),
          el("div", { className: "bar", attrs: { "aria-hidden": "true" } }, [
            el("div", { className: "bar__fill", style: { width: `${Math.max(2, (num(e.count) / max) * 100)}%` } }),
          ]),
        ])
      );
    }
    CP.replaceChildren(list, items);
  }

  function renderLists(shop, ready) {
    const waiting = "Waiting for the first events…";
    const none = (text) => (ready ? text : waiting);
    rankedList("sources", shop.sources_1h, {
      label: (k) => SOURCE_NAMES[k] || k,
      empty: none("No sessions started in the last hour"),
      testid: "source-row",
    });
    rankedList("referrers", shop.referrer_hosts_1h, { empty: none("No referring sites"), heading: "Referring sites", testid: "referrer-row" });
    const campaigns = arr(shop.utm_campaigns_1h).length ? shop.utm_campaigns_1h : shop.utm_sources_1h;
    rankedList("campaigns", campaigns, {
      empty: none("No campaign (utm_) links"),
      heading: arr(shop.utm_campaigns_1h).length ? "Campaigns (utm_campaign)" : "Campaign sources (utm_source)",
      testid: "campaign-row",
    });
    rankedList("top-queries", shop.top_queries_1h, { empty: none("No searches in the last hour"), testid: "query-row" });
    rankedList("entry-pages", shop.entry_pages_1h, { empty: none("No sessions started"), heading: "Entry pages", testid: "entry-row" });
    rankedList("exit-pages", shop.exit_pages_1h, { empty: none("No sessions ended yet"), heading: "Exit pages", testid: "exit-row" });
  }

  function renderProducts(shop, ready, productTitle) {
    const tbody = document.querySelector("#revenue-products tbody");
    const list = ready ? arr(shop.top_products_by_revenue_1h).filter(Boolean) : [];
    if (list.length === 0) {
      CP.replaceChildren(
        tbody,
        el("tr", { className: "empty-row" }, [el("td", { colSpan: 4, text: ready ? "No orders in the last hour" : "Waiting for the first events…" })])
      );
      return;
    }
    const currency = (arr(obj(shop.conversions_1h).revenue).find((m) => m && m.currency) || {}).currency || "";
    CP.replaceChildren(
      tbody,
      list.map((p, i) =>
        el("tr", { dataset: { productId: p.product_id || "", testid: "revenue-product-row" } }, [
          el("td", { className: "rank", dataset: { label: "#" }, text: String(i + 1) }),
          el("td", { className: "col-flex cell-head", dataset: { label: "Product" } }, [
            el("span", { className: "cell-title", title: p.product_id || "", text: productTitle(p.product_id, p.title) }),
          ]),
          el("td", { className: "num", dataset: { label: "Units" }, text: fmtInt(num(p.units)) }),
          el("td", { className: "num", dataset: { label: "Revenue" }, text: fmtMoney(p.hundredths, currency) }),
        ])
      )
    );
  }

  /** One table per funnel: visitors per step, conversion from the step before and from the first, median time. */
  function renderFunnels(shop, ready) {
    const host = document.getElementById("funnels");
    const funnels = ready ? arr(shop.funnels_1h).filter((f) => f && arr(f.steps).length) : [];
    if (funnels.length === 0) {
      CP.replaceChildren(host, el("p", { className: "empty-note", text: ready ? "No funnels are active" : "Waiting for the first events…" }));
      return;
    }
    CP.replaceChildren(
      host,
      funnels.map((f) => {
        const steps = arr(f.steps);
        const first = num(steps[0] && steps[0].visitors);
        return el("div", { className: "funnel", dataset: { testid: "funnel", funnel: f.name } }, [
          el("div", { className: "funnel__title" }, [
            el("span", { className: "mono", text: f.name }),
            el("span", { className: "muted", text: f.description ? ` · ${f.description}` : "" }),
          ]),
          el(
            "ol",
            { className: "funnel__steps" },
            steps.map((step, i) => {
              const visitors = num(step.visitors);
              const before = i > 0 ? num(steps[i - 1].visitors) : null;
              const rate = before === null ? "" : before > 0 ? fmtPct(visitors / before) : "—";
              const pct = first > 0 ? Math.max(visitors > 0 ? 2 : 0, Math.round((visitors / first) * 100)) : 0;
              const median = isNum(step.median_ms_from_previous) ? fmtDuration(step.median_ms_from_previous / 1000) : "";
              return el("li", { className: "funnel__step", dataset: { testid: "funnel-step", step: step.name, visitors: String(visitors) } }, [
                el("div", { className: "funnel__row" }, [
                  el("span", { className: "funnel__name", text: `${i + 1}. ${step.name}` }),
                  el("span", { className: "funnel__value", text: fmtInt(visitors) }),
                ]),
                el("div", { className: "bar", attrs: { "aria-hidden": "true" } }, [el("div", { className: "bar__fill", style: { width: `${pct}%` } })]),
                el("div", { className: "funnel__meta muted" }, [
                  el("span", { dataset: { testid: "funnel-rate" }, text: rate ? `${rate} of the step before` : "entry step" }),
                  el("span", { text: median ? `median ${median} after the step before` : "" }),
                ]),
              ]);
            })
          ),
        ]);
      })
    );
  }

  /** Fills every shop panel; a bad field in one panel leaves the others drawn. */
  function panels(snap, ready, productTitle) {
    const shop = obj(obj(snap).shop);
    for (const panel of [renderKpis, renderSessions, renderLists, renderProducts, renderFunnels, renderChart]) {
      try {
        panel(shop, ready, productTitle);
      } catch (err) {
        console.warn(`dashboard: ${panel.name} failed`, err);
      }
    }
  }

  return { createCharts, panels, fmtMoney };
})();
