/*
 * Clickpulse — "Acme Store" demo webshop (served at `/shop` and `/shop/product/{id}`).
 *
 *   - Identity: a visitor id + token from POST /api/identity, kept in localStorage
 *     `clickpulse.identity` as {visitor, token, gender, age}; the sidebar edits gender and age.
 *     `token` is the short-lived offer token (it travels in the offer stream's URL and expires
 *     after `token_expires_in_s`, 15 min); the lasting `identity_token` is kept apart in
 *     `clickpulse.identityKey` as {visitor, identity_token, expires_at} and only ever sent in a
 *     POST body, to renew the offer token (POST /api/identity {visitor, identity_token}) when it
 *     is about to expire or the stream says it has.
 *   - Every product page load sends one page view: POST /collect {visitor, url, gender, age,
 *     page_title, referrer}; "Add to cart" sends an add_to_cart event naming the product. With
 *     `--shop-tracker snowplow` (GET /api/site `shop_tracker`) the same events go through
 *     Snowplow's own browser tracker and e-commerce plugin to the Snowplow endpoints instead.
 *   - Offers arrive over /api/offers/stream (SSE, event `offer`) and show as a modal, once per
 *     offer_id (ids kept in localStorage `clickpulse.seenOffers`, last 50).
 *
 * Test hooks: toast [data-testid=view-sent] on 202, body[data-views-sent] counts them;
 * window.__lastOfferAt is the time the newest offer popup was displayed; body[data-offers-received]
 * counts the offers this page received (shown, or dropped as already seen).
 */
