// The shop's whole journey in a real browser: search, view, add to cart, checkout and purchase
// (every step an event the collector took, and counted on the dashboard's shop panels and its
// shop funnel), and the cart-abandonment pattern: a visitor who adds
// to the cart and leaves gets its offer once event time passes the 15-minute deadline, a visitor
// who buys does not; and the browse-abandonment pattern: a visitor who comes back to one product
// three times in a session without adding it gets an offer for that product 10 minutes later.
// The demo runs its clock at 60× so 15 minutes of event time pass in 15 s.
//
// Every test runs three times: with the shop's own tracker (`clickpulse.js`'s protocol, POST
// /collect), with `--shop-tracker snowplow` (Snowplow's own browser tracker and e-commerce plugin,
// to the Snowplow endpoints) and with `--shop-tracker segment` (Segment's analytics.js, to the
// Segment endpoints): the same clicks give the same panels and the same offers.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { startDemo, launchBrowser, consoleErrors, screenshots } from "./harness.mjs";

const CLOTHING = "VD55177927";
const SHOES = "VD55179433";
const BOOK = "VD55181667";
const MOVIE = "VD55149415";

let demo;
let browser;

let tracker;

async function shopper() {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
  const page = await context.newPage();
  const errors = consoleErrors(page);
  // Where the shop sent its events: each request's method and path.
  const sentTo = [];
  page.on("request", (r) => sentTo.push(`${r.method()} ${new URL(r.url()).pathname}`));
  await page.goto(`${demo.base}/shop`);
  await page.waitForFunction(() => JSON.parse(localStorage.getItem("clickpulse.identity") || "null")?.token);
  return { context, page, errors, sentTo };
}

/** Asserts the shopper's events went through the tracker under test, and only through it. */
function sentThroughTracker(shopper) {
  const collect = shopper.sentTo.filter((r) => r === "POST /collect").length;
  const snowplow = shopper.sentTo.filter((r) => r === "POST /com.snowplowanalytics.snowplow/tp2").length;
  const segment = shopper.sentTo.filter((r) => /^POST \/v1\/[a-z]+$/.test(r)).length;
  const counts = `${collect} to /collect, ${snowplow} to tp2, ${segment} to /v1/*`;
  const through = { clickpulse: collect, snowplow, segment }[tracker];
  assert.ok(through > 0 && collect + snowplow + segment === through, `${tracker} only (${counts})`);
}

/** Waits until `name` events were taken by the collector (`data-<name>-sent` on the body). */
async function sent(page, name, count) {
  await page.waitForFunction(
    ([key, n]) => Number(document.body.dataset[key] || 0) >= n,
    [`${name}Sent`, count],
    { timeout: 60_000 },
  );
}

async function addToCart(page, id) {
  await page.goto(`${demo.base}/shop/product/${id}`);
  await page.waitForSelector('[data-testid="view-sent"]', { state: "visible", timeout: 60_000 });
  await page.click('[data-testid="add-to-cart"]');
  await sent(page, "cartEvents", 1);
}

