// Snowplow's own Node tracker (npm @snowplow/node-tracker) pointed at the demo: its POST and GET
// (pixel) requests, its e-commerce builders and a self-describing e-commerce action all reach the
// dashboard with the right fields; page pings are accepted and counted, not kept; a burst of
// batched events is stored in full (accepted == stored) with no 5xx; a forged Clickpulse
// identity is refused without a retry.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  newTracker,
  buildPageView,
  buildPagePing,
  buildAddToCart,
  buildSiteSearch,
  buildSelfDescribingEvent,
  buildEcommerceTransaction,
} from "@snowplow/node-tracker";
import { startDemo } from "./harness.mjs";

const SHOES = "VD55179433";
const ADMIN = "snowplow-test-admin-token";
const ECOMMERCE = "iglu:com.snowplowanalytics.snowplow.ecommerce";

let demo;

before(async () => {
  // Without the replay's own shop interactions, so the conversion panels count these alone.
  demo = await startDemo(["--interactions", "off", "--admin-token", ADMIN, "--idle-timeout-ms", "300"]);
});

after(async () => {
  await demo?.stop();
});

/** A tracker that records the answer's status for each event it sent; `method` is "post" or "get". */
function tracker(method, { bufferSize = 1, headers = {} } = {}) {
  const statuses = [];
  const t = newTracker(
    { namespace: `test-${method}`, appId: "shop", encodeBase64: method === "get" },
    {
      endpoint: demo.base,
      eventMethod: method,
      bufferSize,
      customHeaders: headers,
      onRequestSuccess: (batch, response) => batch.forEach(() => statuses.push(response.status)),
      onRequestFailure: (failure, response) =>
        failure.events.forEach(() => statuses.push(response?.status ?? `failed: ${failure.status}`)),
    },
  );
  return { t, statuses };
}

async function json(path) {
  const r = await fetch(`${demo.base}${path}`, { headers: { authorization: `Bearer ${ADMIN}` } });
  assert.equal(r.status, 200, path);
  return r.json();
}

/** Flushes `t` until `n` of its events were answered (the emitter sends what it queued while a
 * request was in flight only on its next flush). */
async function answered({ t, statuses }, n) {
  await until(`answers for ${n} events`, async () => {
    await t.flush();
    return statuses.length >= n ? statuses : undefined;
  });
  return statuses;
}