(function () {
  "use strict";

  const { el, fmtPrice } = CP;

  const SEEN_KEY = "clickpulse.seenOffers";
  const SEEN_LIMIT = 50;
  const CART_KEY = "clickpulse.cart";
  const KEY_KEY = "clickpulse.identityKey";
  // Renew the offer token this long before it expires.
  const RENEW_MARGIN_MS = 60 * 1000;

  const state = {
    identity: null,
    identityReady: null, // Promise resolving to the identity
    products: [],
    offerSource: null,
    offerRetry: null,
    renewedAfter401: false,
    offersReady: null, // resolves once the first offer stream is open (or has failed)
    markOffersReady: null,
    offerQueue: [],
    pendingOffers: new Set(), // offer ids whose picture is loading
    offerOpen: false,
    viewsSent: 0,
  };

  // ------------------------------------------------------------------ routing

  /** {view: "list"}, {view: "cart"} or {view: "product", id} from the path. */
  function route() {
    if (/^\/shop\/cart\/?$/.test(location.pathname)) return { view: "cart" };
    const match = /^\/shop\/product\/([^/]+)\/?$/.exec(location.pathname);
    if (match) {
      let id = match[1];
      try {
        id = decodeURIComponent(id);
      } catch (_) {
        /* keep the raw segment */
      }
      return { view: "product", id };
    }
    return { view: "list" };
  }

  const productHref = (id) => `/shop/product/${encodeURIComponent(id)}`;

  // ------------------------------------------------------------------ identity

  /** The stored {visitor, identity_token, expires_at}, or null. */
  function loadKey() {
    try {
      const value = JSON.parse(localStorage.getItem(KEY_KEY) || "null");
      if (!value || typeof value.visitor !== "string" || typeof value.identity_token !== "string") return null;
      return value;
    } catch (_) {
      return null;
    }
  }

  /** Keeps what POST /api/identity answered apart from the identity the page shows. */
  function saveKey(body) {
    const key = {
      visitor: body.visitor,
      identity_token: String(body.identity_token || ""),
      expires_at: Date.now() + 1000 * Math.max(0, Number(body.token_expires_in_s) || 0),
    };
    try {
      localStorage.setItem(KEY_KEY, JSON.stringify(key));
    } catch (_) {
      /* storage unavailable: the token is renewed by creating a new visitor when it expires */
    }
    return key;
  }

  /** POST /api/identity: a new visitor (no argument) or a fresh token for `renewal`. */
  async function requestIdentity(renewal) {
    const { ok, status, body } = await CP.postJSON("/api/identity", renewal);
    if (!ok || !body || typeof body.visitor !== "string") {
      throw new Error((body && body.error) || `HTTP ${status}`);
    }
    saveKey(body);
    return { visitor: body.visitor, token: String(body.token || "") };
  }

  /**
   * Makes sure the offer token is not about to expire, renewing it with the identity token.
   * Resolves to true when the token is fresh (or was renewed), false when it cannot be renewed.
   */
  async function freshToken(force = false) {
    const identity = state.identity;
    if (!identity) return false;
    const key = loadKey();
    if (!key || key.visitor !== identity.visitor || !key.identity_token) return false;
    if (!force && Number(key.expires_at) - RENEW_MARGIN_MS > Date.now()) return true;
    try {
      const renewed = await requestIdentity({ visitor: identity.visitor, identity_token: key.identity_token });
      if (renewed.visitor !== identity.visitor || !state.identity || state.identity.visitor !== identity.visitor) return false;
      state.identity.token = renewed.token;
      CP.saveIdentity(state.identity);
      return true;
    } catch (_) {
      return false;
    }
  }

  function setIdentityStatus(text, isError = false) {
    const node = document.getElementById("identity-status");
    node.textContent = text;
    node.style.color = isError ? "var(--red-700)" : "";
  }

  /** Load the stored identity, or create one (first visit). Resolves to the identity or null. */
  function ensureIdentity() {
    if (state.identityReady) return state.identityReady;
    state.identityReady = (async () => {
      const stored = CP.loadIdentity();
      if (stored) {
        state.identity = stored;
        return stored;
      }
      try {
        const fresh = await requestIdentity();
        state.identity = { ...fresh, gender: "F", age: 30 };
        CP.saveIdentity(state.identity);
        return state.identity;
      } catch (err) {
        setIdentityStatus("Could not create a visitor id. Retrying when you reload the page.", true);
        state.identityReady = null;
        return null;
      }
    })();
    return state.identityReady;
  }

  /** Replace the visitor with a brand-new one (keeps the chosen age and gender). */
  async function newVisitor(reason) {
    const button = document.getElementById("new-visitor");
    button.disabled = true;
    try {
      const fresh = await requestIdentity();
      const previous = state.identity || { gender: "F", age: 30 };
      state.identity = { ...fresh, gender: previous.gender, age: previous.age };
      state.identityReady = Promise.resolve(state.identity);
      CP.saveIdentity(state.identity);
      renderIdentity();
      connectOffers();
      setIdentityStatus(reason || "New visitor created. Its state machines start from scratch.");
      CP.toast(`You are now ${state.identity.visitor}`, { testid: "identity-changed" });
    } catch (err) {
      setIdentityStatus("Could not create a new visitor. Please try again.", true);
    } finally {
      button.disabled = false;
    }
  }

  function renderIdentity() {
    const identity = state.identity;
    const idNode = document.getElementById("visitor-id");
    const avatar = document.getElementById("identity-avatar");
    const watch = document.getElementById("watch-live");
    if (!identity) {
      idNode.textContent = "Unavailable";
      return;
    }
    idNode.textContent = identity.visitor;
    idNode.title = identity.visitor;
    avatar.textContent = identity.visitor.charAt(0) || "?";
    document.body.dataset.visitor = identity.visitor;

    const age = document.getElementById("identity-age");
    age.value = String(identity.age);
    document.getElementById("identity-age-value").textContent = String(identity.age);
    for (const radio of document.querySelectorAll('input[name="gender"]')) {
      radio.checked = radio.value === identity.gender;
    }
    watch.href = `/?visitor=${encodeURIComponent(identity.visitor)}#log`;
  }

  function setupIdentityControls() {
    const age = document.getElementById("identity-age");
    const ageValue = document.getElementById("identity-age-value");
    const saveAge = () => {
      const value = CP.clampAge(age.value);
      ageValue.textContent = String(value);
      if (state.identity && state.identity.age !== value) {
        state.identity.age = value;
        CP.saveIdentity(state.identity);
        loadRules();
      }
    };
    age.addEventListener("input", saveAge);
    age.addEventListener("change", saveAge);

    for (const radio of document.querySelectorAll('input[name="gender"]')) {
      radio.addEventListener("change", () => {
        if (radio.checked && state.identity) {
          state.identity.gender = radio.value;
          CP.saveIdentity(state.identity);
          loadRules();
        }
      });
    }

    document.getElementById("new-visitor").addEventListener("click", () => newVisitor());

    // Another tab may change the identity: follow it.
    window.addEventListener("storage", (event) => {
      if (event.key !== CP.IDENTITY_KEY) return;
      const stored = CP.loadIdentity();
      if (!stored) return;
      const visitorChanged = !state.identity || stored.visitor !== state.identity.visitor;
      state.identity = stored;
      state.identityReady = Promise.resolve(stored);
      renderIdentity();
      loadRules();
      if (visitorChanged) connectOffers();
    });
  }

  // ------------------------------------------------------------------ offer rules

  /** "woman of 30", for the identity card's summary. */
  function profileWords(identity) {
    if (!identity) return "";
    const who = identity.gender === "F" ? "woman" : identity.gender === "M" ? "man" : "shopper";
    return `${who} of ${identity.age}`;
  }

  /** A rule card in the shopper's words: who it is for, what earns it, what it gives. */
  function ruleCard(p) {
    const forYou = p.for_you;
    const badge =
      forYou === true
        ? el("span", { className: "rule__badge rule__badge--yes", dataset: { testid: "rule-for-you" }, text: "For you" })
        : forYou === false
          ? el("span", { className: "rule__badge rule__badge--no", dataset: { testid: "rule-not-for-you" }, text: "Not for your profile" })
          : el("span", { className: "rule__badge", text: "Depends on where you are" });
    const offers = Object.values(p.offers || {}).map((o) => o && o.title).filter(Boolean);
    const phone = /on a phone|on a tablet|on a computer/.test(p.in_plain_words || "");
    return el("div", { className: "rule", dataset: { testid: "offer-rule", pattern: p.name || "", forYou: String(forYou) } }, [
      el("div", { className: "rule__head" }, [el("span", { className: "rule__name", text: p.description || "A special offer" }), badge]),
      el("p", { className: "rule__explanation", dataset: { testid: "rule-words" }, text: p.in_plain_words || "" }),
      offers.length ? el("p", { className: "rule__offer", text: `You get: ${offers.join(" or ")}.` }) : null,
      phone ? el("p", { className: "muted rule__note", text: "Whether you are on a phone is told from your browser's user agent, not from the window's size." }) : null,
    ]);
  }

  let rulesRequest = 0;
  async function loadRules() {
    const list = document.getElementById("offer-rules-list");
    let summary = document.getElementById("offer-rules-summary");
    if (!summary && list) {
      // In the identity card (always in view, also on a phone where the rules are folded):
      // whether this profile can earn an offer at all.
      summary = el("p", { className: "rules__summary", id: "offer-rules-summary", dataset: { testid: "offer-rules-summary" }, attrs: { role: "status" } });
      const status = document.getElementById("identity-status");
      if (status) status.after(summary);
      else list.before(summary);
    }
    const request = ++rulesRequest;
    const identity = state.identity;
    const query = identity ? `?gender=${encodeURIComponent(identity.gender || "U")}&age=${encodeURIComponent(identity.age)}` : "";
    try {
      const body = await CP.fetchJSON(`/api/patterns${query}`);
      if (request !== rulesRequest) return; // a newer profile's answer is on its way
      const patterns = Array.isArray(body && body.patterns) ? body.patterns.filter(Boolean) : [];
      state.patterns = patterns;
      if (patterns.length === 0) {
        CP.replaceChildren(list, el("p", { className: "muted", text: "No special offers are running right now." }));
        if (summary) summary.textContent = "";
      } else {
        CP.replaceChildren(list, patterns.map(ruleCard));
        if (summary && identity) {
          const mine = patterns.filter((p) => p.for_you === true).length;
          const maybe = patterns.filter((p) => p.for_you == null).length;
          summary.textContent =
            mine > 0
              ? `As a ${profileWords(identity)}, you can earn ${mine === 1 ? "this offer" : `${mine} offers`}: browse as described below.`
              : maybe > 0
                ? `As a ${profileWords(identity)}, you may earn an offer, depending on where you are.`
                : `As a ${profileWords(identity)}, you are not in the audience of any special offer, so none will pop up. Change your age or gender above to try one.`;
          summary.dataset.forYou = String(mine);
        }
      }
    } catch (err) {
      if (request !== rulesRequest) return;
      CP.replaceChildren(list, el("p", { className: "muted", text: "The offer rules could not be loaded right now." }));
    }
    list.removeAttribute("aria-busy");
  }

  // ------------------------------------------------------------------ catalogue

  async function loadProducts() {
    const products = await CP.fetchJSON("/api/products");
    state.products = (Array.isArray(products) ? products : []).filter((p) => p && p.id);
    return state.products;
  }

  function imageFor(product) {
    if (product && typeof product.image_url === "string" && product.image_url.startsWith("/")) return product.image_url;
    return CP.productImageUrl(product.id);
  }

  function productImage(product, { lazy = true, size = 250 } = {}) {
    const img = el("img", { src: imageFor(product), alt: product.title || "", width: size, height: size, decoding: "async" });
    if (lazy) img.loading = "lazy";
    img.addEventListener("error", () => img.replaceWith(CP.imagePlaceholder("thumb")), { once: true });
    return img;
  }

  function productCard(product, testid = "product-card") {
    return el(
      "a",
      {
        className: "product-card",
        href: productHref(product.id),
        dataset: { testid, productId: product.id, category: product.category || "" },
      },
      [
        el("div", { className: "product-card__media" }, [productImage(product)]),
        el("div", { className: "product-card__body" }, [
          el("div", {}, [CP.categoryPill(product.category)]),
          el("div", { className: "product-card__title", title: product.title || "", text: product.title || product.id }),
          el("div", { className: "product-card__price", dataset: { testid: "product-price" }, text: fmtPrice(product.price) }),
        ]),
      ]
    );
  }

  function loadError(retry) {
    return el("div", { className: "card notice", dataset: { testid: "shop-error" } }, [
      el("h2", { text: "The catalogue is not available right now" }),
      el("p", { text: "Please try again in a moment." }),
      el("p", { style: { marginTop: "14px" } }, [el("button", { type: "button", className: "btn btn--primary", text: "Try again", on: { click: retry } })]),
    ]);
  }

  // ------------------------------------------------------------------ list view

  async function showList() {
    const main = document.getElementById("shop-main");
    let products;
    try {
      products = await loadProducts();
    } catch (err) {
      CP.replaceChildren(main, loadError(() => location.reload()));
      return;
    }

    // Categories present, most products first.
    const counts = new Map();
    for (const p of products) counts.set(p.category, (counts.get(p.category) || 0) + 1);
    const categories = [...counts.keys()].sort((a, b) => counts.get(b) - counts.get(a) || String(a).localeCompare(String(b)));

    const params = new URLSearchParams(location.search);
    let selected = params.get("category");
    if (!counts.has(selected)) selected = "";

    const chip = (value, label, count) =>
      el(
        "button",
        {
          type: "button",
          className: "chip",
          dataset: { testid: "category-filter", category: value },
          attrs: { "aria-pressed": String(value === selected) },
          on: { click: () => select(value) },
        },
        [el("span", { text: label }), el("span", { className: "chip__count", text: String(count) })]
      );
    const chips = el("div", { className: "chips", dataset: { testid: "category-filters" }, attrs: { role: "group", "aria-label": "Filter by category" } }, [
      chip("", "All", products.length),
      ...categories.map((c) => chip(c, CP.categoryLabel(c), counts.get(c))),
    ]);

    const grid = el("div", { className: "product-grid", dataset: { testid: "product-grid" } }, products.map((p) => productCard(p)));
    const heading = el("h2", { id: "list-title", text: "All products" });
    const shown = el("span", { className: "muted", dataset: { testid: "product-count" } });

    // The search box: a query narrows the grid, and is sent as a search event.
    let query = (params.get("q") || "").trim();
    const byId = new Map(products.map((p) => [p.id, p]));
    const matches = (card) => {
      if (!query) return true;
      const p = byId.get(card.dataset.productId) || {};
      const text = `${p.title || ""} ${p.category || ""} ${p.description || ""}`.toLowerCase();
      return query.toLowerCase().split(/\s+/).every((word) => text.includes(word));
    };
    const input = el("input", { type: "search", className: "search__input", id: "shop-search", value: query, attrs: { placeholder: "Search the shop", "aria-label": "Search the shop" }, dataset: { testid: "search-input" } });
    const search = el("form", { className: "search", attrs: { role: "search" }, dataset: { testid: "search" }, on: { submit: (event) => {
      event.preventDefault();
      query = input.value.trim();
      select(selected);
      if (!query) return;
      const results = [...grid.children].filter((card) => !card.hidden).length;
      sendEvent({ type: "search", query, properties: { results } }, "Search", "search").then((sent) => {
        if (sent) countSent("searchEvents");
      });
    } } }, [input, el("button", { type: "submit", className: "btn", dataset: { testid: "search-submit" } }, ["Search"])]);

    function select(value) {
      selected = value;
      for (const button of chips.children) button.setAttribute("aria-pressed", String(button.dataset.category === value));
      let visible = 0;
      for (const card of grid.children) {
        const match = (value === "" || card.dataset.category === value) && matches(card);
        card.hidden = !match;
        if (match) visible++;
      }
      heading.textContent = value === "" ? "All products" : CP.categoryLabel(value);
      shown.textContent = query
        ? `${visible} ${visible === 1 ? "result" : "results"} for “${query}”`
        : `${visible} ${visible === 1 ? "product" : "products"}`;
      // Keep the choice in the address bar so a reload (or Back) restores it.
      const url = new URL(location.href);
      if (value) url.searchParams.set("category", value);
      else url.searchParams.delete("category");
      if (query) url.searchParams.set("q", query);
      else url.searchParams.delete("q");
      history.replaceState(null, "", url.href);
    }

    CP.replaceChildren(main, [search, el("div", { className: "section-title" }, [heading, shown]), chips, products.length ? grid : el("div", { className: "card notice", text: "No products are available." })]);
    select(selected);
    document.body.dataset.view = "list";
  }

  // ------------------------------------------------------------------ product view

  async function showProduct(id) {
    const main = document.getElementById("shop-main");
    document.body.dataset.view = "product";
    // The page view does not wait for the catalogue.
    sendPageView();

    let products;
    try {
      products = await loadProducts();
    } catch (err) {
      CP.replaceChildren(main, [backLink(), loadError(() => location.reload())]);
      return;
    }
    const product = products.find((p) => p.id === id);
    if (!product) {
      CP.replaceChildren(main, [
        backLink(),
        el("div", { className: "card notice", dataset: { testid: "product-not-found" } }, [
          el("h2", { text: "We couldn't find that product" }),
          el("p", { text: "It may have been removed from the catalogue." }),
        ]),
      ]);
      document.title = "Product not found · Acme Store";
      return;
    }
    document.title = `${product.title} · Acme Store`;

    const addToCart = el("button", {
      type: "button",
      className: "btn btn--primary btn--lg",
      dataset: { testid: "add-to-cart" },
      on: { click: () => addedToCart(product) },
    });
    addToCart.append(cartIcon(), "Add to cart");

    const detail = el("article", { className: "card product-detail", dataset: { testid: "product-detail", productId: product.id, category: product.category || "" } }, [
      el("div", { className: "product-detail__media" }, [productImage(product, { lazy: false, size: 500 })]),
      el("div", { className: "product-detail__info" }, [
        el("div", {}, [CP.categoryPill(product.category)]),
        el("h1", { className: "product-detail__title", dataset: { testid: "product-title" }, text: product.title || product.id }),
        el("div", { className: "product-detail__price", dataset: { testid: "product-price" }, text: fmtPrice(product.price) }),
        el("p", { className: "product-detail__desc", dataset: { testid: "product-description" }, text: product.description || "" }),
        el("div", {}, [addToCart]),
        el("ul", { className: "product-detail__perks" }, [
          el("li", { text: "✓ Free shipping on orders over $50" }),
          el("li", { text: "✓ Free returns within 30 days" }),
          el("li", { text: `✓ Item number ${product.id}` }),
        ]),
      ]),
    ]);

    CP.replaceChildren(main, [backLink(), detail, relatedRow(product, products)]);
  }

  function backLink() {
    return el("a", { className: "breadcrumb", href: "/shop", dataset: { testid: "back-to-products" } }, ["← ", "Back to all products"]);
  }

  function cartIcon() {
    return CP.svg("svg", { width: "18", height: "18", viewBox: "0 0 24 24", fill: "none", stroke: "currentColor", "stroke-width": "2", "stroke-linecap": "round", "stroke-linejoin": "round", "aria-hidden": "true" }, [
      CP.svg("circle", { cx: "9", cy: "21", r: "1" }),
      CP.svg("circle", { cx: "20", cy: "21", r: "1" }),
      CP.svg("path", { d: "M1 1h4l2.68 13.39a2 2 0 0 0 2 1.61h9.72a2 2 0 0 0 2-1.61L23 6H6" }),
    ]);
  }

  /**
   * "You might also like": four other products of the same category; when the category has
   * fewer, the row is completed with products from other categories.
   */
  function relatedRow(product, products) {
    const others = products.filter((p) => p.id !== product.id);
    const same = others.filter((p) => p.category === product.category);
    const rest = others.filter((p) => p.category !== product.category);
    const picks = same.slice(0, 4).concat(rest.slice(0, Math.max(0, 4 - same.length)));
    if (picks.length === 0) return null;
    return el("section", { className: "related", dataset: { testid: "related-products" }, attrs: { "aria-labelledby": "related-title" } }, [
      el("div", { className: "section-title" }, [el("h2", { id: "related-title", text: "You might also like" })]),
      el("div", { className: "product-grid" }, picks.map((p) => productCard(p, "related-product"))),
    ]);
  }

  // ------------------------------------------------------------------ cart and checkout

  /** Where this visitor's cart is kept: the cart is the visitor's, across pages and visits. */
  function cartKey() {
    const id = state.identity && state.identity.visitor;
    return `${CART_KEY}.${id || "anonymous"}`;
  }

  /** The cart's lines: [{id, title, category, price, quantity}]. */
  function readCart() {
    try {
      const lines = JSON.parse(localStorage.getItem(cartKey()) || "[]");
      return Array.isArray(lines) ? lines.filter((l) => l && typeof l.id === "string" && l.quantity > 0) : [];
    } catch (_) {
      return [];
    }
  }

  function writeCart(lines) {
    try {
      localStorage.setItem(cartKey(), JSON.stringify(lines));
    } catch (_) {
      /* storage unavailable: the cart lasts for this page */
    }
    renderCart();
  }

  function renderCart() {
    const count = readCart().reduce((n, l) => n + l.quantity, 0);
    document.getElementById("cart-count").textContent = String(count);
  }

  const cartTotal = (lines) => Math.round(lines.reduce((sum, l) => sum + (l.price || 0) * l.quantity, 0) * 100) / 100;
  const money = (amount) => `$${amount.toFixed(2)}`;

  /** The event fields naming one cart line's product. */
  function lineProduct(line, quantity) {
    const item = { id: line.id, quantity };
    if (line.category) item.category = line.category;
    if (typeof line.price === "number") item.price = line.price;
    if (typeof line.price === "number") item.currency = "USD";
    return item;
  }

  /** Counts an event the collector took, for tests: `data-<name>-sent` on the body. */
  function countSent(name) {
    const key = `${name}Sent`;
    document.body.dataset[key] = String(Number(document.body.dataset[key] || 0) + 1);
  }

  function addedToCart(product) {
    const lines = readCart();
    const line = lines.find((l) => l.id === product.id);
    if (line) line.quantity += 1;
    else lines.push({ id: product.id, title: product.title, category: product.category || "", price: typeof product.price === "number" ? product.price : null, quantity: 1 });
    writeCart(lines);
    CP.toast(`Added “${product.title}” to your cart`, { testid: "cart-toast" });
    sendEvent({ type: "add_to_cart", product: lineProduct(product, 1) }, "Add to cart", "cart").then((sent) => {
      if (sent) countSent("cartEvents");
    });
  }

  /** The cart page: its lines, removal, checkout and a (pretend) order. */
  function showCart() {
    const main = document.getElementById("shop-main");
    document.body.dataset.view = "cart";
    document.title = "Your cart · Acme Store";
    const lines = readCart();
    if (lines.length === 0) {
      CP.replaceChildren(main, [
        backLink(),
        el("div", { className: "card notice", dataset: { testid: "cart-empty" } }, [
          el("h2", { text: "Your cart is empty" }),
          el("p", { text: "Add a product from its page and it shows up here." }),
        ]),
      ]);
      return;
    }
    const rows = lines.map((line) =>
      el("li", { className: "cart-line", dataset: { testid: "cart-line", productId: line.id } }, [
        el("a", { href: productHref(line.id), text: line.title || line.id }),
        el("span", { className: "muted", text: ` × ${line.quantity}` }),
        el("span", { className: "cart-line__price", text: typeof line.price === "number" ? money(line.price * line.quantity) : "" }),
        el("button", { type: "button", className: "btn btn--ghost", dataset: { testid: "remove-from-cart" }, on: { click: () => removeLine(line) } }, ["Remove"]),
      ])
    );
    const total = cartTotal(lines);
    const checkout = el("button", { type: "button", className: "btn btn--primary btn--lg", dataset: { testid: "checkout" }, on: { click: () => beginCheckout(lines, total) } }, ["Checkout"]);
    CP.replaceChildren(main, [
      backLink(),
      el("article", { className: "card cart", dataset: { testid: "cart-page" } }, [
        el("h2", { text: "Your cart" }),
        el("ul", { className: "cart-lines" }, rows),
        el("p", { className: "cart-total", dataset: { testid: "cart-total" }, text: `Total ${money(total)}` }),
        el("div", { id: "checkout-step" }, [checkout]),
      ]),
    ]);
  }

  function removeLine(line) {
    writeCart(readCart().filter((l) => l.id !== line.id));
    sendEvent({ type: "remove_from_cart", product: lineProduct(line, line.quantity) }, "Removal", "remove").then((sent) => {
      if (sent) countSent("removeEvents");
    });
    showCart();
  }

  async function beginCheckout(lines, total) {
    const step = document.getElementById("checkout-step");
    const sent = await sendEvent({ type: "begin_checkout", properties: { items: lines.length, total } }, "Checkout", "checkout");
    if (!sent) return;
    countSent("checkoutEvents");
    const place = el("button", { type: "button", className: "btn btn--primary btn--lg", dataset: { testid: "place-order" }, on: { click: () => placeOrder(lines, total) } }, [`Place order (${money(total)})`]);
    CP.replaceChildren(step, [el("p", { className: "muted", text: "This shop is a demo: no payment is taken." }), place]);
  }

  async function placeOrder(lines, total) {
    const orderId = `o-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
    const items = lines.map((l) => {
      const item = { product_id: l.id, quantity: l.quantity };
      if (l.category) item.category = l.category;
      if (typeof l.price === "number") item.price = l.price;
      return item;
    });
    const sent = await sendEvent({ type: "purchase", order: { id: orderId, revenue: total, currency: "USD", items } }, "Order", "purchase");
    if (!sent) return;
    countSent("purchaseEvents");
    writeCart([]);
    const main = document.getElementById("shop-main");
    CP.replaceChildren(main, [
      backLink(),
      el("div", { className: "card notice", dataset: { testid: "order-confirmation", orderId } }, [
        el("h2", { text: "Thank you for your order" }),
        el("p", { text: `Order ${orderId}: ${money(total)}. A confirmation would be on its way, if this shop were real.` }),
      ]),
    ]);
  }

  // ------------------------------------------------------------------ page views

  /** POST one page view for this product page load (with the page's referrer and title). */
  async function sendPageView() {
    // Listen for offers before sending the view that may trigger one (never wait long, though).
    await Promise.race([state.offersReady, new Promise((resolve) => setTimeout(resolve, 2000))]);
    const fields = { page_title: document.title };
    if (document.referrer) fields.referrer = document.referrer;
    if (await sendEvent(fields, "Page view", "view")) {
      state.viewsSent += 1;
      document.body.dataset.viewsSent = String(state.viewsSent);
      CP.toast("Page view sent", { testid: "view-sent", ms: 3500 });
    }
  }

  /**
   * POST one event of this visitor (`fields` beside the visitor, token, URL and demographics:
   * docs/click-format.md); retries once on 503 (overload). Whether it was taken; a failure is
   * shown as "<label> not sent: …" (toast `<testid>-failed`).
   */
  async function sendEvent(fields, label, testid) {
    const identity = await ensureIdentity();
    if (!identity) {
      CP.toast(`${label} not sent: no visitor id`, { kind: "error", testid: `${testid}-failed` });
      return false;
    }
    await freshToken();
    const tracker = await shopTracker();
    if (tracker === "snowplow") return snowplowSend(fields, identity, label, testid);
    if (tracker === "segment") return segmentSend(fields, identity, label, testid);
    const click = {
      visitor: identity.visitor,
      // The identity token proves the id is this browser's: nobody can send views as another.
      token: identity.token,
      url: location.href,
      gender: ["F", "M", "U"].includes(identity.gender) ? identity.gender : "U",
      age: CP.clampAge(identity.age),
      ...fields,
    };
    for (let attempt = 0; attempt < 2; attempt++) {
      let result;
      try {
        result = await CP.postJSON("/collect", click);
      } catch (err) {
        CP.toast(`${label} not sent: the server is not reachable`, { kind: "error", testid: `${testid}-failed` });
        return false;
      }
      if (result.status === 202) return true;
      if (result.status === 503 && attempt === 0) {
        const retryAfter = Number(result.response.headers.get("Retry-After"));
        const seconds = Number.isFinite(retryAfter) && retryAfter > 0 ? Math.min(retryAfter, 10) : 1;
        await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
        continue;
      }
      const reason = (result.body && result.body.error) || `HTTP ${result.status}`;
      CP.toast(`${label} not sent: ${reason}`, { kind: "error", testid: `${testid}-failed` });
      return false;
    }
    return false;
  }

  // ------------------------------------------------------------------ Snowplow

  /** Which tracker sends the shop's events (`shop_tracker` of GET /api/site): "clickpulse" or
   * "snowplow". The same events either way: the dashboard and the offers do not change. */
  function shopTracker() {
    if (!state.tracker) {
      state.tracker = CP.fetchJSON("/api/site", { timeoutMs: 5000 })
        .then((body) => (body && ["snowplow", "segment"].includes(body.shop_tracker) ? body.shop_tracker : "clickpulse"))
        .catch(() => "clickpulse");
    }
    return state.tracker;
  }

  const SNOWPLOW_VENDOR = [
    "/vendor/snowplow/browser-tracker-4.10.1.umd.min.js",
    "/vendor/snowplow/browser-plugin-snowplow-ecommerce-4.10.2.umd.min.js",
  ];
  const IDENTITY_SCHEMA = "iglu:io.clickpulse/identity/jsonschema/1-0-0";

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = src;
      script.onload = resolve;
      script.onerror = () => reject(new Error(`cannot load ${src}`));
      document.head.appendChild(script);
    });
  }

  /**
   * Snowplow's own browser tracker and e-commerce plugin, pointed at this server's Snowplow
   * collector endpoints, as a shop running Snowplow has them. Each event carries the visitor's
   * identity as a global context (docs/sources/snowplow.md), read when the event is tracked.
   * Resolves to {sp, ec, pending}: `pending` maps a tracked event's id to its callback, called
   * with the answer's status once the tracker's request for it is answered.
   */
  function snowplow() {
    if (!state.snowplow) {
      state.snowplow = (async () => {
        for (const src of SNOWPLOW_VENDOR) await loadScript(src);
        const sp = window.snowplowBrowserTracking;
        const ec = window.snowplowEcommerceAccelerator;
        const pending = new Map();
        const settle = (events, status) => {
          for (const event of events || []) {
            const done = pending.get(event.eid);
            pending.delete(event.eid);
            if (done) done(status);
          }
        };
        // The id of the event being tracked, taken as the tracker builds it.
        const lastEvent = { eid: null };
        sp.newTracker("shop", location.origin, {
          appId: "acme-shop",
          eventMethod: "post",
          bufferSize: 1,
          stateStorageStrategy: "localStorage",
          contexts: { webPage: true },
          plugins: [ec.SnowplowEcommercePlugin(), { afterTrack: (payload) => (lastEvent.eid = payload.eid) }],
          onRequestSuccess: (batch, response) => settle(batch, response.status),
          onRequestFailure: (failure, response) => settle(failure.events, response ? response.status : 0),
        });
        sp.addGlobalContexts([
          () => {
            const identity = state.identity;
            const data = { visitor: identity.visitor, token: identity.token };
            if (["F", "M", "U"].includes(identity.gender)) data.gender = identity.gender;
            const age = CP.clampAge(identity.age);
            if (age !== null && age !== undefined) data.age = age;
            return { schema: IDENTITY_SCHEMA, data };
          },
        ]);
        return { sp, ec, pending, lastEvent };
      })();
    }
    return state.snowplow;
  }

  /** A product entity of the e-commerce plugin for an event's `product` (or an order line). */
  function snowplowProduct(product) {
    const known = state.products.find((p) => p.id === product.id) || {};
    return {
      id: product.id,
      name: known.title || product.id,
      category: product.category || known.category || "Unknown",
      price: typeof product.price === "number" ? product.price : typeof known.price === "number" ? known.price : 0,
      currency: product.currency || "USD",
      quantity: product.quantity || 1,
    };
  }

  /** Tracks `fields` (the event `sendEvent` was given) with Snowplow's tracker and waits for the
   * collector's answer. Whether it was taken; a failure is shown as for `/collect`. */
  async function snowplowSend(fields, identity, label, testid) {
    let tracker;
    try {
      tracker = await snowplow();
    } catch (err) {
      CP.toast(`${label} not sent: ${err.message}`, { kind: "error", testid: `${testid}-failed` });
      return false;
    }
    const { sp, ec, pending, lastEvent } = tracker;
    const cart = (products) => {
      const total = products.reduce((sum, p) => sum + p.price * p.quantity, 0);
      return { products, total_value: Math.round(total * 100) / 100, currency: "USD" };
    };
    const track = () => {
      switch (fields.type) {
        case "add_to_cart":
          return ec.trackAddToCart(cart([snowplowProduct(fields.product)]));
        case "remove_from_cart":
          return ec.trackRemoveFromCart(cart([snowplowProduct(fields.product)]));
        case "begin_checkout":
          return ec.trackCheckoutStep({ step: 1 });
        case "purchase": {
          const products = fields.order.items.map((item) => snowplowProduct({ ...item, id: item.product_id }));
          return ec.trackTransaction({
            transaction_id: fields.order.id,
            revenue: fields.order.revenue,
            currency: fields.order.currency || "USD",
            payment_method: "demo",
            total_quantity: products.reduce((n, p) => n + p.quantity, 0),
            products,
          });
        }
        case "search":
          return sp.trackSelfDescribingEvent({
            event: { schema: "iglu:com.snowplowanalytics.snowplow/site_search/jsonschema/1-0-0", data: { terms: fields.query.trim().split(/\s+/) } },
          });
        default:
          return sp.trackPageView({ title: fields.page_title });
      }
    };
    lastEvent.eid = null;
    const answered = new Promise((resolve) => {
      track();
      if (lastEvent.eid) pending.set(lastEvent.eid, resolve);
      else resolve(0);
    });
    const status = await Promise.race([answered, new Promise((resolve) => setTimeout(() => resolve(-1), 15000))]);
    if (status === 200) return true;
    const reason = status === -1 ? "no answer (the tracker will retry)" : status === 0 ? "the tracker did not send it" : `HTTP ${status}`;
    CP.toast(`${label} not sent: ${reason}`, { kind: "error", testid: `${testid}-failed` });
    return false;
  }

  // ------------------------------------------------------------------ Segment

  const SEGMENT_VENDOR = "/vendor/segment/analytics-next-1.84.3.umd.js";
  // Any key: the demo's Segment endpoints take every write key unless --segment-write-key
  // names some.
  const SEGMENT_WRITE_KEY = "acme-shop";

  /**
   * Segment's own analytics.js (`@segment/analytics-next`), sending to this server's Segment
   * endpoints (its settings given inline: nothing is fetched from Segment's CDN). Each event
   * carries the visitor's identity as `context.clickpulse` (docs/sources/segment.md).
   */
  function segment() {
    if (!state.segment) {
      state.segment = (async () => {
        await loadScript(SEGMENT_VENDOR);
        const [analytics] = await window.AnalyticsNext.AnalyticsBrowser.load({
          writeKey: SEGMENT_WRITE_KEY,
          cdnSettings: {
            integrations: {
              "Segment.io": {
                apiKey: SEGMENT_WRITE_KEY,
                apiHost: `${location.host}/v1`,
                protocol: location.protocol.replace(":", ""),
              },
            },
          },
        });
        return analytics;
      })();
    }
    return state.segment;
  }

  /** Sends `fields` with analytics.js; whether it was delivered. */
  async function segmentSend(fields, identity, label, testid) {
    let analytics;
    try {
      analytics = await segment();
    } catch (err) {
      CP.toast(`${label} not sent: ${err.message}`, { kind: "error", testid: `${testid}-failed` });
      return false;
    }
    const clickpulse = { visitor: identity.visitor, token: identity.token };
    if (["F", "M", "U"].includes(identity.gender)) clickpulse.gender = identity.gender;
    const age = CP.clampAge(identity.age);
    if (age !== null && age !== undefined) clickpulse.age = age;
    const options = { context: { clickpulse } };
    const product = (p) => {
      const known = state.products.find((x) => x.id === p.id) || {};
      return {
        product_id: p.id,
        name: known.title || p.id,
        category: p.category || known.category,
        price: typeof p.price === "number" ? p.price : known.price,
        quantity: p.quantity || 1,
        currency: p.currency || "USD",
      };
    };
    let ctx;
    try {
      switch (fields.type) {
        case "add_to_cart":
          ctx = await analytics.track("Product Added", product(fields.product), options);
          break;
        case "remove_from_cart":
          ctx = await analytics.track("Product Removed", product(fields.product), options);
          break;
        case "begin_checkout":
          ctx = await analytics.track("Checkout Started", { value: fields.properties?.total, currency: "USD" }, options);
          break;
        case "purchase":
          ctx = await analytics.track(
            "Order Completed",
            {
              order_id: fields.order.id,
              revenue: fields.order.revenue,
              currency: fields.order.currency || "USD",
              products: fields.order.items.map((item) => product({ ...item, id: item.product_id })),
            },
            options,
          );
          break;
        case "search":
          ctx = await analytics.track("Products Searched", { query: fields.query }, options);
          break;
        default:
          ctx = await analytics.page(undefined, undefined, { title: fields.page_title }, options);
      }
    } catch (err) {
      CP.toast(`${label} not sent: ${err.message}`, { kind: "error", testid: `${testid}-failed` });
      return false;
    }
    // analytics.js resolves once its plugins ran; a delivery it could not make is kept and
    // retried by it, and marked on the context.
    const failed = ctx && typeof ctx.failedDelivery === "function" ? ctx.failedDelivery() : null;
    if (!failed) return true;
    CP.toast(`${label} not sent: ${failed.reason || "delivery failed"}`, { kind: "error", testid: `${testid}-failed` });
    return false;
  }

  // ------------------------------------------------------------------ offers

  function readSeen() {
    try {
      const list = JSON.parse(localStorage.getItem(SEEN_KEY) || "[]");
      return Array.isArray(list) ? list.filter((x) => typeof x === "string") : [];
    } catch (_) {
      return [];
    }
  }

  function rememberSeen(offerId) {
    const list = readSeen().filter((x) => x !== offerId);
    list.push(offerId);
    try {
      localStorage.setItem(SEEN_KEY, JSON.stringify(list.slice(-SEEN_LIMIT)));
    } catch (_) {
      /* storage unavailable: duplicates are still filtered for this page via the queue */
    }
  }

  /** (Re)open the offer stream for the current identity. */
  async function connectOffers() {
    clearTimeout(state.offerRetry);
    if (state.offerSource) {
      state.offerSource.close();
      state.offerSource = null;
    }
    const identity = await ensureIdentity();
    if (!identity || !identity.token || typeof EventSource !== "function") {
      state.markOffersReady();
      return;
    }
    // An offer token about to expire is renewed first (EventSource reconnects with the same URL).
    await freshToken();

    const params = new URLSearchParams({ visitor: identity.visitor, token: identity.token });
    const url = `/api/offers/stream?${params}`;
    const source = new EventSource(url);
    state.offerSource = source;
    source.addEventListener("open", () => {
      document.body.dataset.offersConnected = "true";
      state.markOffersReady();
    });
    source.addEventListener("offer", (event) => {
      let offer = null;
      try {
        offer = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      receiveOffer(offer);
    });
    source.addEventListener("error", () => {
      document.body.dataset.offersConnected = "false";
      state.markOffersReady();
      if (source.readyState !== EventSource.CLOSED || state.offerSource !== source) return;
      // The browser gave up (non-200 answer). Find out why before trying again.
      diagnoseOfferStream(url);
    });
  }

  /**
   * After the offer stream was refused: a 401 saying the token expired is answered by renewing
   * it with the identity token; any other 401 (or a failed renewal) means the visitor is no
   * longer valid, so get a new one.
   */
  async function diagnoseOfferStream(url) {
    let status = 0;
    let error = "";
    const controller = new AbortController();
    try {
      const response = await fetch(url, { headers: { Accept: "text/event-stream" }, signal: controller.signal });
      status = response.status;
      if (status === 401) {
        const body = await response.json().catch(() => null);
        error = String((body && body.error) || "");
      }
    } catch (_) {
      status = 0;
    } finally {
      controller.abort(); // never read an event stream here
    }
    if (status === 401 && error.includes("expired") && (await freshToken(true))) {
      connectOffers();
      return;
    }
    if (status === 401 && !state.renewedAfter401) {
      state.renewedAfter401 = true;
      await newVisitor("Your previous visitor id is no longer valid, so a new one was created.");
      return;
    }
    state.offerRetry = setTimeout(connectOffers, 5000);
  }

  function receiveOffer(offer) {
    if (!offer || typeof offer.offer_id !== "string" || offer.offer_id === "") return;
    if (state.identity && offer.visitor && offer.visitor !== state.identity.visitor) return;
    // Test hook: offers received on this page, shown or not (a barrier for "not shown again").
    document.body.dataset.offersReceived = String(Number(document.body.dataset.offersReceived || 0) + 1);
    if (readSeen().includes(offer.offer_id)) return;
    if (state.offerQueue.some((o) => o.offer_id === offer.offer_id)) return;
    if (state.pendingOffers.has(offer.offer_id)) return;
    // Load the picture first so the popup never opens with an empty frame (at most 1.5 s).
    state.pendingOffers.add(offer.offer_id);
    preloadImage(offerImage(offer), 1500).then((img) => {
      state.pendingOffers.delete(offer.offer_id);
      if (readSeen().includes(offer.offer_id)) return;
      offer.$image = img;
      state.offerQueue.push(offer);
      showNextOffer();
    });
  }

  /** Resolves to a loaded <img> (or one still loading after `timeoutMs`, or that failed). */
  function preloadImage(src, timeoutMs) {
    return new Promise((resolve) => {
      const img = new Image(400, 400);
      const done = () => resolve(img);
      img.addEventListener("load", done, { once: true });
      img.addEventListener("error", done, { once: true });
      setTimeout(done, timeoutMs);
      img.src = src;
    });
  }

  function offerImage(offer) {
    if (typeof offer.image_url === "string" && offer.image_url.startsWith("/")) return offer.image_url;
    return `/images/offers/${encodeURIComponent(offer.offer || "offer1")}.png`;
  }

  /** The preloaded picture (so it is already complete when the popup shows), else a new one. */
  function offerImageElement(offer) {
    const img = offer.$image instanceof HTMLImageElement ? offer.$image : el("img", { src: offerImage(offer) });
    img.className = "modal__image";
    img.alt = offer.title || "Your special offer";
    img.width = 400;
    img.height = 400;
    img.dataset.testid = "offer-image";
    return img;
  }

  function showNextOffer() {
    if (state.offerOpen || state.offerQueue.length === 0) return;
    const offer = state.offerQueue.shift();
    state.offerOpen = true;
    rememberSeen(offer.offer_id);

    const previousFocus = document.activeElement;
    const close = () => {
      backdrop.remove();
      document.removeEventListener("keydown", onKey);
      state.offerOpen = false;
      if (previousFocus && typeof previousFocus.focus === "function") previousFocus.focus();
      showNextOffer();
    };
    const onKey = (event) => {
      if (event.key === "Escape") close();
      if (event.key === "Tab") trapFocus(event, backdrop);
    };

    const closeButton = el("button", {
      type: "button",
      className: "modal__close",
      dataset: { testid: "offer-close" },
      attrs: { "aria-label": "Close offer" },
      on: { click: close },
    });
    closeButton.append(
      CP.svg("svg", { width: "16", height: "16", viewBox: "0 0 24 24", fill: "none", stroke: "currentColor", "stroke-width": "2.4", "stroke-linecap": "round", "aria-hidden": "true" }, [
        CP.svg("path", { d: "M18 6L6 18M6 6l12 12" }),
      ])
    );

    // Why it shows, in the words of the pattern's description (never its internal names).
    const pattern = (state.patterns || []).find((p) => p.name === offer.pattern);
    const why = pattern && pattern.description ? `Why you see this: you ${lowerFirst(pattern.description)}.` : "You see this because of the products you looked at.";
    const actions = [];
    if (typeof offer.link === "string" && offer.link.startsWith("/shop/")) {
      actions.push(el("a", { className: "btn btn--primary", href: offer.link, dataset: { testid: "offer-link" }, text: "See the offer" }));
    }
    actions.push(el("button", { type: "button", className: actions.length ? "btn" : "btn btn--primary", text: "Continue shopping", on: { click: close } }));
    const modal = el("div", { className: "modal" }, [
      closeButton,
      offerImageElement(offer),
      el("div", { className: "modal__body" }, [
        el("div", { className: "modal__eyebrow", text: "Just for you" }),
        el("h2", { className: "modal__title", id: "offer-title", dataset: { testid: "offer-title" }, text: offer.title || "A special offer just for you" }),
        offer.text ? el("p", { className: "modal__text", dataset: { testid: "offer-text" }, text: offer.text }) : null,
        el("p", { className: "modal__fine", dataset: { testid: "offer-pattern" }, text: why }),
        el("div", { className: "modal__actions" }, actions),
      ]),
    ]);
    const backdrop = el(
      "div",
      {
        className: "modal-backdrop",
        dataset: { testid: "offer-popup", offerId: offer.offer_id, offer: offer.offer || "", pattern: offer.pattern || "" },
        attrs: { role: "dialog", "aria-modal": "true", "aria-labelledby": "offer-title" },
        on: {
          click: (event) => {
            if (event.target === backdrop) close();
          },
        },
      },
      [modal]
    );

    document.body.append(backdrop);
    document.addEventListener("keydown", onKey);
    window.__lastOfferAt = performance.timeOrigin + performance.now();
    closeButton.focus();
  }

  /** Keep Tab inside the open dialog. */
  /** "Viewed clothing" → "viewed clothing" (a description continues a sentence). */
  function lowerFirst(text) {
    const t = String(text).trim().replace(/[.]+$/, "");
    return t.charAt(0).toLowerCase() + t.slice(1);
  }

  function trapFocus(event, container) {
    const focusable = [...container.querySelectorAll("button, a[href], input")];
    if (focusable.length === 0) return;
    const first = focusable[0];
    const last = focusable[focusable.length - 1];
    if (event.shiftKey && document.activeElement === first) {
      event.preventDefault();
      last.focus();
    } else if (!event.shiftKey && document.activeElement === last) {
      event.preventDefault();
      first.focus();
    }
  }

  // ------------------------------------------------------------------ boot

  async function boot() {
    state.offersReady = new Promise((resolve) => {
      state.markOffersReady = resolve;
    });
    setupIdentityControls();
    const where = route();

    // The sidebar shows the stored identity at once; a first visit creates one.
    const stored = CP.loadIdentity();
    if (stored) {
      state.identity = stored;
      renderIdentity();
    }
    renderCart();
    const identityPromise = ensureIdentity().then((identity) => {
      if (identity) renderIdentity();
      renderCart();
      // The rules say whether this profile can earn an offer.
      if (identity && identity !== stored) loadRules();
      return identity;
    });

    loadRules();
    connectOffers();

    if (where.view === "product") showProduct(where.id);
    else if (where.view === "cart") identityPromise.then(() => showCart());
    else showList();

    // Back/Forward may restore this page from the back-forward cache without reloading it:
    // that is still a page view, and the offer stream has to be reopened.
    window.addEventListener("pageshow", (event) => {
      if (!event.persisted) return;
      connectOffers();
      if (where.view === "product") sendPageView();
    });
    await identityPromise;
  }

  boot();
})();
