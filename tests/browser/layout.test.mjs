// Layout in a real browser at a desktop (1440×900) and a phone (390×844) size: no page scrolls
// sideways, no element sticks out of the viewport (unless it is inside a container that scrolls
// sideways on purpose and says so), the shop's identity card comes first on a phone, tables
// stack into readable cards, and every time follows the chosen time zone (site or viewer).
// Screenshots go to test-output/screenshots/layout-<page>-<width>.png.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { startDemo, launchBrowser, consoleErrors, screenshots } from "./harness.mjs";

const PRODUCT = "VD55177927";
const VIEWPORTS = [
  { width: 1440, height: 900 },
  { width: 390, height: 844 },
];
// A hang guard for waits on data, not a measure of speed.
const DATA_TIMEOUT = 60_000;

let demo;
let browser;
// The site's time zone as the server tells it; "UTC" when it has no /api/site (yet).
let siteZone = "UTC";
let siteEndpoint = false;

before(async () => {
  demo = await startDemo(["--idle-timeout-ms", "300", "--allowed-lateness-ms", "1000"]);
  browser = await launchBrowser();
  const r = await fetch(`${demo.base}/api/site`);
  if (r.ok) {
    const body = await r.json();
    if (typeof body.time_zone === "string" && body.time_zone) siteZone = body.time_zone;
    siteEndpoint = true;
  }
  console.log(`site time zone: ${siteZone}${siteEndpoint ? "" : " (no /api/site: the pages fall back to UTC)"}`);
});

after(async () => {
  await browser?.close();
  await demo?.stop();
});

/**
 * The harness's console errors, except the one expected while the server has no /api/site:
 * the browser logs the 404 of that request as a console error (the page then uses UTC).
 */
function pageErrors(page) {
  const errors = consoleErrors(page);
  let siteMisses = 0;
  page.on("console", (m) => {
    if (m.type() === "error" && /\/api\/site(\?|$)/.test(m.location()?.url || "")) siteMisses++;
  });
  return () => {
    let allowance = siteEndpoint ? 0 : siteMisses;
    return errors.filter((e) => {
      if (allowance > 0 && /status of 404/.test(e)) {
        allowance--;
        return false;
      }
      return true;
    });
  };
}

// ------------------------------------------------------------------ waiting for data

async function dashboardReady(page) {
  await page.waitForFunction(() => Number(document.body.dataset.snapshotCount || 0) >= 1, null, { timeout: DATA_TIMEOUT });
  for (const testid of ["top-product-row", "latest-view-row", "country-row"]) {
    await page.waitForSelector(`[data-testid="${testid}"]`, { timeout: DATA_TIMEOUT });
  }
  // The state-machine log has answered (rows, or its empty note).
  await page.waitForFunction(() => document.querySelectorAll("#state-log-body tr").length > 0, null, { timeout: DATA_TIMEOUT });
}

async function shopReady(page) {
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="product-card"]').length === 31, null, { timeout: DATA_TIMEOUT });
  await rulesReady(page);
}

async function productReady(page) {
  await page.waitForSelector('[data-testid="product-detail"]', { timeout: DATA_TIMEOUT });
  await rulesReady(page);
}

async function rulesReady(page) {
  await page.waitForFunction(() => !document.querySelector("#offer-rules-list[aria-busy]"), null, { timeout: DATA_TIMEOUT });
  await page.waitForFunction(() => document.querySelector('[data-testid="visitor-id"]').textContent.startsWith("Creating") === false, null, { timeout: DATA_TIMEOUT });
}

async function pipelineReady(page) {
  for (const stage of ["replay", "enrich", "aggregate", "detect"]) {
    await page.waitForSelector(`[data-testid="stage-${stage}"]`, { timeout: DATA_TIMEOUT });
  }
  await page.waitForSelector('[data-testid="stage-row"]', { timeout: DATA_TIMEOUT });
  // Two polls rendered: the boxes have their numbers and the layout its final heights.
  await page.waitForFunction(() => Number(document.body.dataset.statsCount || 0) >= 2, null, { timeout: DATA_TIMEOUT });
}

const PAGES = [
  { key: "dashboard", path: "/", ready: dashboardReady },
  { key: "shop", path: "/shop", ready: shopReady },
  { key: "product", path: `/shop/product/${PRODUCT}`, ready: productReady },
  { key: "pipeline", path: "/pipeline", ready: pipelineReady },
];

