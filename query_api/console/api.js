// The console's one client for the three services: query API (this origin), command API
// and identity provider (addresses from /console-config). Plain ES2020, no dependencies.
"use strict";

const Api = (() => {
  let config = null;
  const TOKEN = "scooters.console.token";
  const WHO = "scooters.console.who";

  async function load() {
    if (config === null) {
      const answer = await fetch("/console-config");
      config = await answer.json();
    }
    return config;
  }

  // A refusal or failure as the console shows it: the problem's `code` and `detail`
  // (docs/operator-api.md), and when to try again (Retry-After, seconds) if the answer said.
  class Problem extends Error {
    constructor(status, body, retryAfter) {
      super(String((body && (body.detail || body.title)) || `HTTP ${status}`).slice(0, 1000));
      this.status = status;
      this.code = String((body && body.code) || `http_${status}`).slice(0, 100);
      this.body = body;
      this.retryAfter = retryAfter || null;
    }

    // whether the request may have taken effect: no answer, or an overloaded or failing
    // server (a 4xx refusal is definite: nothing was done)
    get ambiguous() {
      return this.status === 0 || this.status >= 500 || this.status === 408 || this.status === 429;
    }
  }

  async function call(base, method, path, body, headers) {
    const all = Object.assign({}, headers || {});
    const token = sessionStorage.getItem(TOKEN);
    if (token) all.authorization = `Bearer ${token}`;
    if (body !== undefined) all["content-type"] = "application/json";
    let answer;
    try {
      answer = await fetch(base + path, {
        method,
        headers: all,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new Problem(0, { code: "unreachable", detail: `${base} is unreachable` });
    }
    const text = await answer.text();
    let parsed = null;
    try { parsed = text ? JSON.parse(text) : null; } catch (err) { parsed = { detail: text.slice(0, 300) }; }
    if (!answer.ok) throw new Problem(answer.status, parsed, answer.headers.get("retry-after"));
    return parsed;
  }

  async function signIn(sub, roles) {
    const cfg = await load();
    try {
      const answer = await call(cfg.identity_url, "POST", "/auth/token", { sub, roles });
      sessionStorage.setItem(TOKEN, answer.access_token);
      sessionStorage.setItem(WHO, JSON.stringify({ sub, roles, signedIn: true }));
      return { sub, roles, signedIn: true };
    } catch (err) {
      if (err.status !== 404) throw err;
      // a stack without an identity provider (no sign-in yet): act without a token
      sessionStorage.removeItem(TOKEN);
      sessionStorage.setItem(WHO, JSON.stringify({ sub, roles, signedIn: false }));
      return { sub, roles, signedIn: false };
    }
  }

  function who() {
    const raw = sessionStorage.getItem(WHO);
    return raw ? JSON.parse(raw) : null;
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN);
    sessionStorage.removeItem(WHO);
  }

  const query = (path) => call("", "GET", path);
  const command = async (path, body, headers) =>
    call((await load()).command_url, "POST", path, body, headers);

  function money(amount) {
    return amount === null || amount === undefined ? "–" : String(amount);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // The receipt (docs/rides-gone-wrong.md) as a table: its lines (refunds negative), the
  // total they add up to, and when anything was refunded, the charge and the refunded total.
  function receiptTable(receipt) {
    const refunded = receipt.refunded || 0;
    const rows = receipt.lines.map((line) =>
      el("tr", { class: `line-${line.kind}`, "data-kind": line.kind },
        el("td", {}, line.description), el("td", { class: "amount" }, line.amount)));
    return el("table", { class: "receipt", "data-testid": "receipt" },
      el("tbody", {}, ...rows),
      el("tfoot", {},
        el("tr", { class: "total" }, el("th", {}, "Total"),
          el("th", { class: "amount", "data-testid": "receipt-total" }, receipt.total)),
        // refunds: what was charged, and what of it was given back in all
        refunded ? el("tr", {}, el("td", {}, "Charged"),
          el("td", { class: "amount", "data-testid": "receipt-charged" }, receipt.charged)) : null,
        refunded ? el("tr", {}, el("td", {}, "Refunded"),
          el("td", { class: "amount", "data-testid": "receipt-refunded" }, refunded)) : null,
        el("tr", {}, el("td", {}, "Deposit held"), el("td", { class: "amount" }, receipt.deposit_held)),
        el("tr", {}, el("td", {}, "Deposit released"),
          el("td", { class: "amount" }, receipt.deposit_released)),
        el("tr", {}, el("td", {}, "Payment"), el("td", { class: "amount" }, receipt.payment_status))));
  }

  // The GPS track as an SVG polyline, scaled to fit (equirectangular; no map tiles).
  function trackPlot(points, width, height) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("class", "track");
    svg.setAttribute("data-testid", "track");
    svg.setAttribute("data-points", String(points.length));
    if (points.length === 0) {
      const text = document.createElementNS(ns, "text");
      text.setAttribute("x", "10"); text.setAttribute("y", "20");
      text.textContent = "no GPS track";
      svg.append(text);
      return svg;
    }
    const midLat = points.reduce((s, p) => s + p.lat, 0) / points.length;
    const kx = Math.cos((midLat * Math.PI) / 180);
    const xs = points.map((p) => p.lon * kx), ys = points.map((p) => p.lat);
    const minX = Math.min(...xs), maxX = Math.max(...xs), minY = Math.min(...ys), maxY = Math.max(...ys);
    const span = Math.max(maxX - minX, maxY - minY) || 1e-9, pad = 12;
    const scale = (Math.min(width, height) - 2 * pad) / span;
    const xy = points.map((p, i) => [pad + (xs[i] - minX) * scale, height - pad - (ys[i] - minY) * scale]);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "));
    svg.append(line);
    for (const [[x, y], cls] of [[xy[0], "start"], [xy[xy.length - 1], "end"]]) {
      const dot = document.createElementNS(ns, "circle");
      dot.setAttribute("cx", x.toFixed(1)); dot.setAttribute("cy", y.toFixed(1));
      dot.setAttribute("r", "5"); dot.setAttribute("class", cls);
      svg.append(dot);
    }
    return svg;
  }

  // A fresh idempotency key (a random UUID). crypto.randomUUID needs a secure context
  // (https or localhost); getRandomValues works on any origin.
  function newKey() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  return { load, call, query, command, signIn, signOut, who, money, el, receiptTable, trackPlot,
    newKey, Problem };
})();
