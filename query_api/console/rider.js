// Play a rider: sign in, offer, start, watch the running cost, finish with a GPS track,
// read the receipt. Talks to the command API for commands and this query API for screens.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  let offer = null, order = null, ticker = null;
  const track = [];

  function show(err) { $("error").textContent = err ? `${err.code}: ${err.message}` : ""; }

  function showWho() {
    const who = Api.who();
    $("who").textContent = who
      ? `${who.sub} (${who.roles.join(", ")})${who.signedIn ? "" : " – no sign-in on this stack"}`
      : "not signed in";
  }

  // a walk of ~5 m/s around a fixed point: a believable GPS track for the ride
  function addPoint() {
    const last = track[track.length - 1] || { lat: 55.7558, lon: 37.6173 };
    track.push({
      t: Date.now() / 1000,
      lat: last.lat + (Math.random() * 0.6 + 0.2) * 0.00005,
      lon: last.lon + (Math.random() - 0.3) * 0.00008,
    });
    $("points").textContent = `GPS: ${track.length} points`;
  }

  async function refresh() {
    try {
      const screen = await Api.query(`/orders/${encodeURIComponent(order.id)}`);
      $("status").textContent = screen.status;
      $("status").className = `status ${screen.status}`;
      $("elapsed").textContent = `${screen.elapsed_seconds} s`;
      $("cost").textContent = Api.money(screen.current_amount ?? screen.total_amount);
      show(null);
    } catch (err) {
      if (err.status !== 404) show(err); // 404: not projected yet
    }
  }

  $("signin").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await Api.signIn(new FormData(ev.target).get("sub"), ["rider"]);
      showWho(); show(null);
    } catch (err) { show(err); }
  });

  $("offer").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const who = Api.who();
    if (!who) { show({ code: "unauthenticated", message: "sign in first" }); return; }
    try {
      offer = await Api.command("/offers", {
        user_id: who.sub, scooter_id: new FormData(ev.target).get("scooter"),
      });
      const d = $("offer-details");
      d.replaceChildren();
      for (const [k, v] of [["per minute", offer.price_per_minute], ["unlock", offer.price_unlock],
        ["deposit", offer.deposit], ["zone", offer.zone_id], ["expires", offer.expires_at]]) {
        d.append(Api.el("dt", {}, k), Api.el("dd", { "data-field": k }, v));
      }
      $("start").disabled = false; show(null);
    } catch (err) { show(err); }
  });

  $("start").addEventListener("click", async () => {
    try {
      order = await Api.command("/orders", { offer_token: offer.token }, {
        "idempotency-key": Api.newKey(),
      });
      $("start").disabled = true; $("finish").disabled = false;
      $("status").textContent = order.status;
      $("order-id").textContent = order.id;
      track.length = 0; addPoint();
      ticker = setInterval(() => { addPoint(); refresh(); }, 1000);
      refresh(); show(null);
    } catch (err) { show(err); }
  });

  $("finish").addEventListener("click", async () => {
    clearInterval(ticker); addPoint();
    try {
      order = await Api.command(`/orders/${encodeURIComponent(order.id)}/finish`, { track }, {
        "idempotency-key": Api.newKey(),
      });
      $("finish").disabled = true;
      $("status").textContent = order.status;
      $("status").className = `status ${order.status}`;
      $("cost").textContent = Api.money(order.total_amount);
      // the finish answer carries the receipt (issue 12); else the receipt endpoint
      const receipt = order.receipt ??
        (await Api.query(`/orders/${encodeURIComponent(order.id)}/receipt`)).receipt;
      $("receipt").replaceChildren(Api.receiptTable(receipt));
      show(null);
    } catch (err) { show(err); }
  });

  showWho();
})();