// ------------------------------------------------------------------ the overflow check

/**
 * Runs in the page. Returns {scrollWidth, innerWidth, offenders, unhinted}: visible elements
 * whose box reaches beyond the viewport's width (after clipping by overflow-hidden ancestors),
 * except inside a container that scrolls sideways (overflow-x auto/scroll, wider content); and
 * such containers that hold no visible scroll hint ([data-scroll-hint]).
 */
function overflowReport() {
  const vw = window.innerWidth;
  const describe = (el, r) => {
    const testid = el.getAttribute("data-testid");
    const cls = typeof el.className === "string" && el.className.trim() ? `.${el.className.trim().split(/\s+/).join(".")}` : "";
    const text = (el.textContent || "").trim().replace(/\s+/g, " ").slice(0, 40);
    const box = r ? ` [${Math.round(r.left)}…${Math.round(r.right)}]` : "";
    return `${el.tagName.toLowerCase()}${el.id ? `#${el.id}` : ""}${cls}${testid ? `[data-testid=${testid}]` : ""}${box}${text ? ` "${text}"` : ""}`;
  };
  const visible = (el) => {
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) return false;
    const cs = getComputedStyle(el);
    return cs.visibility !== "hidden" && cs.display !== "none" && Number(cs.opacity) > 0;
  };
  const scrollsSideways = (el) => {
    const ox = getComputedStyle(el).overflowX;
    return (ox === "auto" || ox === "scroll") && el.scrollWidth > el.clientWidth + 1;
  };

  const offenders = [];
  const scrollers = new Set();
  for (const el of document.body.querySelectorAll("*")) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    if (r.right <= vw + 1 && r.left >= -1) continue;
    if (!visible(el)) continue;
    let left = r.left;
    let right = r.right;
    let exempt = false;
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      if (scrollsSideways(a)) {
        scrollers.add(a);
        exempt = true;
        break;
      }
      if (getComputedStyle(a).overflowX !== "visible") {
        const ar = a.getBoundingClientRect();
        left = Math.max(left, ar.left);
        right = Math.min(right, ar.right);
      }
    }
    if (exempt || right - left <= 0) continue;
    if (right > vw + 1 || left < -1) offenders.push(describe(el, r));
  }
  for (const el of document.body.querySelectorAll("*")) {
    if (visible(el) && scrollsSideways(el)) scrollers.add(el);
  }
  const unhinted = [...scrollers]
    .filter((s) => visible(s))
    .filter((s) => ![...s.querySelectorAll("[data-scroll-hint]")].some((h) => visible(h) && !h.closest("[hidden]")))
    .map((s) => describe(s));
  return { scrollWidth: document.documentElement.scrollWidth, innerWidth: vw, offenders, unhinted };
}

async function assertNoSidewaysOverflow(page, label) {
  const report = await page.evaluate(overflowReport);
  assert.ok(report.scrollWidth <= report.innerWidth, `${label}: the page scrolls sideways (scrollWidth ${report.scrollWidth} > innerWidth ${report.innerWidth})`);
  assert.deepEqual(report.offenders.slice(0, 20), [], `${label}: elements reach beyond the viewport's ${report.innerWidth} px`);
  assert.deepEqual(report.unhinted, [], `${label}: containers that scroll sideways without a visible scroll hint`);
}

/** Top of an element relative to the document. */
function docTop(page, selector) {
  return page.$eval(selector, (el) => el.getBoundingClientRect().top + window.scrollY);
}

// ------------------------------------------------------------------ layout tests

