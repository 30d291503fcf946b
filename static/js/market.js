/* Live market page: applies the /ws/markets/<id>/ feed (docs/realtime.md) to the ladder, trades, prices and chart.
 *
 * The page is rendered at the market's `seq` (data-seq); the script connects with ?since=<seq>, applies each `book`,
 * `trade` and `market` message whose seq is the next one, and on a gap or a dropped socket reconnects (exponential
 * backoff) from the last seq it applied. A `snapshot` (on connect without since, or reason since_too_old/resync)
 * replaces the whole state. Prices are handled in integer cents, so 1 - 0.45 is exactly 0.55. The page asks for
 * batched frames (?batch_ms=100: a JSON array of the messages of up to 100 ms), so a busy market's page gets at most
 * ten frames a second from one subscription per server process (docs/realtime.md, "Batched frames").
 */
(function () {
  "use strict";

  var root = document.getElementById("market-page");
  if (!root) return;
  var $ = function (id) { return document.getElementById(id); };
  var initial = JSON.parse($("market-state").textContent);
  var series = JSON.parse($("price-series").textContent);
  var MAX_TRADES = 50;
  var PING_MS = 25000;
  var BACKOFF_MIN = 500;
  var BATCH_MS = 100;
  var BACKOFF_MAX = 10000;

  // ---- state ---------------------------------------------------------------------------------------------------
  function cents(price) { return Math.round(parseFloat(price) * 100); }
  function fmt(c) { return (c / 100).toFixed(2); }
  // The source's probability (four places) as a percentage, unrounded: its line is drawn finer than the trades'.
  function pct(price) { return parseFloat(price) * 100; }
  function levelsMap(levels) {
    var map = new Map();
    (levels || []).forEach(function (l) { if (l.size > 0) map.set(cents(l.price), Number(l.size)); });
    return map;
  }

  var state = {
    seq: Number(initial.seq),
    status: initial.market.status,
    outcome: initial.market.outcome,
    last: initial.market.yes_price == null ? null : cents(initial.market.yes_price),
    volume: Number(initial.market.volume) || 0,
    yes: levelsMap(initial.book.yes), // YES bids: YES price cents -> size
    no: levelsMap(initial.book.no), // NO bids: NO price cents -> size (a YES ask at 100 - cents)
    points: series.points.map(function (p) { return [p[0], cents(p[1])]; }),
    reference: initial.reference_price == null ? null : pct(initial.reference_price),
    // The source's probability over time (a mirrored market's snapshots), [epoch ms, percent].
    refPoints: (initial.reference || []).map(function (p) { return [p[0], pct(p[1])]; }),
  };
  var knownTrades = new Set(initial.trades.map(function (t) { return String(t.id); }));

  // ---- rendering -----------------------------------------------------------------------------------------------
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "className") node.className = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { node.appendChild(c); });
    return node;
  }

  function setText(id, text) { var node = $(id); if (node) node.textContent = text; }

  // Sizes last drawn per side (asks keyed by YES ask price), to flash the levels that change.
  var previousSizes = {
    YES: new Map(state.yes),
    NO: new Map(Array.from(state.no.entries()).map(function (e) { return [100 - e[0], e[1]]; })),
  };

  function renderLadder() {
    var bids = Array.from(state.yes.entries()).sort(function (a, b) { return b[0] - a[0]; });
    var asks = Array.from(state.no.entries())
      .map(function (e) { return [100 - e[0], e[1]]; })
      .sort(function (a, b) { return a[0] - b[0]; });
    var sum = function (rows) { return rows.reduce(function (s, r) { return s + r[1]; }, 0); };
    var deepest = Math.max(sum(bids), sum(asks), 1);
    [["YES", bids, $("ladder-bids"), "No bids"], ["NO", asks, $("ladder-asks"), "No asks"]].forEach(function (part) {
      var side = part[0], rows = part[1], box = part[2];
      var frag = document.createDocumentFragment();
      var total = 0;
      var seen = new Map();
      rows.forEach(function (r) {
        total += r[1];
        // The same markup as the server renders (templates/pages/market_detail.html): the depth bar is a <meter>.
        var row = el("div", { className: "level", "data-side": side, "data-price": fmt(r[0]) }, [
          el("span", { className: "price", text: fmt(r[0]) }),
          el("span", { className: "size", text: String(r[1]) }),
          el("span", { className: "total", text: String(total) }),
          el("meter", {
            className: "depth", min: "0", max: "100", value: ((100 * total) / deepest).toFixed(1), "aria-hidden": "true",
          }),
        ]);
        if (previousSizes[side].get(r[0]) !== r[1]) row.classList.add("flash");
        seen.set(r[0], r[1]);
        frag.appendChild(row);
      });
      if (!rows.length) frag.appendChild(el("div", { className: "level-empty", text: part[3] }));
      previousSizes[side] = seen;
      box.replaceChildren(frag);
    });
    var bestBid = bids.length ? bids[0][0] : null;
    var bestAsk = asks.length ? asks[0][0] : null;
    setText("best-bid", bestBid == null ? "—" : fmt(bestBid));
    setText("best-ask", bestAsk == null ? "—" : fmt(bestAsk));
    var spread = bestBid != null && bestAsk != null ? fmt(bestAsk - bestBid) : "—";
    setText("spread", spread);
    setText("ladder-spread", spread);
  }

  function renderPrices() {
    var last = state.last;
    setText("last-price", last == null ? "—" : fmt(last));
    setText("ladder-last", last == null ? "—" : fmt(last));
    setText("hero-yes", last == null ? "—" : fmt(last));
    setText("hero-no", last == null ? "—" : fmt(100 - last));
    setText("yes-percent", last == null ? "—" : last + "%");
    setText("yes-percent-label", last == null ? "no trades yet" : "chance");
    setText("volume", String(state.volume));
  }

  function renderMarket() {
    root.dataset.status = state.status || "";
    root.dataset.outcome = state.outcome || "";
    var badge = $("market-status");
    if (badge && state.status) {
      badge.className = "badge badge-" + state.status;
      badge.textContent = state.status.charAt(0).toUpperCase() + state.status.slice(1);
    }
    var banner = $("market-outcome");
    if (banner && state.status === "resolved" && state.outcome) {
      banner.hidden = false;
      banner.className = "outcome-banner outcome-" + state.outcome;
      setText("outcome-value", state.outcome);
      setText(
        "outcome-note",
        state.outcome === "VOID" ? "Voided: every contract paid 0.50." : "Each " + state.outcome + " contract paid 1.00."
      );
    }
  }

  // Who resolved or proposed a resolution, as the page says it (templates/pages/_resolver.html).
  function describeResolver(r) {
    var who = r.resolver || {};
    if (who.kind === "oracle") return "oracle " + who.name;
    if (who.kind === "source") return who.name + ", the source";
    return "operator " + who.name;
  }

  // A market message's resolution (resolution_proposed, resolution_disputed, resolved): who, and how far along.
  function renderResolution(r) {
    var pending = $("resolution-status");
    if (r.status === "final") {
      if (pending) pending.hidden = true;
      var who = r.resolver || {};
      var settled = (r.evidence || {}).settled_at;
      var text = who.kind === "source"
        ? who.name + " settled it " + String(r.outcome).toLowerCase() +
          (settled ? " on " + new Date(settled).toLocaleDateString() : "")
        : "Resolved by " + describeResolver(r);
      setText("resolved-by", text + (r.decided_by ? ", confirmed by operator " + r.decided_by : "") + ".");
      return;
    }
    if (!pending) return;
    var text = "Proposed " + r.outcome + " by " + describeResolver(r) + ". ";
    if (r.status === "disputed") {
      text += "Disputed by " + r.disputes + " agent" + (r.disputes === 1 ? "" : "s") +
        ": an operator decides; nothing is paid until then.";
    } else if (!r.dispute_until) {
      text += "An operator decides; nothing is paid until then.";
    } else {
      text += "Final, and paid, at " + new Date(r.dispute_until).toLocaleString() + " unless an agent disputes it.";
    }
    pending.textContent = text;
    pending.hidden = false;
  }

  var timeFormat = { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" };

  function tradeRow(t, fresh) {
    var when = new Date(t.created_at);
    var side = t.taker_side === "YES" ? "YES" : "NO";
    var row = el("tr", { className: "trade-row" + (fresh ? " new" : ""), "data-trade-id": String(t.id) }, [
      el("td", {}, [
        el("time", { datetime: t.created_at, "data-fmt": "time", text: when.toLocaleTimeString(undefined, timeFormat) }),
      ]),
      el("td", { className: "num side-" + side, text: fmt(cents(t.price)) }),
      el("td", { className: "num", text: String(t.size) }),
      el("td", { className: "side-" + side, text: side }),
    ]);
    if (t.seq != null) row.setAttribute("data-seq", String(t.seq));
    return row;
  }

  function trimTrades(body) {
    var rows = body.querySelectorAll("tr.trade-row");
    for (var i = MAX_TRADES; i < rows.length; i++) rows[i].remove();
  }

  function prependTrade(t) {
    var body = $("trades");
    var empty = body.querySelector("tr.no-trades");
    if (empty) empty.remove();
    body.insertBefore(tradeRow(t, true), body.firstChild);
    trimTrades(body);
  }

  function replaceTrades(trades) {
    var body = $("trades");
    var frag = document.createDocumentFragment();
    trades.slice(0, MAX_TRADES).forEach(function (t) { frag.appendChild(tradeRow(t, !knownTrades.has(String(t.id)))); });
    if (!trades.length) {
      frag.appendChild(el("tr", { className: "no-trades" }, [el("td", { colspan: "4", className: "empty", text: "No trades yet." })]));
    }
    body.replaceChildren(frag);
    knownTrades = new Set(trades.map(function (t) { return String(t.id); }));
  }

  // ---- chart ---------------------------------------------------------------------------------------------------
  var chartBox = $("price-chart");
  var axis = "time";
  var SVG = "http://www.w3.org/2000/svg";
  var layout = null;

  function svg(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    return node;
  }

  function timeLabel(ms, span) {
    var d = new Date(ms);
    if (span < 36e5) return d.toLocaleTimeString(undefined, timeFormat);
    if (span < 2 * 864e5) return d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
    return d.toLocaleDateString(undefined, { month: "short", day: "numeric" });
  }

  function drawChart() {
    var old = chartBox.querySelector("svg");
    if (old) old.remove();
    var pts = state.points;
    // The source's line is drawn against time; on the trades axis only its latest value is (a flat line).
    var refs = axis === "time" ? state.refPoints : [];
    $("chart-empty").hidden = pts.length > 0 || refs.length > 0;
    if (!pts.length && !refs.length) { layout = null; return; }
    var W = chartBox.clientWidth || 600, H = chartBox.clientHeight || 280;
    var pad = { l: 8, r: 44, t: 10, b: 24 };
    var values = pts.map(function (p) { return p[1]; }).concat(refs.map(function (p) { return p[1]; }));
    if (!refs.length && state.reference != null) values.push(state.reference);
    var lo = Math.min.apply(null, values), hi = Math.max.apply(null, values);
    lo = Math.max(0, Math.floor((lo - 5) / 10) * 10);
    hi = Math.min(100, Math.ceil((hi + 5) / 10) * 10);
    if (hi - lo < 10) { hi = Math.min(100, lo + 10); lo = hi - 10; }
    var xs, xAt = null, t0 = null, t1 = null;
    if (axis === "time") {
      var times = pts.map(function (p) { return p[0]; }).concat(refs.map(function (p) { return p[0]; }));
      t0 = Math.min.apply(null, times);
      t1 = Math.max.apply(null, times);
      var span = Math.max(t1 - t0, 1);
      xAt = function (t) { return pad.l + ((t - t0) / span) * (W - pad.l - pad.r); };
      xs = pts.map(function (p) { return xAt(p[0]); });
      if (pts.length === 1 && !refs.length) xs = [pad.l];
    } else {
      var n = Math.max(pts.length - 1, 1);
      xs = pts.map(function (_, i) { return pad.l + (i / n) * (W - pad.l - pad.r); });
    }
    var y = function (c) { return pad.t + (1 - (c - lo) / (hi - lo)) * (H - pad.t - pad.b); };
    var canvas = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "YES price history" });
    var defs = svg("defs");
    var grad = svg("linearGradient", { id: "chart-fill", x1: "0", y1: "0", x2: "0", y2: "1" });
    grad.appendChild(svg("stop", { offset: "0%", "stop-color": "currentColor", "stop-opacity": "0.22" }));
    grad.appendChild(svg("stop", { offset: "100%", "stop-color": "currentColor", "stop-opacity": "0" }));
    defs.appendChild(grad);
    canvas.appendChild(defs);
    canvas.style.color = getComputedStyle(document.documentElement).getPropertyValue("--accent");

    var grid = svg("g", { class: "grid" });
    var step = hi - lo > 50 ? 25 : hi - lo > 20 ? 10 : 5;
    for (var g = Math.ceil(lo / step) * step; g <= hi; g += step) {
      grid.appendChild(svg("line", { x1: pad.l, x2: W - pad.r, y1: y(g), y2: y(g) }));
      var label = svg("text", { x: W - pad.r + 6, y: y(g) + 4 });
      label.textContent = g + "%";
      grid.appendChild(label);
    }
    canvas.appendChild(grid);

    // The source's probability: a dashed step line over time, or flat at its latest value.
    if (refs.length) {
      var r = "M" + xAt(refs[0][0]) + "," + y(refs[0][1]);
      for (var k = 1; k < refs.length; k++) r += "H" + xAt(refs[k][0]) + "V" + y(refs[k][1]);
      r += "H" + (W - pad.r);
      canvas.appendChild(svg("path", { class: "ref", d: r, fill: "none" }));
    } else if (state.reference != null) {
      canvas.appendChild(svg("line", { class: "ref", x1: pad.l, x2: W - pad.r, y1: y(state.reference), y2: y(state.reference) }));
    }
    var right = W - pad.r;
    if (pts.length) {
      // A step line: the price holds until the next trade.
      var d = "M" + xs[0] + "," + y(pts[0][1]);
      for (var i = 1; i < pts.length; i++) d += "H" + xs[i] + "V" + y(pts[i][1]);
      right = pts.length === 1 && !refs.length ? W - pad.r : xs[xs.length - 1];
      if (pts.length === 1 && !refs.length) d += "H" + right;
      canvas.appendChild(svg("path", { class: "area", d: d + "V" + (H - pad.b) + "H" + xs[0] + "Z" }));
      canvas.appendChild(svg("path", { class: "line", d: d }));
      canvas.appendChild(svg("circle", { class: "dot", cx: right, cy: y(pts[pts.length - 1][1]), r: 4 }));
    }

    var ax = svg("g", { class: "axis" });
    var labels = axis === "time"
      ? [[pad.l, timeLabel(t0, t1 - t0), "start"], [W - pad.r, timeLabel(t1, t1 - t0), "end"]]
      : [[pad.l, "trade 1", "start"], [right, "trade " + pts.length, "end"]];
    if (axis === "time" ? t0 === t1 : pts.length === 1) labels = [labels[0]];
    labels.forEach(function (l) {
      var t = svg("text", { x: l[0], y: H - 6, "text-anchor": l[2] });
      t.textContent = l[1];
      ax.appendChild(t);
    });
    canvas.appendChild(ax);
    var cross = svg("line", { class: "cross", y1: pad.t, y2: H - pad.b, visibility: "hidden" });
    var hoverDot = svg("circle", { class: "dot", r: 4, visibility: "hidden" });
    canvas.appendChild(cross);
    canvas.appendChild(hoverDot);
    chartBox.insertBefore(canvas, chartBox.firstChild);
    layout = { xs: xs, y: y, cross: cross, dot: hoverDot, W: W };
  }

  function hover(ev) {
    if (!layout || !layout.xs.length) return; // only the source's line: nothing of ours to point at
    var rect = chartBox.getBoundingClientRect();
    var x = ((ev.clientX - rect.left) / rect.width) * layout.W;
    var xs = layout.xs, best = 0;
    for (var i = 1; i < xs.length; i++) if (Math.abs(xs[i] - x) < Math.abs(xs[best] - x)) best = i;
    var p = state.points[best];
    layout.cross.setAttribute("x1", xs[best]);
    layout.cross.setAttribute("x2", xs[best]);
    layout.cross.setAttribute("visibility", "visible");
    layout.dot.setAttribute("cx", xs[best]);
    layout.dot.setAttribute("cy", layout.y(p[1]));
    layout.dot.setAttribute("visibility", "visible");
    var tip = $("chart-tip");
    tip.textContent = fmt(p[1]) + " · " + new Date(p[0]).toLocaleString();
    tip.style.left = (xs[best] / layout.W) * rect.width + "px";
    tip.style.top = (layout.y(p[1]) / (chartBox.clientHeight || 280)) * rect.height + "px";
    tip.style.display = "block";
  }

  function unhover() {
    if (!layout) return;
    layout.cross.setAttribute("visibility", "hidden");
    layout.dot.setAttribute("visibility", "hidden");
    $("chart-tip").style.display = "none";
  }

  chartBox.addEventListener("mousemove", hover);
  chartBox.addEventListener("mouseleave", unhover);
  document.querySelectorAll("[data-axis]").forEach(function (button) {
    button.addEventListener("click", function () {
      axis = button.dataset.axis;
      document.querySelectorAll("[data-axis]").forEach(function (b) { b.setAttribute("aria-pressed", String(b === button)); });
      drawChart();
    });
  });
  var resizeTimer;
  window.addEventListener("resize", function () { clearTimeout(resizeTimer); resizeTimer = setTimeout(drawChart, 120); });

  var chartQueued = false;
  function queueChart() {
    if (chartQueued) return;
    chartQueued = true;
    requestAnimationFrame(function () { chartQueued = false; drawChart(); });
  }

  function addPoint(t) {
    var at = Date.parse(t.created_at);
    var last = state.points[state.points.length - 1];
    if (last && at < last[0]) at = last[0]; // never draw backwards if clocks disagree
    state.points.push([at, cents(t.price)]);
    if (state.points.length > 2000) state.points.splice(0, state.points.length - 2000);
  }

  // ---- applying messages ---------------------------------------------------------------------------------------
  function applyMarket(m) {
    if (!m) return;
    if (m.status) state.status = m.status;
    if ("outcome" in m) state.outcome = m.outcome;
    var price = m.yes_price !== undefined ? m.yes_price : m.last_price;
    if (price !== undefined) state.last = price == null ? null : cents(price);
    if (m.volume != null) state.volume = Number(m.volume);
  }

  function applyReference(snapshot) {
    var point = [Date.parse(snapshot.taken_at), pct(snapshot.yes_price)];
    state.reference = point[1];
    state.refPoints.push(point);
    if (state.refPoints.length > 2000) state.refPoints.splice(0, state.refPoints.length - 2000);
    setText("reference-price", snapshot.yes_price);
  }

  function applyBook(levels) {
    (levels || []).forEach(function (l) {
      var map = l.side === "NO" ? state.no : state.yes;
      var c = cents(l.price);
      if (Number(l.size) > 0) map.set(c, Number(l.size));
      else map.delete(c);
    });
  }

  function applyTrade(t) {
    state.last = cents(t.price);
    state.volume += Number(t.size);
    addPoint(t);
    if (!knownTrades.has(String(t.id))) {
      knownTrades.add(String(t.id));
      prependTrade(t);
    }
  }

  function applySnapshot(msg) {
    state.seq = Number(msg.seq);
    applyMarket(msg.market);
    if (msg.book) {
      state.yes = levelsMap(msg.book.yes);
      state.no = levelsMap(msg.book.no);
    }
    if (msg.trades) {
      // Extend the chart with the snapshot's trades newer than its last point (missed while away).
      var lastAt = state.points.length ? state.points[state.points.length - 1][0] : -Infinity;
      msg.trades.slice().reverse().forEach(function (t) {
        if (!knownTrades.has(String(t.id)) && Date.parse(t.created_at) >= lastAt) addPoint(t);
      });
      replaceTrades(msg.trades);
    }
    root.dataset.seq = String(state.seq);
    renderLadder();
    renderPrices();
    renderMarket();
    queueChart();
  }

  function handle(msg) {
    switch (msg.type) {
      case "snapshot":
        applySnapshot(msg);
        healthy();
        return;
      case "error":
        if (msg.code === "buffer_overflow") resync(); // the server dropped us; resume from our last seq
        return;
      default:
        // book, trade, market, reference, and any later kind: whatever carries a seq takes its place in the order.
        if (typeof msg.seq !== "number") return; // pong
    }
    var seq = Number(msg.seq);
    if (seq <= state.seq) return; // already applied (the page or a replay overlap)
    if (seq !== state.seq + 1) {
      resync(); // a gap: something was missed; reconnect with since=<last applied seq>
      return;
    }
    if (msg.type === "book") {
      applyBook(msg.levels);
      renderLadder();
    } else if (msg.type === "trade") {
      applyTrade(msg.trade);
      renderPrices();
      queueChart();
    } else if (msg.type === "market") {
      applyMarket(msg.market);
      renderPrices();
      renderMarket();
      if (msg.resolution) renderResolution(msg.resolution);
    } else if (msg.type === "reference" && msg.reference && msg.reference.yes_price != null) {
      applyReference(msg.reference);
      queueChart();
    }
    state.seq = seq;
    root.dataset.seq = String(seq);
    healthy();
  }

  // ---- the socket ----------------------------------------------------------------------------------------------
  var ws = null;
  var backoff = BACKOFF_MIN;
  var pingTimer = null;
  var reconnectTimer = null;
  var statusNode = $("ws-status");

  function setStatus(stateName, text) {
    statusNode.dataset.state = stateName;
    statusNode.textContent = text;
    statusNode.title = "Live feed: " + text + " (seq " + state.seq + ")";
  }

  function healthy() { backoff = BACKOFF_MIN; }

  function url() {
    var proto = location.protocol === "https:" ? "wss:" : "ws:";
    return proto + "//" + location.host + "/ws/markets/" + root.dataset.marketId + "/?batch_ms=" + BATCH_MS + "&since=" + state.seq;
  }

  function stopPing() { clearInterval(pingTimer); pingTimer = null; }

  function connect() {
    clearTimeout(reconnectTimer);
    setStatus("connecting", "connecting…");
    var sock;
    try {
      sock = new WebSocket(url());
    } catch (e) {
      schedule();
      return;
    }
    ws = sock;
    sock.onopen = function () {
      if (sock !== ws) return;
      setStatus("live", "live");
      stopPing();
      pingTimer = setInterval(function () {
        if (sock.readyState === WebSocket.OPEN) sock.send(JSON.stringify({ type: "ping" }));
      }, PING_MS);
    };
    sock.onmessage = function (ev) {
      if (sock !== ws) return;
      var msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      if (!Array.isArray(msg)) msg = [msg]; // a batch, or one message (a snapshot, an error, a pong)
      // A gap mid-batch resyncs (a new socket): the rest of this batch is then not ours to apply.
      for (var i = 0; i < msg.length && sock === ws; i++) handle(msg[i]);
    };
    sock.onclose = function () {
      if (sock !== ws) return;
      ws = null;
      stopPing();
      schedule();
    };
  }

  function schedule() {
    clearTimeout(reconnectTimer);
    var delay = Math.round(backoff * (0.75 + Math.random() * 0.5));
    backoff = Math.min(backoff * 2, BACKOFF_MAX);
    setStatus(navigator.onLine === false ? "offline" : "reconnecting", "reconnecting in " + Math.max(1, Math.round(delay / 1000)) + " s");
    reconnectTimer = setTimeout(connect, delay);
  }

  function resync() {
    var sock = ws;
    ws = null;
    stopPing();
    if (sock) {
      sock.onclose = null;
      try { sock.close(); } catch (e) { /* already closing */ }
    }
    schedule();
  }

  window.addEventListener("online", function () { if (!ws) { backoff = BACKOFF_MIN; connect(); } });

  drawChart();
  connect();
})();
