// Segment's own Node library (npm @segment/analytics-node) pointed at the demo: its batched
// page, track and identify calls reach the dashboard with the right fields (the e-commerce spec's
// Product Added, Order Completed, Products Searched); screen and identify are taken and counted;
// a burst is stored in full (accepted == stored) with no 5xx; an unknown write key is refused.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Analytics } from "@segment/analytics-node";
import { startDemo } from "./harness.mjs";

const SHOES = "VD55179433";
const ADMIN = "segment-test-admin-token";
const WRITE_KEY = "segment-test-write-key";

let demo;

// A user of the bundled users lookup (data/users.json.gz): F, born 1984-04-08.
const SHOP_USER = "0001BDD9-EABF-4D0D-81BD-D9EABFCD0D7D";

before(async () => {
  // A quiet pipeline: the replay's log is one page view, so the panels and the enrichment's
  // counters count these messages alone.
  const dir = mkdtempSync(path.join(tmpdir(), "clickpulse-segment-"));
  const log = path.join(dir, "one-view.jsonl");
  writeFileSync(log, JSON.stringify({ ts_ms: 1330588819000, visitor: "quiet", url: "http://www.acme.com/" }) + "\n");
  demo = await startDemo([
    "--log", log, "--admin-token", ADMIN, "--idle-timeout-ms", "300", "--segment-write-key", WRITE_KEY,
  ]);
});

after(async () => {
  await demo?.stop();
});

/** A client that records each HTTP answer's status (one per batch it sends). */
function client({ writeKey = WRITE_KEY, flushAt = 20, maxRetries = 0 } = {}) {
  const statuses = [];
  const analytics = new Analytics({ writeKey, host: demo.base, flushAt, flushInterval: 100, maxRetries });
  analytics.on("http_request", () => {});
  analytics.on("error", () => {});
  // `http_response` is emitted for every answer, success or not.
  analytics.on("http_response", (r) => statuses.push(r.status));
  return { analytics, statuses };
}

async function json(path) {
  const r = await fetch(`${demo.base}${path}`, { headers: { authorization: `Bearer ${ADMIN}` } });
  assert.equal(r.status, 200, path);
  return r.json();
}

async function until(what, probe) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

test("the Node library's page, e-commerce track calls and identify reach the dashboard", async () => {
  const { analytics, statuses } = client();
  const anonymousId = "8f4b0c1e-2d3a-4b5c-8d9e-0f1a2b3c4d5e";
  const page = `${demo.base}/shop/product/${SHOES}`;
  analytics.page({
    anonymousId,
    name: "Shoes",
    properties: { url: page, title: "Shoes", referrer: "https://www.bing.com/" },
    context: { campaign: { source: "segment-news", medium: "email", name: "spring" } },
  });
  analytics.track({
    anonymousId,
    event: "Product Added",
    properties: { product_id: SHOES, category: "Shoes", price: 59.9, quantity: 2, currency: "USD" },
    context: { page: { url: page } },
  });
  analytics.track({ anonymousId, event: "Products Searched", properties: { query: "trail shoes" } });
  analytics.track({ anonymousId, event: "Checkout Started", properties: { order_id: "seg-order-1", value: 119.8 } });
  analytics.track({
    anonymousId,
    event: "Order Completed",
    properties: {
      order_id: "seg-order-1",
      revenue: 119.8,
      currency: "USD",
      products: [{ product_id: SHOES, category: "Shoes", price: 59.9, quantity: 2 }],
    },
  });
  analytics.identify({ anonymousId, userId: "shop-user-7", traits: { plan: "gold" } });
  analytics.screen({ anonymousId, name: "Home" });
  await analytics.closeAndFlush();
  assert.ok(statuses.length >= 1 && statuses.every((s) => s === 200), JSON.stringify(statuses));

  const shop = await until("the conversions on the dashboard", async () => {
    // `null` until the aggregate has published its first snapshot.
    const snap = await json("/api/dashboard");
    const c = snap?.shop?.conversions_1h;
    if (!c) return undefined;
    return c.add_to_cart >= 1 && c.purchases >= 1 && c.searches >= 1 && c.begin_checkout >= 1 ? snap.shop : undefined;
  });
  assert.deepEqual(
    [shop.conversions_1h.add_to_cart, shop.conversions_1h.begin_checkout, shop.conversions_1h.purchases, shop.conversions_1h.searches],
    [1, 1, 1, 1],
  );
  assert.ok(shop.top_queries_1h.some((q) => q.key === "trail shoes"), JSON.stringify(shop.top_queries_1h));
  const revenue = shop.top_products_by_revenue_1h.find((p) => p.product_id === SHOES);
  assert.equal(revenue?.hundredths, 11980, JSON.stringify(shop.top_products_by_revenue_1h));
  assert.ok(shop.utm_sources_1h.some((s) => s.key === "segment-news"), JSON.stringify(shop.utm_sources_1h));
  const stats = await json("/api/stats");
  assert.deepEqual(stats.collector_ignored.segment, { screen: 1 });
});