for (const viewport of VIEWPORTS) {
  const phone = viewport.width < 600;
  test(`layout at ${viewport.width}×${viewport.height}: no page scrolls sideways, nothing sticks out`, async () => {
    const context = await browser.newContext({ viewport, deviceScaleFactor: 1 });
    const page = await context.newPage();
    const errors = pageErrors(page);
    for (const spec of PAGES) {
      const label = `${spec.path} at ${viewport.width} px`;
      await page.goto(`${demo.base}${spec.path}`);
      await spec.ready(page);
      await page.evaluate(() => window.scrollTo(0, 0));
      await assertNoSidewaysOverflow(page, label);

      if (phone && (spec.key === "shop" || spec.key === "product")) {
        const identity = await docTop(page, '[data-testid="identity"]');
        const first = await docTop(page, spec.key === "shop" ? '[data-testid="product-card"]' : '[data-testid="product-detail"]');
        assert.ok(identity < first, `${label}: the identity card (top ${identity}) comes before the ${spec.key === "shop" ? "first product card" : "product"} (top ${first})`);
        assert.ok(identity < viewport.height, `${label}: the identity card starts on the first screen (top ${identity})`);
        // The offer rules stay reachable: folded under the identity card, opened with a tap.
        const rules = await docTop(page, '[data-testid="offer-rules"]');
        assert.ok(rules < first, `${label}: the offer rules (top ${rules}) come before the products (top ${first})`);
        const wasOpen = await page.$eval('[data-testid="offer-rules"]', (d) => d.open === true);
        if (!wasOpen) await page.click('[data-testid="offer-rules-toggle"]');
        await page.waitForSelector("#offer-rules-list", { state: "visible" });
        await assertNoSidewaysOverflow(page, `${label} (offer rules open)`);
        if (!wasOpen) await page.click('[data-testid="offer-rules-toggle"]');
      }

      if (phone && spec.key === "dashboard") {
        // Top products shows whole product names, not one letter each.
        const cells = await page.$$eval('[data-testid="top-product-row"] .cell-title', (titles) =>
          titles.map((t) => {
            const range = document.createRange();
            range.selectNodeContents(t);
            return { text: t.textContent, width: range.getBoundingClientRect().width, clipped: t.scrollWidth > t.clientWidth + 1 };
          }),
        );
        assert.ok(cells.length > 0, "top products has rows");
        for (const cell of cells) {
          assert.ok(cell.width > 40, `top product "${cell.text}" is shown ${Math.round(cell.width)} px wide`);
          assert.equal(cell.clipped, false, `top product "${cell.text}" is shown in full, not cut off`);
        }
        // The tables are stacked: each cell carries its column's label.
        for (const testid of ["top-products", "latest-views", "countries", "state-log-table"]) {
          const unlabelled = await page.$$eval(`[data-testid="${testid}"] tbody tr:not(.empty-row) td`, (tds) => tds.filter((td) => !td.dataset.label).length);
          assert.equal(unlabelled, 0, `every cell of ${testid} has a data-label`);
        }
        // The device panel says where "Mobile" comes from.
        const note = await page.textContent('[data-testid="device-note"]');
        assert.match(note, /user agent/);
      }

      if (spec.key === "pipeline") {
        // The stage diagram fits its card at both sizes (one column of boxes on a phone): no
        // sideways scrolling, so no "scroll sideways" hint either.
        assert.equal(await page.$eval("#diagram", (d) => d.dataset.layout), phone ? "narrow" : "wide");
        const fits = await page.$eval("#diagram", (d) => d.parentElement.scrollWidth <= d.parentElement.clientWidth + 1);
        assert.ok(fits, `${label}: the stage diagram fits its card`);
        assert.equal(await page.isVisible('[data-testid="diagram-scroll-hint"]'), false);
        const outside = await page.$$eval("#diagram .node", (boxes) => {
          const host = document.getElementById("diagram").parentElement.getBoundingClientRect();
          return boxes.filter((b) => {
            const r = b.getBoundingClientRect();
            return r.left < host.left - 1 || r.right > host.right + 1;
          }).map((b) => b.dataset.testid);
        });
        assert.deepEqual(outside, [], `${label}: stage boxes outside the diagram's card`);
      }

      await page.screenshot({ path: path.join(screenshots, `layout-${spec.key}-${viewport.width}.png`), fullPage: true });
    }
    assert.deepEqual(errors(), []);
    await context.close();
  });
}

// ------------------------------------------------------------------ time zones

