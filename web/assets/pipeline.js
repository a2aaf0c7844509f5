/*
 * Clickpulse — pipeline view (served at `/pipeline`).
 *
 * Draws the data flow as absolutely positioned HTML boxes (stages, topics, sinks) over an SVG
 * layer of arrows. The graph itself comes from GET /api/topology (the topology declared once
 * in crates/engine/src/topology.rs): nothing about it is written here. Boxes are placed by a
 * layered layout; every number is refreshed once a second from /api/stats (shared poll in
 * common.js). Arrows animate while the stages that feed them process events.
 */
(function () {
  "use strict";

  const { el, svg, fmtInt, fmtRate, fmtDateTime, setText, isNum } = CP;

  // ------------------------------------------------------------------ the topology

  /**
   * The topology as the view uses it: {stages, topics, sinks, deadTopic, edges, order}.
   * `edges`: {from, to, driver, dead}; `driver` lists the stages whose events/s animate the
   * edge (the stage upstream of it, or for topic → stage the topic's writers); `dead` marks a
   * dashed edge into the dead-letter topic. `order`: every node name, stages then topics then
   * sinks. Null until /api/topology has answered.
   */
  let topo = null;

  const INSTANCES = {
    group: { label: "consumer group", title: "Any number of instances share the input partitions in a consumer group" },
    "single-active": { label: "single active", title: "One active instance holds a lease; others wait as standbys" },
    replicated: { label: "replicated", title: "Any number of instances, each doing all of the work" },
  };

  const list = (v) => (Array.isArray(v) ? v.filter((x) => typeof x === "string" && x) : []);

  /** Normalise /api/topology's answer and derive the edges (throws if it is unusable). */
  function readTopology(body) {
    if (!body || !Array.isArray(body.stages) || body.stages.length === 0) throw new Error("the answer lists no stages");
    const stages = body.stages
      .filter((s) => s && typeof s.name === "string" && s.name)
      .map((s) => ({
        name: s.name,
        kind: s.kind === "source" ? "source" : "operator",
        description: typeof s.description === "string" ? s.description : "",
        inputs: list(s.inputs),
        outputs: list(s.outputs),
        sinks: list(s.sinks),
        deadLetters: s.dead_letters === true,
        instances: typeof s.instances === "string" ? s.instances : "",
      }));
    const topics = (Array.isArray(body.topics) ? body.topics : [])
      .filter((t) => t && typeof t.name === "string" && t.name)
      .map((t) => ({ name: t.name, dead: t.dead === true, side: t.side === true }));
    const sinks = (Array.isArray(body.sinks) ? body.sinks : [])
      .filter((k) => k && typeof k.name === "string" && k.name)
      .map((k) => ({ name: k.name, label: k.label || k.name, href: k.href || "", linkText: k.link_text || "" }));
    // A topic or sink a stage names without the lists declaring it still gets a box.
    for (const s of stages) {
      for (const t of [...s.inputs, ...s.outputs]) if (!topics.some((x) => x.name === t)) topics.push({ name: t, dead: false });
      for (const k of s.sinks) if (!sinks.some((x) => x.name === k)) sinks.push({ name: k, label: k, href: "", linkText: "" });
    }
    const deadTopic = topics.find((t) => t.dead) || null;

    const writers = (topic) => stages.filter((s) => s.outputs.includes(topic)).map((s) => s.name);
    const edges = [];
    for (const s of stages) for (const t of s.outputs) edges.push({ from: s.name, to: t, driver: [s.name], dead: false });
    for (const s of stages) for (const t of s.inputs) edges.push({ from: t, to: s.name, driver: writers(t), dead: false });
    for (const s of stages) for (const k of s.sinks) edges.push({ from: s.name, to: k, driver: [s.name], dead: false });
    if (deadTopic) {
      for (const s of stages) if (s.deadLetters) edges.push({ from: s.name, to: deadTopic.name, driver: [], dead: true });
    }
    const order = [...stages.map((s) => s.name), ...topics.map((t) => t.name), ...sinks.map((k) => k.name)];
    return { stages, topics, sinks, deadTopic, edges, order };
  }

  const deadName = () => (topo && topo.deadTopic ? topo.deadTopic.name : "dead-letters");

  // ------------------------------------------------------------------ building the diagram

  const nodes = new Map(); // name → element
  const edgePaths = []; // {edge, path}
  let lastDeadLetters = null;

  function metric(label, key) {
    return el("div", { dataset: { metric: key } }, [el("dt", { text: label }), el("dd", { text: "—" })]);
  }

  function buildStage(spec) {
    const inst = INSTANCES[spec.instances] || (spec.instances ? { label: spec.instances.replace(/-/g, " "), title: "" } : null);
    return el(
      "div",
      {
        className: "node node--stage status-absent",
        id: `stage-${spec.name}`,
        title: spec.description,
        dataset: { testid: `stage-${spec.name}`, stage: spec.name, status: "absent" },
      },
      [
        el("div", { className: "node__head" }, [
          el("span", { className: "node__name", text: spec.name }),
          el("span", { className: "node__status" }, [
            el("span", { className: "status-dot", attrs: { "aria-hidden": "true" } }),
            el("span", { className: "node__status-text", text: "Off" }),
          ]),
        ]),
        el("div", { className: "node__kind" }, [
          el("span", { text: spec.kind === "source" ? "Source" : "Stage" }),
          inst ? el("span", { className: "node__instances", title: inst.title || null, dataset: { instances: spec.instances }, text: inst.label }) : null,
        ]),
        el("div", { className: "node__rate" }, [el("span", { className: "node__rate-value", text: "—" }), el("small", { text: "events/s" })]),
        el("dl", { className: "node__metrics" }, [metric("Events", "events"), metric("Lag", "lag"), metric("Errors", "errors"), metric("Dead", "dead_letters")]),
        el("div", { className: "node__extra" }),
      ]
    );
  }

  function buildTopic(spec) {
    return el(
      "div",
      {
        className: `node node--topic${spec.dead ? " node--dead" : ""}`,
        id: `topic-${spec.name}`,
        title: spec.dead ? "Records no stage could process, kept for inspection" : `Topic ${spec.name}`,
        dataset: { testid: `topic-${spec.name}`, topic: spec.name },
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
      },
      [
        el("div", { className: "node__kind", text: "Sink" }),
        el("div", { className: "node__name", text: spec.label }),
        spec.href ? el("div", { className: "node__extra" }, [el("a", { href: spec.href, text: spec.linkText || spec.href })]) : null,
      ]
    );
  }

  function buildDiagram() {
    const diagram = document.getElementById("diagram");
    const layer = svg("svg", { class: "diagram__edges", "aria-hidden": "true" }, [
      svg("defs", {}, [arrowMarker("arrow", "#cfd5e1"), arrowMarker("arrow-live", "#4f46e5"), arrowMarker("arrow-dead", "#fca5a5")]),
    ]);
    CP.replaceChildren(diagram, layer);
    nodes.clear();
    edgePaths.length = 0;
    probe = null;

    for (const spec of topo.stages) nodes.set(spec.name, diagram.appendChild(buildStage(spec)));
    for (const spec of topo.topics) nodes.set(spec.name, diagram.appendChild(buildTopic(spec)));
    for (const spec of topo.sinks) nodes.set(spec.name, diagram.appendChild(buildSink(spec)));

    for (const edge of topo.edges) {
      const path = svg("path", { class: `edge${edge.dead ? " edge--dead" : ""}`, "marker-end": `url(#${edge.dead ? "arrow-dead" : "arrow"})` });
      path.dataset.from = edge.from;
      path.dataset.to = edge.to;
      layer.append(path);
      edgePaths.push({ edge, path });
    }
    delete diagram.dataset.layout;
    layoutEdges();
  }

  function arrowMarker(id, color) {
    return svg("marker", { id, viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" }, [
      svg("path", { d: "M0,0 L10,5 L0,10 z", fill: color }),
    ]);
  }

  // ------------------------------------------------------------------ layered (wide) layout

  /*
   * Wide layout, left to right. Every node but the dead-letter topic gets a column: the length
   * of the longest path to it from a node with no inputs (sources 0, click-data 1, enrich 2, …).
   * Columns are ordered to limit crossings (each node by the mean position of its inputs) and
   * laid side by side as bands; while they are wider than the diagram, a column holding a lone
   * topic is folded into a neighbouring column of at most two nodes that all read or write it
   * (the topic between them, arrows vertical). Within a band the boxes are spread vertically,
   * each near its inputs; the dead-letter topic goes below the boxes at the diagram's middle.
   */
  const DIAGRAM_WIDTH = 1200;
  const MIN_GAP = 40; // least horizontal room for an arrow between two bands
  const MAX_GAP = 140; // most room between two bands (a short graph is centred instead)
  const FOLD_GAP = 44; // vertical room for an arrow between the boxes of a folded band
  const STACK_GAP = 56; // vertical room between two boxes of a band
  const DEAD_GAP = 56; // room above the dead-letter topic

  /** Column of every node: longest path from a node without inputs (dead-letter edges aside).
   * A side topic (alerts: written by one stage, read by a stage beside it) shares its writer's
   * column and does not push its readers right. */
  function columns() {
    const live = topo.edges.filter((e) => !e.dead);
    const side = new Set(topo.topics.filter((t) => t.side).map((t) => t.name));
    const names = topo.order.filter((n) => !(topo.deadTopic && n === topo.deadTopic.name));
    const depth = new Map(names.map((n) => [n, 0]));
    for (let round = 0; round < names.length; round++) {
      let changed = false;
      for (const e of live.filter((x) => !side.has(x.from) && !side.has(x.to))) {
        if (!depth.has(e.from) || !depth.has(e.to)) continue;
        const d = depth.get(e.from) + 1;
        if (d > depth.get(e.to)) {
          depth.set(e.to, d);
          changed = true;
        }
      }
      if (!changed) break; // (a cycle stops after names.length rounds)
    }
    for (const t of side) {
      const writers = live.filter((e) => e.to === t && depth.has(e.from)).map((e) => depth.get(e.from));
      if (depth.has(t)) depth.set(t, writers.length ? Math.max(...writers) : 0);
    }
    const cols = [];
    for (const n of names) (cols[depth.get(n)] = cols[depth.get(n)] || []).push(n);
    const filled = cols.filter(Boolean);
    // Order each column by the mean position of its nodes' inputs in theirs.
    const rel = new Map();
    filled.forEach((col, c) => {
      if (c > 0) {
        const bary = (n) => {
          const ps = live.filter((e) => e.to === n && rel.has(e.from)).map((e) => rel.get(e.from));
          return ps.length ? ps.reduce((a, b) => a + b, 0) / ps.length : 0.5;
        };
        const keyed = col.map((n, i) => ({ n, i, b: bary(n) }));
        keyed.sort((a, b) => a.b - b.b || a.i - b.i);
        col.splice(0, col.length, ...keyed.map((k) => k.n));
      }
      col.forEach((n, i) => rel.set(n, (i + 0.5) / col.length));
    });
    return filled;
  }

  const isTopic = (name) => topo.topics.some((t) => t.name === name);
  const linked = (a, b) => topo.edges.some((e) => !e.dead && ((e.from === a && e.to === b) || (e.from === b && e.to === a)));

  /** Bands of columns, folded until they fit: [{nodes: [top … bottom], pivot: name|null}]. */
  function bands(widthOf) {
    const out = columns().map((col) => ({ nodes: col.slice(), pivot: null }));
    const bandWidth = (b) => Math.max(...b.nodes.map(widthOf));
    const total = () => out.reduce((sum, b) => sum + bandWidth(b), 0) + MIN_GAP * (out.length - 1);
    while (total() > DIAGRAM_WIDTH) {
      let best = null;
      out.forEach((b, i) => {
        if (b.pivot || b.nodes.length !== 1 || !isTopic(b.nodes[0])) return;
        const topic = b.nodes[0];
        for (const j of [i - 1, i + 1]) {
          const host = out[j];
          if (!host || host.pivot || host.nodes.length > 2 || !host.nodes.every((n) => linked(n, topic))) continue;
          // Prefer a topic between two boxes (symmetric), then the leftmost.
          const score = host.nodes.length * 100 - i;
          if (!best || score > best.score) best = { score, i, j, topic };
        }
      });
      if (!best) break; // nothing left to fold: the diagram grows wider (and scrolls)
      const host = out[best.j];
      const half = Math.ceil(host.nodes.length / 2);
      host.nodes.splice(half, 0, best.topic);
      host.pivot = best.topic;
      out.splice(best.i, 1);
    }
    return out;
  }

  /** Wide layout: {rects: Map name → {x, y, w, h, band}, bandX, bandW, gap, width}. */
  function wideLayout() {
    const size = new Map();
    for (const [name, node] of nodes) size.set(name, { w: node.offsetWidth, h: node.offsetHeight });
    const bs = bands((n) => size.get(n).w);
    const bandW = bs.map((b) => Math.max(...b.nodes.map((n) => size.get(n).w)));
    const sum = bandW.reduce((a, b) => a + b, 0);
    const gap = bs.length > 1 ? Math.max(MIN_GAP, Math.min(MAX_GAP, (DIAGRAM_WIDTH - sum) / (bs.length - 1))) : 0;
    const span = sum + gap * (bs.length - 1);
    const width = Math.max(DIAGRAM_WIDTH, Math.ceil(span));
    const bandX = [];
    let x = (width - span) / 2;
    for (const w of bandW) {
      bandX.push(x);
      x += w + gap;
    }

    // Vertical: centre 0 is the diagram's middle line; shifted to start at 0 at the end.
    const rects = new Map();
    const live = topo.edges.filter((e) => !e.dead);
    const centerOf = (n) => rects.get(n).y + rects.get(n).h / 2;
    const inputsCenter = (n, except) => {
      const ys = live.filter((e) => e.to === n && rects.has(e.from) && !except.includes(e.from)).map((e) => centerOf(e.from));
      return ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : null;
    };
    bs.forEach((b, i) => {
      const put = (n, y) => rects.set(n, { x: Math.round(bandX[i] + (bandW[i] - size.get(n).w) / 2), y, w: size.get(n).w, h: size.get(n).h, band: i });
      if (b.pivot) {
        const p = b.nodes.indexOf(b.pivot);
        const c = inputsCenter(b.pivot, b.nodes);
        const ph = size.get(b.pivot).h;
        put(b.pivot, (c === null ? 0 : c) - ph / 2);
        let top = rects.get(b.pivot).y;
        for (let k = p - 1; k >= 0; k--) {
          top -= FOLD_GAP + size.get(b.nodes[k]).h;
          put(b.nodes[k], top);
        }
        let bottom = rects.get(b.pivot).y + ph;
        for (let k = p + 1; k < b.nodes.length; k++) {
          put(b.nodes[k], bottom + FOLD_GAP);
          bottom += FOLD_GAP + size.get(b.nodes[k]).h;
        }
        return;
      }
      const wanted = b.nodes.map((n) => inputsCenter(n, []));
      if (wanted.every((c) => c === null)) {
        // No inputs placed yet (sources): a stack centred on the middle line.
        const height = b.nodes.reduce((a, n) => a + size.get(n).h, 0) + STACK_GAP * (b.nodes.length - 1);
        let top = -height / 2;
        for (const n of b.nodes) {
          put(n, top);
          top += size.get(n).h + STACK_GAP;
        }
        return;
      }
      // Each box level with its inputs, pushed down where it would touch the one above, then
      // the whole band moved back up by half the push so it stays balanced.
      let prevBottom = -Infinity;
      let pushed = 0;
      b.nodes.forEach((n, k) => {
        const h = size.get(n).h;
        const want = (wanted[k] === null ? 0 : wanted[k]) - h / 2;
        const top = Math.max(want, prevBottom + STACK_GAP);
        pushed += top - want;
        put(n, top);
        prevBottom = top + h;
      });
      const back = pushed / b.nodes.length / 2;
      if (back > 0) for (const n of b.nodes) rects.get(n).y -= back;
    });

    // The dead-letter topic: centred, below the boxes above it.
    if (topo.deadTopic && size.has(topo.deadTopic.name)) {
      const { w, h } = size.get(topo.deadTopic.name);
      const dx = Math.round((width - w) / 2);
      let below = -Infinity;
      for (const r of rects.values()) if (r.x < dx + w + MIN_GAP / 2 && r.x + r.w > dx - MIN_GAP / 2) below = Math.max(below, r.y + r.h);
      if (below === -Infinity) below = Math.max(...[...rects.values()].map((r) => r.y + r.h));
      rects.set(topo.deadTopic.name, { x: dx, y: below + DEAD_GAP, w, h, band: -1 });
    }

    const minTop = Math.min(...[...rects.values()].map((r) => r.y));
    for (const r of rects.values()) r.y = Math.round(r.y - minTop);
    return { rects, bandX, bandW, gap, width };
  }

  let wide = null; // the last wide layout

  /**
   * Lay out the wide diagram and route its edges: {edge → path d}. When a dead-letter edge
   * cannot reach the dead-letter topic without crossing a box, the topic moves below them all.
   */
  function placeWide() {
    wide = wideLayout();
    let routes = routeWide();
    const dead = topo.deadTopic && wide.rects.get(topo.deadTopic.name);
    if (dead && [...routes.values()].some((r) => r.n > 0)) {
      const others = [...wide.rects].filter(([n]) => n !== topo.deadTopic.name).map(([, r]) => r.y + r.h);
      dead.y = Math.max(...others) + DEAD_GAP;
      routes = routeWide();
    }
    wide.paths = new Map([...routes].map(([edge, r]) => [edge, r.d]));
    const diagram = document.getElementById("diagram");
    const width = `${wide.width}px`;
    if (diagram.style.width !== width) diagram.style.width = width;
    for (const [name, r] of wide.rects) {
      const node = nodes.get(name);
      const left = `${r.x}px`;
      const top = `${r.y}px`;
      if (node.style.left !== left) node.style.left = left;
      if (node.style.top !== top) node.style.top = top;
    }
  }

  function routeWide() {
    if (!probe) {
      probe = svg("path", { visibility: "hidden" });
      document.querySelector("#diagram .diagram__edges").append(probe);
    }
    return new Map(edgePaths.map(({ edge }) => [edge, widePath(edge)]));
  }

  // Wide edges. A rect r: {x, y, w, h}.
  const cx = (r) => r.x + r.w / 2;
  const cy = (r) => r.y + r.h / 2;
  const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));

  let probe = null; // an invisible path, to measure candidate routes

  /** How many points along path `d` fall inside a box other than those named in `except`. */
  function hits(d, except) {
    if (!probe) return 0;
    probe.setAttribute("d", d);
    const length = probe.getTotalLength();
    let n = 0;
    for (let t = 0; t <= length; t += 6) {
      const p = probe.getPointAtLength(t);
      for (const [name, r] of wide.rects) {
        if (except.includes(name)) continue;
        if (p.x > r.x - 3 && p.x < r.x + r.w + 3 && p.y > r.y - 3 && p.y < r.y + r.h + 3) n++;
      }
    }
    return n;
  }

  /** The first candidate route that misses every other box, else the one that hits fewest. */
  function pick(candidates, except) {
    let best = null;
    for (const d of candidates) {
      if (!d) continue;
      const n = hits(d, except);
      if (n === 0) return { d, n };
      if (!best || n < best.n) best = { d, n };
    }
    return best || { d: "", n: 0 };
  }

  /** A smooth curve leaving (x1,y1) and reaching (x2,y2) horizontally. */
  const hCurve = (x1, y1, x2, y2) => {
    const dx = (x2 - x1) / 2;
    return `C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`;
  };

  /** A smooth curve leaving (x1,y1) and reaching (x2,y2) vertically. */
  const vCurve = (x1, y1, x2, y2) => {
    const dy = (y2 - y1) / 2;
    return `C${x1},${y1 + dy} ${x2},${y2 - dy} ${x2},${y2}`;
  };

  /**
   * From (x1,y1) level to a vertical run at gapX, down or up it, then level to (x2,y2) — or,
   * when the run ends above or below the target `into`, straight into its top or bottom.
   */
  function railPath(x1, y1, gapX, x2, y2, into) {
    const r = 8;
    const s1 = gapX > x1 ? 1 : -1;
    if (into && gapX > into.x + 10 && gapX < into.x + into.w - 10) {
      const down = into.y > y1;
      const end = down ? into.y - 2 : into.y + into.h + 2;
      const dir = down ? 1 : -1;
      return `M${x1},${y1} H${gapX - s1 * r} Q${gapX},${y1} ${gapX},${y1 + dir * r} V${end}`;
    }
    const dir = y2 > y1 ? 1 : -1;
    const rr = Math.min(r, Math.abs(y2 - y1) / 2);
    const s2 = x2 > gapX ? 1 : -1;
    return [
      `M${x1},${y1}`,
      `H${gapX - s1 * rr}`,
      `Q${gapX},${y1} ${gapX},${y1 + dir * rr}`,
      `V${y2 - dir * rr}`,
      `Q${gapX},${y2} ${gapX + s2 * rr},${y2}`,
      `H${x2}`,
    ].join(" ");
  }

  function widePath(edge) {
    const a = wide.rects.get(edge.from);
    const b = wide.rects.get(edge.to);
    if (!a || !b) return { d: "", n: 0 };
    const except = [edge.from, edge.to];
    if (edge.dead) return deadPath(a, b, except);
    if (a.band === b.band) {
      // Folded band: straight up or down between neighbours.
      if (a.y < b.y) return { d: `M${cx(a)},${a.y + a.h} ${vCurve(cx(a), a.y + a.h, cx(b), b.y - 2)}`, n: 0 };
      return { d: `M${cx(a)},${a.y} ${vCurve(cx(a), a.y, cx(b), b.y + b.h + 2)}`, n: 0 };
    }
    const x1 = a.x + a.w;
    const y1 = cy(a);
    const x2 = b.x - 2;
    const y2 = cy(b);
    const plain = `M${x1},${y1} ${hCurve(x1, y1, x2, y2)}`;
    if (b.band <= a.band + 1) return { d: plain, n: 0 };
    // Skips bands: bend in the first gap and run level with the target, or run level with the
    // source and bend in the last gap, whichever misses the boxes in between.
    const firstGapEnd = wide.bandX[a.band + 1];
    const lastGapStart = wide.bandX[b.band - 1] + wide.bandW[b.band - 1];
    return pick(
      [
        `M${x1},${y1} ${hCurve(x1, y1, firstGapEnd, y2)} H${x2}`,
        `M${x1},${y1} H${lastGapStart} ${hCurve(lastGapStart, y1, x2, y2)}`,
        plain,
      ],
      except
    );
  }

  /** Dashed edge into the dead-letter topic `d` from stage `s`: {d, n} (n: boxes crossed). */
  function deadPath(s, d, except) {
    const candidates = [];
    // Down onto its top.
    if (s.y + s.h < d.y - 12) {
      const tx = clamp(cx(s), d.x + 18, d.x + d.w - 18);
      candidates.push(`M${cx(s)},${s.y + s.h} ${vCurve(cx(s), s.y + s.h, tx, d.y - 2)}`);
    }
    const right = cx(s) > cx(d); // the stage is right of the topic
    const sx = right ? s.x : s.x + s.w;
    const ex = right ? d.x + d.w + 2 : d.x - 2;
    // Level into its side, where their heights overlap.
    const lo = Math.max(s.y + 14, d.y + 14);
    const hi = Math.min(s.y + s.h - 14, d.y + d.h - 14);
    if (lo <= hi && (right ? s.x > d.x + d.w : s.x + s.w < d.x)) {
      const y = clamp(cy(s), lo, hi);
      candidates.push(`M${sx},${y} H${ex}`);
    }
    // Along the gap beside the stage's band (the side facing the topic first), then level
    // into the topic's side (or straight into its top).
    if (s.band >= 0) {
      const leftGap = wide.bandX[s.band] - wide.gap / 2;
      const rightGap = wide.bandX[s.band] + wide.bandW[s.band] + wide.gap / 2;
      const y1 = s.y + s.h - 16;
      const y2 = d.y + d.h - 18;
      for (const toLeft of right ? [true, false] : [false, true]) {
        const gapX = toLeft ? leftGap : rightGap;
        const endX = gapX > cx(d) ? d.x + d.w + 2 : d.x - 2;
        candidates.push(railPath(toLeft ? s.x : s.x + s.w, y1, gapX, endX, y2, d));
      }
    }
    return pick(candidates, except);
  }

  // ------------------------------------------------------------------ narrow (phone) layout

  /*
   * Below NARROW_MAX px of room the diagram is one column of full-width boxes read top to
   * bottom, arrows pointing down; an edge that skips boxes runs along a rail in the left
   * (dead letters) or right margin and enters its target from that side, rails of edges into
   * different targets side by side. Between NARROW_MAX and the diagram's width it scrolls
   * sideways in its own container, with a visible hint.
   */
  const NARROW_MAX = 760;
  const NARROW_GAP = 30; // vertical room for an arrow between two boxes
  const RAIL = 12; // distance of a rail from the boxes' side
  const LANE = 7; // distance between two rails on the same side

  let narrow = false;
  let narrowOrder = []; // node names, top to bottom
  let narrowRails = new Map(); // edge → {side, lane}

  /**
   * Narrow order: by column, nodes with fewer inputs first (so a chain stays together), each
   * sink right after its stage, the dead-letter topic last. Rails for the edges that skip boxes.
   */
  function planNarrow() {
    const live = topo.edges.filter((e) => !e.dead);
    const inputs = (n) => live.filter((e) => e.to === n).length;
    const sinkNames = new Set(topo.sinks.map((k) => k.name));
    const order = [];
    for (const col of columns()) {
      const rest = col.filter((n) => !sinkNames.has(n));
      rest.sort((a, b) => inputs(a) - inputs(b) || topo.order.indexOf(a) - topo.order.indexOf(b));
      for (const n of rest) {
        order.push(n);
        for (const e of live) if (e.from === n && sinkNames.has(e.to) && !order.includes(e.to)) order.push(e.to);
      }
      for (const n of col) if (!order.includes(n)) order.push(n);
    }
    if (topo.deadTopic) order.push(topo.deadTopic.name);
    narrowOrder = order;

    narrowRails = new Map();
    const lanes = { left: [], right: [] }; // side → [[{from, to, target}]] per lane
    for (const edge of topo.edges) {
      const i = order.indexOf(edge.from);
      const j = order.indexOf(edge.to);
      if (Math.abs(j - i) <= 1) continue;
      const side = edge.dead ? "left" : "right";
      const span = { lo: Math.min(i, j), hi: Math.max(i, j), to: edge.to };
      let lane = lanes[side].findIndex((spans) => spans.every((s) => s.to === span.to || s.hi <= span.lo || span.hi <= s.lo));
      if (lane === -1) lane = lanes[side].push([]) - 1;
      lanes[side][lane].push(span);
      narrowRails.set(edge, { side, lane: Math.min(lane, 2) });
    }
  }

  function diagramHost() {
    return document.getElementById("diagram").parentElement;
  }

  /** Switch between the wide (positioned) and narrow (one column) layouts as the room changes. */
  function chooseLayout() {
    const diagram = document.getElementById("diagram");
    const wantNarrow = diagramHost().clientWidth < NARROW_MAX;
    if (wantNarrow === narrow && diagram.dataset.layout) return;
    narrow = wantNarrow;
    diagram.dataset.layout = narrow ? "narrow" : "wide";
    diagram.classList.toggle("diagram--narrow", narrow);
    if (narrow) diagram.style.width = "";
  }

  /** Narrow: stack the boxes in order (their heights follow their content). */
  function stackNodes() {
    let y = 0;
    for (const name of narrowOrder) {
      const node = nodes.get(name);
      if (!node) continue;
      const top = `${y}px`;
      if (node.style.top !== top) node.style.top = top;
      if (node.style.left !== "") node.style.left = "";
      y += node.offsetHeight + NARROW_GAP;
    }
  }

  /** Show "scroll sideways" only while the diagram is wider than its container. */
  function updateScrollHint() {
    const host = diagramHost();
    const hint = document.getElementById("diagram-scroll-hint");
    if (!hint) return;
    const overflowing = !document.getElementById("diagram").hidden && host.scrollWidth > host.clientWidth + 1;
    if (hint.hidden === overflowing) hint.hidden = !overflowing;
    host.classList.toggle("is-overflowing", overflowing);
  }

  /** Grow the diagram to contain its lowest box (box heights depend on their content). */
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

  /** Narrow layout: straight down between neighbours, else along a margin rail. */
  function narrowPath(edge) {
    const plan = narrowRails.get(edge);
    if (!plan) {
      const [x1, y1] = anchor(edge.from, "bottom");
      const [x2, y2] = anchor(edge.to, y1 <= nodes.get(edge.to).offsetTop ? "top" : "bottom");
      return `M${x1},${y1} L${x2},${y2 - 2}`;
    }
    const rail = plan.side;
    const [x1, y1] = anchor(edge.from, rail);
    const [x2, y2] = anchor(edge.to, rail);
    const sign = rail === "left" ? -1 : 1;
    const railX = (rail === "left" ? Math.min(x1, x2) : Math.max(x1, x2)) + sign * (RAIL + plan.lane * LANE);
    const dir = y2 > y1 ? 1 : -1;
    const r = Math.min(8, Math.abs(y2 - y1) / 2);
    return [
      `M${x1},${y1}`,
      `H${railX - sign * r}`,
      `Q${railX},${y1} ${railX},${y1 + dir * r}`,
      `V${y2 - dir * r}`,
      `Q${railX},${y2} ${railX - sign * r},${y2}`,
      `H${x2 + sign * 2}`,
    ].join(" ");
  }

  /** Place the boxes and draw the arrows; recomputed whenever box heights may have changed. */
  function layoutEdges() {
    if (!topo) return;
    chooseLayout();
    if (narrow) stackNodes();
    else placeWide();
    fitHeight();
    for (const { edge, path } of edgePaths) {
      const d = narrow ? narrowPath(edge) : wide.paths.get(edge) || "";
      if (path.getAttribute("d") !== d) path.setAttribute("d", d);
    }
    updateScrollHint();
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
      case "postgres":
        return [
          summary(d, [["transactions", "transactions"], ["ignored", "rows ignored"]])[0],
          d.position ? `Slot ${d.slot} at ${d.position}` : "",
        ].filter(Boolean);
      case "snowplow":
        return d.topic ? [`Topic ${d.topic}`] : [];
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
      case "webhooks": {
        // Summed over the endpoints; none configured says so.
        const endpoints = d.endpoints && typeof d.endpoints === "object" ? Object.values(d.endpoints) : [];
        if (!endpoints.length) return ["No endpoints ([[webhooks.endpoint]])"];
        const total = (key) => endpoints.reduce((n, e) => n + (isNum(e[key]) ? e[key] : 0), 0);
        const off = endpoints.filter((e) => e.disabled === true).length;
        const line = summary({ delivered: total("delivered"), pending: total("pending"), dead: total("dead_letters") },
          [["delivered", "delivered"], ["pending", "pending"], ["dead", "dead letters"]]);
        return off ? [...line, `${fmtInt(off)} disabled (410)`] : line;
      }
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
    // The change data capture and enriched-topic sources run only where they are configured.
    const absent = {
      postgres: "Not configured ([postgres] in the configuration)",
      snowplow: "Distributed mode, with [snowplow] enriched_topic",
    }[name] || "Not part of this process";
    CP.replaceChildren(node.querySelector(".node__extra"), stage ? stageExtra(name, stage) : [absent]);
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
      const dead = topics[deadName()];
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

  // An epoch-milliseconds value (1973 … 5138): event times and watermarks.
  const isEpochMs = (v) => isNum(v) && v > 1e11 && v < 1e14;
  // Detail keys that hold event times: "watermark_ms", "event_time_ms", "partition_watermarks", …
  const isTimeKey = (key) => /(_ms|_at|time|watermarks?)$/i.test(key) || /watermark|event_time/i.test(key);

  /** A date-time in the chosen zone, the raw value in its tooltip. */
  function timeValue(ms) {
    return el("time", { dateTime: new Date(ms).toISOString(), title: `${ms} ms since 1970 (UTC)`, text: fmtDateTime(ms) });
  }

  /** Details object → list of "key value" chips (nested values summarised, times as date-times). */
  function detailsList(details) {
    const items = Object.entries(details || {}).map(([key, value]) => {
      const label = el("span", { text: `${key.replace(/_/g, " ")} ` });
      // "watermark_ms" → "watermark": a time shown as a date-time has no unit.
      const timeLabel = () => el("span", { text: `${key.replace(/_ms$/, "").replace(/_/g, " ")} ` });
      if (isEpochMs(value) && isTimeKey(key)) return el("li", { className: "details-list__time" }, [timeLabel(), el("b", {}, [timeValue(value)])]);
      if (value && typeof value === "object" && !Array.isArray(value)) {
        const entries = Object.entries(value);
        if (entries.length && isTimeKey(key) && entries.every(([, v]) => isEpochMs(v) || v === null)) {
          // Per-partition times: "0: 2026-12-02 08:15:02 UTC+1, 1: …".
          const parts = [];
          entries.forEach(([k, v], i) => {
            if (i > 0) parts.push(", ");
            parts.push(el("span", { className: "details-list__entry" }, [`${k}: `, v === null ? "—" : timeValue(v)]));
          });
          return el("li", { className: "details-list__time" }, [timeLabel(), el("b", {}, parts)]);
        }
      }
      let text;
      if (isNum(value)) text = fmtInt(value);
      else if (Array.isArray(value)) {
        text = value.map((v) => (v && typeof v === "object" ? [v.name, v.version].filter(Boolean).join("@") : String(v))).join(", ") || "none";
      } else if (value && typeof value === "object") {
        const entries = Object.entries(value);
        text = entries.length ? entries.map(([k, v]) => `${k}: ${isNum(v) ? fmtInt(v) : v}`).join(", ") : "none";
      } else text = value === null || value === undefined ? "—" : String(value);
      return el("li", {}, [label, el("b", { text })]);
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
          el("td", { className: "cell-head", dataset: { label: "Stage" } }, [el("b", { text: name })]),
          el("td", { dataset: { label: "Status" } }, [
            el("span", { className: "node__status" }, [el("span", { className: `status-dot status-${status.key}`, attrs: { "aria-hidden": "true" } }), status.label]),
          ]),
          el("td", { className: "num", dataset: { label: "Events/s" }, text: fmtRate(stage.events_per_second) }),
          el("td", { className: "num", dataset: { label: "Events" }, text: fmtInt(stage.events) }),
          el("td", { className: "num", dataset: { label: "Lag" }, text: fmtInt(stage.lag) }),
          el("td", { className: "num", dataset: { label: "Errors" }, style: bad(stage.errors), text: fmtInt(stage.errors) }),
          el("td", { className: "num", dataset: { label: "Dead letters" }, style: bad(stage.dead_letters), text: fmtInt(stage.dead_letters) }),
          el("td", { className: "cell-wide", dataset: { label: "Details" } }, [detailsList(stage.details)]),
        ]);
      })
    );
  }

  /** Row order: the topology's stage order; any other stage the server reports follows. */
  function rank(name) {
    const order = topo ? topo.stages.map((s) => s.name) : [];
    const i = order.indexOf(name);
    return i === -1 ? order.length : i;
  }

  function renderTopicTable(topics) {
    const tbody = document.querySelector("#topic-table tbody");
    const order = topo ? topo.topics.map((t) => t.name) : [];
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
          el("td", { className: "mono cell-head", dataset: { label: "Topic" }, text: name }),
          el("td", { className: "num", dataset: { label: "Partitions" }, text: fmtInt(t.partitions) }),
          el("td", { className: "num", dataset: { label: "Records" }, text: fmtInt(t.records) }),
          el("td", { className: "mono muted cell-wide", dataset: { label: "End offsets" }, text: offsets.length ? offsets.map((o) => fmtInt(o)).join(" · ") : "—" }),
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

    if (topo) {
      for (const spec of topo.stages) renderStageNode(spec.name, stages[spec.name]);
      for (const spec of topo.topics) renderTopicNode(spec.name, topics[spec.name]);
      renderEdges(stages, topics);
      layoutEdges();
    }
    renderStageTable(stages);
    renderTopicTable(topics);

    const dead = topics[deadName()];
    lastDeadLetters = dead && isNum(dead.records) ? dead.records : null;
    document.body.dataset.statsCount = String(Number(document.body.dataset.statsCount || 0) + 1);
  }

  let lastStats = null;

  // ------------------------------------------------------------------ loading the topology

  const RETRY_MS = [2000, 4000, 8000, 15000];
  let attempts = 0;
  let retryTimer = null;

  /** The diagram card's message while the topology is loading or could not be loaded. */
  function showDiagramState(kind, text, retry) {
    const state = document.getElementById("diagram-state");
    const diagram = document.getElementById("diagram");
    diagram.hidden = true;
    state.hidden = false;
    state.dataset.state = kind;
    state.classList.toggle("is-error", kind === "error");
    CP.replaceChildren(state, [
      el("span", { className: "diagram-state__text", text }),
      retry ? el("button", { type: "button", className: "btn diagram-state__retry", dataset: { testid: "diagram-retry" }, text: "Retry now", on: { click: loadTopology } }) : null,
    ]);
    updateScrollHint();
  }

  async function loadTopology() {
    clearTimeout(retryTimer);
    showDiagramState("loading", attempts ? "Loading the pipeline's topology again…" : "Loading the pipeline's topology…", false);
    try {
      topo = readTopology(await CP.fetchJSON("/api/topology", { timeoutMs: 5000 }));
    } catch (err) {
      const wait = RETRY_MS[Math.min(attempts, RETRY_MS.length - 1)];
      attempts++;
      const why = err && err.message ? ` (${err.message})` : "";
      showDiagramState("error", `Could not load the pipeline's topology${why}. Retrying in ${Math.round(wait / 1000)} s…`, true);
      retryTimer = setTimeout(loadTopology, wait);
      return;
    }
    const state = document.getElementById("diagram-state");
    state.hidden = true;
    document.getElementById("diagram").hidden = false;
    planNarrow();
    buildDiagram();
    if (lastStats) render(lastStats, null);
  }

  loadTopology();
  CP.onStats((stats, error) => {
    if (stats && !error) lastStats = stats;
    render(stats, error);
  });
  // Another time zone: draw the times again at once (no need to wait for the next poll).
  CP.onTimeZone(() => {
    if (lastStats) {
      renderStageTable(lastStats.stages && typeof lastStats.stages === "object" ? lastStats.stages : {});
    }
  });
  window.addEventListener("resize", layoutEdges);
})();