/** Polls `probe` (async, returns a value or undefined) until it gives a value. */
async function until(what, probe) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(value)?.slice(0, 200)})`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

test("the Node tracker's page views, cart, search, order and pings reach the dashboard", async () => {
  const { t, statuses } = tracker("post");
  t.setDomainUserId("3f1c9a2e-5b7d-4c1e-9f00-aa11bb22cc33");
  t.setSessionId("8c3e2a1b-5d4f-4e6a-b7c8-9d0e1f2a3b4c");
  const page = `${demo.base}/shop/product/${SHOES}?utm_source=snowplow-news&utm_medium=email`;
  t.track(buildPageView({ pageUrl: page, pageTitle: "Shoes", referrer: "https://www.google.com/" }));
  t.track(buildPagePing({ pageUrl: page, minXOffset: 0, maxXOffset: 10, minYOffset: 0, maxYOffset: 400 }));
  t.track(buildAddToCart({ sku: SHOES, name: "Shoes", category: "Shoes", unitPrice: 59.9, quantity: 2, currency: "EUR" }));
  t.track(buildSiteSearch({ terms: ["running", "shoes"] }));
  // The e-commerce plugin's shape: the action as the event, the order and its lines as entities.
  t.track(
    buildSelfDescribingEvent({
      event: { schema: `${ECOMMERCE}/snowplow_ecommerce_action/jsonschema/1-0-2`, data: { type: "transaction" } },
    }),
    [
      {
        schema: `${ECOMMERCE}/transaction/jsonschema/1-0-0`,
        data: { transaction_id: "sp-order-1", revenue: 119.8, currency: "EUR", payment_method: "card", total_quantity: 2 },
      },
      {
        schema: `${ECOMMERCE}/product/jsonschema/1-0-0`,
        data: { id: SHOES, name: "Shoes", category: "Shoes", price: 59.9, currency: "EUR", quantity: 2 },
      },
    ],
  );
  // The classic transaction API too.
  t.track(buildEcommerceTransaction({ orderId: "sp-order-2", total: 10.5, currency: "EUR" }));
  assert.deepEqual(await answered({ t, statuses }, 6), [200, 200, 200, 200, 200, 200]);

  const shop = await until("the conversions on the dashboard", async () => {
    // `null` until the aggregate has published its first snapshot.
    const snap = await json("/api/dashboard");
    const c = snap?.shop?.conversions_1h;
    if (!c) return undefined;
    return c.add_to_cart >= 1 && c.purchases >= 2 && c.searches >= 1 ? snap.shop : undefined;
  });
  assert.equal(shop.conversions_1h.add_to_cart, 1);
  assert.equal(shop.conversions_1h.purchases, 2);
  assert.ok(shop.top_queries_1h.some((q) => q.key === "running shoes"), JSON.stringify(shop.top_queries_1h));
  const revenue = shop.top_products_by_revenue_1h.find((p) => p.product_id === SHOES);
  assert.ok(revenue, JSON.stringify(shop.top_products_by_revenue_1h));
  assert.equal(revenue.units, 2);
  assert.equal(revenue.hundredths, 11980);
  assert.ok(shop.utm_sources_1h.some((s) => s.key === "snowplow-news"), JSON.stringify(shop.utm_sources_1h));
  // The page ping was taken (200) and counted, not kept.
  const stats = await json("/api/stats");
  assert.equal(stats.collector_ignored.snowplow.page_ping, 1);
});

test("the GET pixel answers a GIF no cache keeps, and its page view is counted", async () => {
  const { t, statuses } = tracker("get");
  t.setDomainUserId("7a7a7a7a-0000-4000-8000-000000000001");
  t.track(buildPageView({ pageUrl: `${demo.base}/shop/product/${SHOES}`, pageTitle: "Shoes (pixel)" }));
  assert.deepEqual(await answered({ t, statuses }, 1), [200]);
  const r = await fetch(`${demo.base}/i?e=pv&url=${encodeURIComponent(`${demo.base}/shop`)}&duid=raw-pixel&tv=curl`);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("content-type"), "image/gif");
  assert.match(r.headers.get("cache-control"), /no-store/);
  const gif = Buffer.from(await r.arrayBuffer());
  assert.equal(gif.subarray(0, 6).toString(), "GIF89a");
});

test("a burst of batched events is stored in full, with no 5xx", async () => {
  const before = await json("/api/stats");
  const collected = (s) => s.stages.collector.events;
  const start = collected(before);
  const { t, statuses } = tracker("post", { bufferSize: 25, headers: { authorization: `Bearer ${ADMIN}` } });
  const N = 2_000;
  // In rounds of 500: the tracker's in-memory queue holds 1,000 events and drops the rest.
  for (let i = 0; i < N; i++) {
    t.setDomainUserId(`burst-${i % 200}`);
    t.track(buildPageView({ pageUrl: `${demo.base}/shop/product/${SHOES}?i=${i}` }));
    if ((i + 1) % 500 === 0) await answered({ t, statuses }, i + 1);
  }
  assert.deepEqual([...new Set(statuses)], [200], "every batch answered 200");
  await until("every accepted event stored", async () => {
    const now = collected(await json("/api/stats"));
    return now - start >= N ? now : undefined;
  });
  assert.equal(collected(await json("/api/stats")) - start, N);
});

test("a forged Clickpulse identity is refused with 400, which the tracker does not retry", async () => {
  const { t, statuses } = tracker("post");
  t.track(buildPageView({ pageUrl: `${demo.base}/shop` }), [
    { schema: "iglu:io.clickpulse/identity/jsonschema/1-0-0", data: { visitor: "amber-falcon-river-42", token: "forged" } },
  ]);
  assert.deepEqual(await answered({ t, statuses }, 1), [400]);
  const r = await fetch(`${demo.base}/com.snowplowanalytics.snowplow/tp2`, { method: "POST", body: "not json" });
  assert.equal(r.status, 400);
  assert.match((await r.json()).error, /not JSON/);
});
