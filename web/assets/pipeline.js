/*
 * Clickpulse — pipeline view (served at `/pipeline`).
 *
 * Draws the data flow as absolutely positioned HTML boxes (stages, topics, sinks) over an SVG
 * layer of arrows, then refreshes every number once a second from /api/stats (shared poll in
 * common.js). Arrows animate while the stage upstream of them processes events.
 */
(function () {
  "use strict";

  const { el, svg, fmtInt, fmtRate, fmtUtcDateTime, setText, isNum } = CP;

  // ------------------------------------------------------------------ layout

  /**
   * Node positions in the 1200 px wide diagram (its height follows the boxes). Columns: sources, click-data, enrich,
   * enriched-click-data, {aggregate, special-offers, detect}, {dashboard, web, popups}.
   */
  const STAGES = [
    { name: "replay", kind: "Source", x: 0, y: 40, description: "Replays the bundled clickstream log in event-time order" },
    { name: "collector", kind: "Source", x: 0, y: 320, description: "Takes live page views from POST /collect" },
    { name: "enrich", kind: "Stage", x: 398, y: 176, description: "Adds product and visitor data to every click" },
    { name: "aggregate", kind: "Stage", x: 808, y: 0, description: "Event-time windows behind the dashboard" },
    { name: "detect", kind: "Stage", x: 808, y: 372, description: "Runs the behaviour patterns' state machines" },
    { name: "web", kind: "Stage", x: 1028, y: 176, description: "Delivers offers to browsers over Server-Sent Events" },
  ];
  const TOPICS = [
    { name: "click-data", x: 212, y: 214 },
    { name: "enriched-click-data", x: 608, y: 214 },
    { name: "special-offers", x: 819, y: 214 },
    { name: "dead-letters", x: 398, y: 430, dead: true },
  ];
  const SINKS = [
    { name: "dashboard", label: "Dashboard", x: 1049, y: 40, href: "/", linkText: "Open dashboard" },
    { name: "popups", label: "Browser popups", x: 1049, y: 440, href: "/shop", linkText: "Open the shop" },
  ];

  /**
   * Edges: from node, side → to node, side. `driver`: the stages whose events/s animate the
   * edge (the stage upstream of it); `dead`: a dashed dead-letter edge.
   */
  const EDGES = [
    { from: "replay", fromSide: "right", to: "click-data", toSide: "left", driver: ["replay"] },
    { from: "collector", fromSide: "right", to: "click-data", toSide: "left", driver: ["collector"] },
    { from: "click-data", fromSide: "right", to: "enrich", toSide: "left", driver: ["replay", "collector"] },
    { from: "enrich", fromSide: "right", to: "enriched-click-data", toSide: "left", driver: ["enrich"] },
    { from: "enriched-click-data", fromSide: "right", to: "aggregate", toSide: "left", driver: ["enrich"] },
    { from: "enriched-click-data", fromSide: "right", to: "detect", toSide: "left", driver: ["enrich"] },
    { from: "detect", fromSide: "top", to: "special-offers", toSide: "bottom", driver: ["detect"] },
    { from: "special-offers", fromSide: "top", to: "aggregate", toSide: "bottom", driver: ["detect"] },
    { from: "special-offers", fromSide: "right", to: "web", toSide: "left", driver: ["detect"] },
    { from: "aggregate", fromSide: "right", to: "dashboard", toSide: "left", driver: ["aggregate"] },
    { from: "web", fromSide: "bottom", to: "popups", toSide: "top", driver: ["web"] },
    { from: "enrich", fromSide: "bottom", to: "dead-letters", toSide: "top", driver: [], dead: true },
  ];

  // Preferred row order in the table; any other stage the server reports follows.
  const STAGE_ORDER = ["replay", "collector", "enrich", "detect", "aggregate", "web"];

  const nodes = new Map(); // name → element
  const edgePaths = []; // {edge, path}
  let lastDeadLetters = null;

  // ------------------------------------------------------------------ building the diagram

  function metric(label, key) {
    return el("div", { dataset: { metric: key } }, [el("dt", { text: label }), el("dd", { text: "—" })]);
  }

  function buildStage(spec) {
    const node = el(
      "div",
      {
        className: "node node--stage status-absent",
        id: `stage-${spec.name}`,
        title: spec.description,
        dataset: { testid: `stage-${spec.name}`, stage: spec.name, status: "absent" },
        style: { left: `${spec.x}px`, top: `${spec.y}px` },
      },
      [
        el("div", { className: "node__head" }, [
          el("span", { className: "node__name", text: spec.name }),
          el("span", { className: "node__status" }, [
            el("span", { className: "status-dot", attrs: { "aria-hidden": "true" } }),
            el("span", { className: "node__status-text", text: "Off" }),
          ]),
        ]),
        el("div", { className: "node__kind", text: spec.kind }),
        el("div", { className: "node__rate" }, [el("span", { className: "node__rate-value", text: "—" }), el("small", { text: "events/s" })]),
        el("dl", { className: "node__metrics" }, [metric("Events", "events"), metric("Lag", "lag"), metric("Errors", "errors"), metric("Dead", "dead_letters")]),
        el("div", { className: "node__extra" }),
      ]
    );
    return node;
  }

  function buildTopic(spec) {
    return el(
      "div",
      {
        className: `node node--topic${spec.dead ? " node--dead" : ""}`,
        id: `topic-${spec.name}`,
        title: spec.dead ? "Records no stage could process, kept for inspection" : `Topic ${spec.name}`,
        dataset: { testid: `topic-${spec.name}`, topic: spec.name },
        style: { left: `${spec.x}px`, top: `${spec.y}px` },
      },
      [
        el("div", { className: "node__kind", text: spec.dead ? "Dead letters" : "Topic" }),
        el("div", { className: "node__name", text: spec.name }),
        el("div", { className: "node__records" }, [el("span", { className: "node__records-value", text: "—" }), el("small", { text: "records" })]),
        el("div", { className: "node__extra node__partitions", text: "" }),
      ]
    );
  }

  function buildSink(spec) {
    return el(
      "div",
      {
        className: "node node--sink",
        id: `sink-${spec.name}`,
        dataset: { testid: `sink-${spec.name}` },
        style: { left: `${spec.x}px`, top: `${spec.y}px` },
      },
      [
        el("div", { className: "node__kind", text: "Sink" }),
        el("div", { className: "node__name", text: spec.label }),
        el("div", { className: "node__extra" }, [el("a", { href: spec.href, text: spec.linkText })]),
      ]
    );
  }

  function buildDiagram() {
    const diagram = document.getElementById("diagram");
    const layer = svg("svg", { class: "diagram__edges", "aria-hidden": "true" }, [
      svg("defs", {}, [arrowMarker("arrow", "#cfd5e1"), arrowMarker("arrow-live", "#4f46e5"), arrowMarker("arrow-dead", "#fca5a5")]),
    ]);
    diagram.append(layer);

    for (const spec of STAGES) nodes.set(spec.name, diagram.appendChild(buildStage(spec)));
    for (const spec of TOPICS) nodes.set(spec.name, diagram.appendChild(buildTopic(spec)));
    for (const spec of SINKS) nodes.set(spec.name, diagram.appendChild(buildSink(spec)));

    for (const edge of EDGES) {
      const path = svg("path", { class: `edge${edge.dead ? " edge--dead" : ""}`, "marker-end": `url(#${edge.dead ? "arrow-dead" : "arrow"})` });
      path.dataset.from = edge.from;
      path.dataset.to = edge.to;
      layer.append(path);
      edgePaths.push({ edge, path });
    }
    layoutEdges();
  }

  function arrowMarker(id, color) {
    return svg("marker", { id, viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" }, [
      svg("path", { d: "M0,0 L10,5 L0,10 z", fill: color }),
    ]);
  }

  /** Grow the diagram to contain its tallest column (box heights depend on their content). */
  function fitHeight() {
    const diagram = document.getElementById("diagram");
    let bottom = 0;
    for (const node of nodes.values()) bottom = Math.max(bottom, node.offsetTop + node.offsetHeight);
    const height = `${bottom + 8}px`;
    if (diagram.style.height !== height) diagram.style.height = height;
  }

  /** The point on a node's side where an edge attaches. */
  function anchor(name, side) {
    const node = nodes.get(name);
    const x = node.offsetLeft;
    const y = node.offsetTop;
    const w = node.offsetWidth;
    const h = node.offsetHeight;
    switch (side) {
      case "left":
        return [x, y + h / 2];
      case "right":
        return [x + w, y + h / 2];
      case "top":
        return [x + w / 2, y];
      default:
        return [x + w / 2, y + h];
    }
  }

  /** Smooth curves between anchors; recomputed whenever box heights may have changed. */
  function layoutEdges() {
    fitHeight();
    for (const { edge, path } of edgePaths) {
      const [x1, y1] = anchor(edge.from, edge.fromSide);
      const [x2, y2] = anchor(edge.to, edge.toSide);
      let d;
      if (edge.fromSide === "right") {
        const dx = Math.max(24, (x2 - x1) / 2);
        d = `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2 - 2},${y2}`;
      } else {
        const down = y2 > y1;
        const dy = Math.max(16, Math.abs(y2 - y1) / 2) * (down ? 1 : -1);
        const end = down ? y2 - 2 : y2 + 2;
        d = `M${x1},${y1} C${x1},${y1 + dy} ${x2},${y2 - dy} ${x2},${end}`;
      }
      if (path.getAttribute("d") !== d) path.setAttribute("d", d);
    }
  }

  // ------------------------------------------------------------------ status and details

  function stageStatus(stage) {
    if (!stage) return { key: "absent", label: "Off" };
    if (isNum(stage.errors) && stage.errors > 0) return { key: "error", label: "Errors" };
    if (isNum(stage.events_per_second) && stage.events_per_second > 0) return { key: "running", label: "Running" };
    if (stage.done) return { key: "done", label: "Done" };
    return { key: "idle", label: "Idle" };
  }

  /** One short line (plus optional progress bar) of the stage's most telling details. */
  function stageExtra(name, stage) {
    const d = (stage && stage.details) || {};
    switch (name) {
      case "replay": {
        const parts = [];
        if (isNum(d.position) && isNum(d.log_events) && d.log_events > 0) {
          const inPass = d.position - (isNum(d.pass) ? d.pass : 0) * d.log_events;
          const pct = Math.max(0, Math.min(100, (inPass / d.log_events) * 100));
          parts.push(el("div", { text: `${fmtInt(inPass)} of ${fmtInt(d.log_events)} (${pct.toFixed(1)}%)` }));
          parts.push(el("div", { className: "progress", attrs: { role: "progressbar", "aria-valuenow": pct.toFixed(1), "aria-valuemin": "0", "aria-valuemax": "100", "aria-label": "Replay progress" } }, [
            el("div", { className: "progress__fill", style: { width: `${pct}%` } }),
          ]));
        }
        const speed = d.speed ? `Speed ${CP.fmtSpeed(d.speed)}` : "";
        const pass = isNum(d.pass) && d.pass > 0 ? ` · pass ${fmtInt(d.pass)}` : "";
        if (speed || pass) parts.push(el("div", { text: `${speed}${pass}` }));
        return parts;
      }
      case "collector":
        return summary(d, [["accepted", "accepted"], ["rejected", "rejected"]]);
      case "enrich":
        return summary(d, [["known_visitor_events", "known visitors"], ["unknown_product_events", "unknown products"]]);
      case "detect": {
        const parts = summary(d, [["offers", "offers"], ["active_visitors", "in a match"]]);
        if (Array.isArray(d.patterns)) {
          const n = d.patterns.length;
          parts.push(`${fmtInt(n)} ${n === 1 ? "pattern" : "patterns"}`);
        }
        return [parts.join(" · ")].filter(Boolean);
      }
      case "aggregate":
        return summary(d, [["late_events", "late"], ["pending", "pending"]]);
      case "web":
        return summary(d, [["delivered", "delivered"], ["subscribers", "connected"]]);
      default:
        return [];
    }
  }

  /**
   * "12 accepted · 0 rejected" from the numeric detail fields that are present.
   * Returns a one-element list (or an empty list when none is present).
   */
  function summary(details, fields) {
    const parts = fields.filter(([key]) => isNum(details[key])).map(([key, label]) => `${fmtInt(details[key])} ${label}`);
    return parts.length ? [parts.join(" · ")] : [];
  }

  function renderStageNode(name, stage) {
    const node = nodes.get(name);
    if (!node) return;
    const status = stageStatus(stage);
    node.className = `node node--stage status-${status.key}`;
    node.dataset.status = status.key;
    setText(node.querySelector(".node__status-text"), status.label);
    setText(node.querySelector(".node__rate-value"), stage ? fmtRate(stage.events_per_second) : "—");
    for (const key of ["events", "lag", "errors", "dead_letters"]) {
      const cell = node.querySelector(`[data-metric="${key}"]`);
      const value = stage ? stage[key] : undefined;
      setText(cell.querySelector("dd"), fmtInt(value));
      cell.classList.toggle("is-bad", (key === "errors" || key === "dead_letters") && isNum(value) && value > 0);
    }
    CP.replaceChildren(node.querySelector(".node__extra"), stage ? stageExtra(name, stage) : ["Not part of this process"]);
  }

  function renderTopicNode(name, topic) {
    const node = nodes.get(name);
    if (!node) return;
    const records = topic && isNum(topic.records) ? topic.records : null;
    setText(node.querySelector(".node__records-value"), fmtInt(records));
    const partitions = topic && isNum(topic.partitions) ? topic.partitions : null;
    setText(node.querySelector(".node__partitions"), partitions === null ? "Not created yet" : `${fmtInt(partitions)} ${partitions === 1 ? "partition" : "partitions"}`);
    node.classList.toggle("has-records", records !== null && records > 0);
  }

  function isFlowing(edge, stages, topics) {
    if (edge.dead) {
      const dead = topics["dead-letters"];
      const records = dead && isNum(dead.records) ? dead.records : null;
      return records !== null && lastDeadLetters !== null && records > lastDeadLetters;
    }
    return edge.driver.some((name) => {
      const s = stages[name];
      return s && isNum(s.events_per_second) && s.events_per_second > 0;
    });
  }

  function renderEdges(stages, topics) {
    for (const { edge, path } of edgePaths) {
      const flowing = isFlowing(edge, stages, topics);
      path.classList.toggle("is-flowing", flowing);
      path.setAttribute("marker-end", `url(#${edge.dead ? "arrow-dead" : flowing ? "arrow-live" : "arrow"})`);
    }
  }

  // ------------------------------------------------------------------ tables

  /** Details object → list of "key value" chips (nested values summarised). */
  function detailsList(details) {
    const items = Object.entries(details || {}).map(([key, value]) => {
      let text;
      if (isNum(value)) text = key.endsWith("_ms") && value > 1e11 ? fmtUtcDateTime(value) : fmtInt(value);
      else if (Array.isArray(value)) {
        text = value.map((v) => (v && typeof v === "object" ? [v.name, v.version].filter(Boolean).join("@") : String(v))).join(", ") || "none";
      } else if (value && typeof value === "object") {
        const entries = Object.entries(value);
        text = entries.length ? entries.map(([k, v]) => `${k}: ${isNum(v) ? fmtInt(v) : v}`).join(", ") : "none";
      } else text = value === null || value === undefined ? "—" : String(value);
      return el("li", {}, [el("span", { text: `${key.replace(/_/g, " ")} ` }), el("b", { text })]);
    });
    return el("ul", { className: "details-list" }, items);
  }

  function renderStageTable(stages) {
    const tbody = document.querySelector("#stage-table tbody");
    const names = Object.keys(stages).sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
    if (names.length === 0) {
      CP.replaceChildren(tbody, el("tr", { className: "empty-row" }, [el("td", { colSpan: 8, text: "No stage has reported yet." })]));
      return;
    }
    CP.replaceChildren(
      tbody,
      names.map((name) => {
        const stage = stages[name] || {};
        const status = stageStatus(stage);
        const bad = (v) => (isNum(v) && v > 0 ? { color: "var(--red-700)", fontWeight: "600" } : {});
        return el("tr", { dataset: { testid: "stage-row", stage: name, status: status.key } }, [
          el("td", {}, [el("b", { text: name })]),
          el("td", {}, [
            el("span", { className: "node__status" }, [el("span", { className: `status-dot status-${status.key}`, attrs: { "aria-hidden": "true" } }), status.label]),
          ]),
          el("td", { className: "num", text: fmtRate(stage.events_per_second) }),
          el("td", { className: "num", text: fmtInt(stage.events) }),
          el("td", { className: "num", text: fmtInt(stage.lag) }),
          el("td", { className: "num", style: bad(stage.errors), text: fmtInt(stage.errors) }),
          el("td", { className: "num", style: bad(stage.dead_letters), text: fmtInt(stage.dead_letters) }),
          el("td", {}, [detailsList(stage.details)]),
        ]);
      })
    );
  }

  function rank(name) {
    const i = STAGE_ORDER.indexOf(name);
    return i === -1 ? STAGE_ORDER.length : i;
  }

  function renderTopicTable(topics) {
    const tbody = document.querySelector("#topic-table tbody");
    const order = TOPICS.map((t) => t.name);
    const names = Object.keys(topics).sort((a, b) => {
      const ia = order.indexOf(a) === -1 ? order.length : order.indexOf(a);
      const ib = order.indexOf(b) === -1 ? order.length : order.indexOf(b);
      return ia - ib || a.localeCompare(b);
    });
    if (names.length === 0) {
      CP.replaceChildren(tbody, el("tr", { className: "empty-row" }, [el("td", { colSpan: 4, text: "No topic exists yet." })]));
      return;
    }
    CP.replaceChildren(
      tbody,
      names.map((name) => {
        const t = topics[name] || {};
        const offsets = Array.isArray(t.end_offsets) ? t.end_offsets : [];
        return el("tr", { dataset: { testid: "topic-row", topic: name } }, [
          el("td", { className: "mono", text: name }),
          el("td", { className: "num", text: fmtInt(t.partitions) }),
          el("td", { className: "num", text: fmtInt(t.records) }),
          el("td", { className: "mono muted", text: offsets.length ? offsets.map((o) => fmtInt(o)).join(" · ") : "—" }),
        ]);
      })
    );
  }

  // ------------------------------------------------------------------ refresh

  function setStatus(kind, text) {
    const pill = document.getElementById("pipeline-status");
    pill.querySelector(".live-dot").classList.toggle("is-live", kind === "live");
    pill.classList.toggle("is-error", kind === "error");
    setText(document.getElementById("pipeline-status-text"), text);
  }

  function render(stats, error) {
    if (error || !stats) {
      setStatus("error", "Server not reachable, retrying…");
      return;
    }
    const stages = stats.stages && typeof stats.stages === "object" ? stats.stages : {};
    const topics = stats.topics && typeof stats.topics === "object" ? stats.topics : {};
    const active = Object.values(stages).some((s) => s && isNum(s.events_per_second) && s.events_per_second > 0);
    setStatus(active ? "live" : "idle", active ? "Live · processing" : "Live · idle");
    setText(document.getElementById("pipeline-mode"), stats.mode ? String(stats.mode) : "—");
    setText(document.getElementById("pipeline-uptime"), CP.fmtDuration(stats.uptime_seconds));

    for (const spec of STAGES) renderStageNode(spec.name, stages[spec.name]);
    for (const spec of TOPICS) renderTopicNode(spec.name, topics[spec.name]);
    renderEdges(stages, topics);
    layoutEdges();
    renderStageTable(stages);
    renderTopicTable(topics);

    const dead = topics["dead-letters"];
    lastDeadLetters = dead && isNum(dead.records) ? dead.records : null;
    document.body.dataset.statsCount = String(Number(document.body.dataset.statsCount || 0) + 1);
  }

  buildDiagram();
  CP.onStats(render);
  window.addEventListener("resize", layoutEdges);
})();