/** "YYYY-MM-DD HH:MM:SS" of `ms` in `zone`, computed here (not by the page). */
function expectedDateTime(ms, zone) {
  const parts = Object.fromEntries(
    new Intl.DateTimeFormat("en-US", { timeZone: zone, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" })
      .formatToParts(new Date(ms))
      .map((p) => [p.type, p.value]),
  );
  return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute}:${parts.second}`;
}

function expectedHM(ms, zone) {
  return expectedDateTime(ms, zone).slice(11, 16);
}

/** The snapshot time shown, the snapshot's now_ms, and the page-views chart's labels and buckets, read at once. */
function readDashboardTimes() {
  const chart = window.Chart && window.Chart.getChart(document.getElementById("pv-chart"));
  return {
    zone: document.body.dataset.timeZone,
    shown: document.getElementById("snapshot-time").textContent,
    nowMs: Number(document.getElementById("event-clock").dataset.nowMs),
    header: document.querySelector('[data-testid="latest-views"] thead th').textContent,
    labels: chart ? chart.data.labels.slice() : [],
    starts: chart && chart.$buckets ? chart.$buckets.map((b) => b.start_ms) : [],
  };
}

function assertTimesIn(times, zone, label) {
  assert.equal(times.zone, zone, `${label}: body.dataset.timeZone`);
  assert.ok(times.shown.startsWith(expectedDateTime(times.nowMs, zone)), `${label}: snapshot time "${times.shown}" is ${expectedDateTime(times.nowMs, zone)} in ${zone}`);
  const name = zone === "Etc/UTC" ? "UTC" : zone;
  assert.ok(times.header.includes(name), `${label}: the time column says its zone ("${times.header}")`);
  if (name === "UTC") assert.match(times.shown, / UTC$/, `${label}: a UTC time says so ("${times.shown}")`);
  assert.ok(times.labels.length > 0, `${label}: the chart has labels`);
  assert.deepEqual(times.labels, times.starts.map((ms) => expectedHM(ms, zone)), `${label}: chart axis labels in ${zone}`);
}

test("time zone: the viewer's zone (Asia/Kolkata) or the site's, switched in the top bar and remembered", async () => {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, timezoneId: "Asia/Kolkata" });
  const page = await context.newPage();
  const errors = pageErrors(page);
  await page.goto(`${demo.base}/`);
  await page.evaluate(() => localStorage.setItem("clickpulse.timeZone", "local"));
  await page.reload();
  await dashboardReady(page);
  await page.waitForFunction(() => document.body.dataset.siteTimeZoneKnown === "true", null, { timeout: DATA_TIMEOUT });

  // Your time: Asia/Kolkata everywhere.
  assertTimesIn(await page.evaluate(readDashboardTimes), "Asia/Kolkata", "local");
  assert.equal(await page.inputValue('[data-testid="tz-switch"]'), "local");
  const localOption = await page.textContent('[data-testid="tz-local"]');
  assert.ok(localOption.includes("Asia/Kolkata"), `the switch offers "Your time (Asia/Kolkata)": ${localOption}`);
  const clock = await page.textContent('[data-testid="event-clock-time"]');
  assert.match(clock, /UTC\+5:30$/, `the nav clock is in Kolkata time: ${clock}`);
  await page.screenshot({ path: path.join(screenshots, "layout-timezone-local.png") });

  // Site time, chosen in the top bar: every time is drawn again at once.
  await page.selectOption('[data-testid="tz-switch"]', "site");
  assertTimesIn(await page.evaluate(readDashboardTimes), siteZone, "site");
  assert.equal(await page.evaluate(() => localStorage.getItem("clickpulse.timeZone")), "site");
  const siteOption = await page.textContent('[data-testid="tz-site"]');
  assert.ok(siteOption.includes(siteZone === "Etc/UTC" ? "UTC" : siteZone), `the switch offers "Site time (${siteZone})": ${siteOption}`);

  // Remembered across pages; the pipeline shows watermarks and event times as date-times.
  await page.goto(`${demo.base}/pipeline`);
  await pipelineReady(page);
  assert.equal(await page.evaluate(() => document.body.dataset.timeZone), siteZone);
  assert.equal(await page.inputValue('[data-testid="tz-switch"]'), "site");
  await page.selectOption('[data-testid="tz-switch"]', "local");
  assert.equal(await page.evaluate(() => document.body.dataset.timeZone), "Asia/Kolkata");
  const stages = await page.textContent('[data-testid="stage-table"]');
  assert.doesNotMatch(stages, /\b1,\d{3},\d{3},\d{3},\d{3}\b/, "no event time or watermark is shown as a raw number");
  const times = await page.$$eval('[data-testid="stage-table"] time', (ts) => ts.map((t) => t.textContent));
  assert.ok(times.length > 0, "the stage details show event times");
  for (const t of times) assert.match(t, /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC\+5:30$/, `a date-time in Kolkata time: ${t}`);

  assert.deepEqual(errors(), []);
  await context.close();
});