for (const name of ["clickpulse", "snowplow", "segment"]) {
  describe(`the shop with the ${name} tracker`, () => {
    before(async () => {
      tracker = name;
      // Without the replay's own shop interactions: the panels then show this journey alone.
      demo = await startDemo(["--speed", "60", "--idle-timeout-ms", "300", "--allowed-lateness-ms", "1000", "--interactions", "off", "--shop-tracker", name]);
      browser = await launchBrowser();
    });

    after(async () => {
      await browser?.close();
      await demo?.stop();
    });

    test("search, add to cart, checkout and purchase: each step is an event, the cart persists and empties on the order", async () => {
      const ann = await shopper();
      await ann.page.fill('[data-testid="search-input"]', "shoes");
      await ann.page.click('[data-testid="search-submit"]');
      await sent(ann.page, "searchEvents", 1);
      const count = await ann.page.textContent('[data-testid="product-count"]');
      assert.match(count, /results? for “shoes”/);
      const visible = await ann.page.$$eval('[data-testid="product-card"]', (cards) => cards.filter((c) => !c.hidden).length);
      assert.ok(visible > 0 && visible < 31, `the search narrows the grid (${visible} shown)`);

      await addToCart(ann.page, CLOTHING);
      await addToCart(ann.page, SHOES);
      // The cart is the visitor's: it is still there on another page and after a reload.
      await ann.page.goto(`${demo.base}/shop/cart`);
      await ann.page.reload();
      await ann.page.waitForSelector('[data-testid="cart-page"]');
      assert.equal((await ann.page.$$('[data-testid="cart-line"]')).length, 2);
      assert.equal(await ann.page.textContent('[data-testid="cart-count"]'), "2");
      await ann.page.screenshot({ path: path.join(screenshots, `shop-cart-${tracker}.png`) });

      await ann.page.click('[data-testid="checkout"]');
      await sent(ann.page, "checkoutEvents", 1);
      await ann.page.click('[data-testid="place-order"]');
      await sent(ann.page, "purchaseEvents", 1);
      const confirmation = await ann.page.waitForSelector('[data-testid="order-confirmation"]');
      assert.match(await confirmation.getAttribute("data-order-id"), /^o-/);
      assert.equal(await ann.page.textContent('[data-testid="cart-count"]'), "0");
      assert.deepEqual(ann.errors, []);
      sentThroughTracker(ann);

      // The dashboard's shop panels count the journey once event time has passed it: the search
      // and its query, both adds to cart, the checkout, the purchase, its revenue and its products.
      const board = await browser.newPage({ viewport: { width: 1360, height: 900 } });
      const boardErrors = consoleErrors(board);
      await board.goto(`${demo.base}/`);
      const atLeast = (id, n) =>
        board.waitForFunction(
          ([testid, min]) => Number((document.querySelector(`[data-testid="${testid}"]`)?.textContent || "").replace(/[^0-9]/g, "")) >= min,
          [id, n],
          { timeout: 60_000 },
        );
      await atLeast("purchases-1h", 1);
      await atLeast("carts-1h", 2);
      await atLeast("checkouts-1h", 1);
      await atLeast("searches-1h", 1);
      await atLeast("active-sessions", 1);
      await board.waitForSelector('[data-testid="query-row"][data-key="shoes"]', { timeout: 60_000 });
      const products = await board.$$eval('[data-testid="revenue-product-row"]', (rows) => rows.map((r) => r.dataset.productId));
      assert.ok(products.includes(CLOTHING) && products.includes(SHOES), `both ordered products rank by revenue (${products})`);
      assert.match(await board.textContent('[data-testid="revenue-1h"]'), /\$\d/);
      assert.notEqual(await board.textContent('[data-testid="aov-1h"]'), "—");
      // The shop funnel: this shopper's session went through every step, in order.
      await board.waitForFunction(
        () => Number(document.querySelector('[data-testid="funnel"][data-funnel="shop"] [data-testid="funnel-step"][data-step="Purchase"]')?.dataset.visitors || 0) >= 1,
        null,
        { timeout: 60_000 },
      );
      const steps = await board.$$eval('[data-testid="funnel"][data-funnel="shop"] [data-testid="funnel-step"]', (rows) =>
        rows.map((r) => [r.dataset.step, Number(r.dataset.visitors)]),
      );
      assert.deepEqual(steps.map(([name]) => name), ["Product view", "Add to cart", "Checkout", "Purchase"]);
      assert.ok(steps.every(([, n]) => n >= 1), `every step reached (${JSON.stringify(steps)})`);
      const sources = await board.$$eval('[data-testid="source-row"]', (rows) => rows.map((r) => r.dataset.key));
      assert.ok(sources.length > 0, "sessions are counted by source");
      await board.locator('[data-testid="revenue-products"]').scrollIntoViewIfNeeded();
      await board.screenshot({ path: path.join(screenshots, `dashboard-shop-${tracker}.png`), fullPage: true });
      assert.deepEqual(boardErrors, []);
      await board.close();
      await ann.context.close();
    });

    test("added to the cart and left: the cart-abandonment offer pops up after 15 minutes of event time; a buyer gets none", async () => {
      const buyer = await shopper();
      await addToCart(buyer.page, SHOES);
      await buyer.page.goto(`${demo.base}/shop/cart`);
      await buyer.page.click('[data-testid="checkout"]');
      await sent(buyer.page, "checkoutEvents", 1);
      await buyer.page.click('[data-testid="place-order"]');
      await sent(buyer.page, "purchaseEvents", 1);

      // Added after the buyer's purchase: its deadline comes after the buyer's would have.
      const leaver = await shopper();
      await addToCart(leaver.page, CLOTHING);
      await leaver.page.goto(`${demo.base}/shop`);
      const popup = await leaver.page.waitForSelector('[data-testid="offer-popup"]', { state: "visible", timeout: 120_000 });
      assert.equal(await popup.getAttribute("data-offer"), "cart-discount");
      const imageOk = await leaver.page.$eval('[data-testid="offer-image"]', (img) => img.complete && img.naturalWidth > 0);
      assert.ok(imageOk, "the offer's picture loads");
      await leaver.page.screenshot({ path: path.join(screenshots, `shop-cart-abandonment-${tracker}.png`) });

      // The leaver's deadline passed, so the buyer's did too: the buyer's purchase cancelled the
      // wait, and no offer reached the buyer's page.
      assert.equal(await buyer.page.isVisible('[data-testid="offer-popup"]'), false);
      assert.equal(Number(await buyer.page.evaluate(() => document.body.dataset.offersReceived || 0)), 0);
      assert.deepEqual(leaver.errors, []);
      sentThroughTracker(leaver);
      assert.deepEqual(buyer.errors, []);
      await leaver.context.close();
      await buyer.context.close();
    });

    test("came back to one product three times without adding it: the browse-abandonment offer for that product pops up 10 minutes later", async () => {
      const browser_ = await shopper();
      const { page } = browser_;
      // Three visits of the book in one session (a movie between them, so none is a reload).
      let views = 0;
      for (const id of [BOOK, MOVIE, BOOK, MOVIE, BOOK]) {
        await page.goto(`${demo.base}/shop/product/${id}`);
        await page.waitForSelector('[data-testid="view-sent"]', { state: "visible", timeout: 60_000 });
        views += 1;
      }
      assert.equal(views, 5);
      await page.goto(`${demo.base}/shop`);
      const popup = await page.waitForSelector('[data-testid="offer-popup"][data-pattern="browse-abandonment"]', { state: "visible", timeout: 120_000 });
      assert.equal(await popup.getAttribute("data-offer"), "product-discount");
      // The offer is for the book: its link and its picture are the book's.
      assert.equal(await page.getAttribute('[data-testid="offer-link"]', "href"), `/shop/product/${BOOK}`);
      const image = await page.$eval('[data-testid="offer-image"]', (img) => ({ src: img.getAttribute("src"), ok: img.complete && img.naturalWidth > 0 }));
      assert.ok(image.ok && image.src.includes(BOOK), `the book's picture (${image.src})`);
      await page.screenshot({ path: path.join(screenshots, `shop-browse-abandonment-${tracker}.png`) });
      assert.deepEqual(browser_.errors, []);
      sentThroughTracker(browser_);
      await browser_.context.close();
    });
  });
}