test("identify links an anonymous visitor to the shop's user: its later events are that known user's", async () => {
  const enrich = async () => (await json("/api/stats")).stages.enrich.details;
  const { analytics, statuses } = client({ flushAt: 1 });
  const anonymousId = "c0ffee00-1111-4222-8333-444455556666";
  const page = { anonymousId, properties: { url: `${demo.base}/shop/product/${SHOES}` } };
  const before = await enrich();
  analytics.page(page);
  await analytics.closeAndFlush();
  const unknown = await until("the anonymous view enriched", async () => {
    const now = await enrich();
    return now.events > before.events ? now : undefined;
  });
  assert.equal(unknown.known_visitor_events, before.known_visitor_events, "an anonymous visitor is not a known user");

  // identify, then (once it is in: the library may send two requests at once, and the
  // collector takes them in the order they arrive) the next view.
  const second = client({ flushAt: 1 });
  second.analytics.identify({ anonymousId, userId: SHOP_USER });
  await second.analytics.closeAndFlush();
  const links = before.linked_visitors;
  await until("the link", async () => ((await enrich()).linked_visitors > links ? true : undefined));
  const third = client({ flushAt: 1 });
  third.analytics.page(page);
  await third.analytics.closeAndFlush();
  const known = await until("the linked view enriched", async () => {
    const now = await enrich();
    return now.events > unknown.events ? now : undefined;
  });
  assert.equal(known.events, unknown.events + 1, "identify itself is not an event downstream");
  assert.equal(known.known_visitor_events, unknown.known_visitor_events + 1, "the linked visitor's view is the user's");
  assert.equal(known.linked_visitors, links + 1);
  assert.deepEqual([...new Set([...statuses, ...second.statuses, ...third.statuses])], [200]);
});

test("a burst from one address meets the rate limit: the library waits out 429's Retry-After, and everything is stored, with no 5xx", async () => {
  const collected = async () => (await json("/api/stats")).stages.collector.events;
  const start = await collected();
  const { analytics, statuses } = client({ flushAt: 50, maxRetries: 3 });
  const N = 2_000;
  for (let i = 0; i < N; i++) {
    analytics.page({ anonymousId: `burst-${i % 200}`, properties: { url: `${demo.base}/shop/product/${SHOES}?i=${i}` } });
  }
  await analytics.closeAndFlush({ timeout: 120_000 });
  // More than --collect-rate allows at once (a sixth of 6,000 a minute): some batches are
  // refused with 429 and sent again after Retry-After; none is answered with a 5xx.
  assert.ok(statuses.includes(429), `the limit was met (${[...new Set(statuses)]})`);
  assert.deepEqual([...new Set(statuses)].sort(), [200, 429], "only 200 and 429");
  await until("every accepted message stored", async () => ((await collected()) - start >= N ? true : undefined));
  assert.equal((await collected()) - start, N);
});

test("an unknown write key is refused with 401; a body over Segment's limits with 400", async () => {
  const { analytics, statuses } = client({ writeKey: "someone-else" });
  analytics.page({ anonymousId: "x", properties: { url: `${demo.base}/shop` } });
  await analytics.closeAndFlush();
  assert.deepEqual(statuses, [401]);
  const big = JSON.stringify({ writeKey: WRITE_KEY, anonymousId: "x", properties: { url: `${demo.base}/shop`, pad: "a".repeat(40_000) } });
  const r = await fetch(`${demo.base}/v1/p`, { method: "POST", headers: { "content-type": "text/plain" }, body: big });
  assert.equal(r.status, 400);
  assert.match((await r.json()).error, /limit is 32768/);
});
