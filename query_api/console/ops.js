// The operations console: sign in as support, find a rider, their summary and rides, a
// ride's running cost, receipt and GPS track, and the operator commands with confirmation
// (docs/operator-api.md).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  let rider = null, ride = null, ticker = null;
  let refundKey = null; // kept until the refund succeeds: a retry never refunds twice

  function show(err) { $("error").textContent = err ? `${err.code}: ${err.message}` : ""; }
  function done(text) { $("done").textContent = text || ""; }

  function showWho() {
    const who = Api.who();
    $("who").textContent = who
      ? `${who.sub} (${who.roles.join(", ")})${who.signedIn ? "" : " – no sign-in on this stack"}`
      : "not signed in";
  }

  function confirmDialog(text) {
    return new Promise((resolve) => {
      const dialog = $("confirm");
      $("confirm-text").textContent = text;
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.showModal();
    });
  }

  async function loadRider(userId) {
    rider = userId;
    const [summary, page] = await Promise.all([
      Api.query(`/users/${encodeURIComponent(userId)}/summary`),
      Api.query(`/users/${encodeURIComponent(userId)}/orders?limit=50`),
    ]);
    const d = $("summary");
    d.replaceChildren();
    for (const [k, v] of [["rider", summary.user_id], ["rides", summary.rides_count],
      ["total charged", summary.total_charged], ["debt", summary.debt],
      ["last payment", summary.last_payment_status ?? "–"]]) {
      d.append(Api.el("dt", {}, k), Api.el("dd", { "data-field": k }, v));
    }
    $("settle").hidden = !(summary.debt > 0);
    const body = $("rides").tBodies[0];
    body.replaceChildren(...page.items.map((o) => Api.el("tr", {
      class: `selectable${ride && ride.id === o.id ? " selected" : ""}`, "data-order": o.id,
      onclick: () => openRide(o.id),
    }, Api.el("td", {}, o.started_at.replace("T", " ").slice(0, 19)),
    Api.el("td", {}, Api.el("span", { class: `status ${o.status}` }, o.status)),
    Api.el("td", { class: "amount" }, Api.money(o.current_amount ?? o.total_amount)),
    Api.el("td", {}, Api.el("span", { class: `status ${o.payment_status}` }, o.payment_status)))));
  }

  async function refreshRide() {
    const screen = await Api.query(`/orders/${ride.id}`);
    ride = screen;
    $("ride-status").textContent = screen.status;
    $("ride-status").className = `status ${screen.status}`;
    $("ride-times").textContent = `started ${screen.started_at.slice(0, 19)} · ` +
      `${screen.elapsed_seconds} s · payment ${screen.payment_status}`;
    $("ride-cost").textContent = screen.status === "active"
      ? `running: ${Api.money(screen.current_amount)}` : Api.money(screen.total_amount);
    if (screen.status !== "active" && ticker) { clearInterval(ticker); ticker = null; }
    return screen;
  }

  async function openRide(orderId) {
    if (ticker) { clearInterval(ticker); ticker = null; }
    ride = { id: orderId };
    $("ride").hidden = false;
    $("ride-id").textContent = orderId;
    for (const row of $("rides").tBodies[0].rows) {
      row.classList.toggle("selected", row.dataset.order === orderId);
    }
    try {
      const screen = await refreshRide();
      $("end").hidden = screen.status !== "active"; // only a ride still going can be ended
      $("refund").hidden = screen.status === "active"; // only a charge can be refunded
      const receipt = $("ride-receipt"), plot = $("ride-track");
      receipt.replaceChildren(); plot.replaceChildren();
      if (screen.status === "active") {
        receipt.append(Api.el("p", { class: "note" }, "the receipt comes when the ride ends"));
        ticker = setInterval(() => refreshRide().catch(show), 1000);
      } else {
        const answer = await Api.query(`/orders/${orderId}/receipt`);
        receipt.append(Api.receiptTable(answer.receipt));
      }
      const track = await Api.query(`/orders/${orderId}/track`);
      plot.append(Api.trackPlot(track.points, 360, 240),
        Api.el("p", { class: "note" }, `${track.points.length} points · ${track.distance_meters} m`));
      const now = new Date().toISOString().slice(0, 19);
      $("end").elements.ended_at.value = now;
      show(null);
    } catch (err) { show(err); }
  }

  async function operate(text, path, body, headers) {
    if (!(await confirmDialog(text))) return false;
    try {
      await Api.command(path, body, headers);
    } catch (err) { show(err); done(""); return false; }
    done(`done: ${text}`); show(null);
    try {
      if (rider) await loadRider(rider);
      if (ride) await openRide(ride.id);
    } catch (err) { show(err); }
    return true;
  }

  $("signin").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await Api.signIn(new FormData(ev.target).get("sub"), ["support"]);
      showWho(); show(null);
    } catch (err) { show(err); }
  });

  $("find").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try { await loadRider(new FormData(ev.target).get("user").trim()); show(null); }
    catch (err) { show(err); }
  });

  $("end").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const form = new FormData(ev.target);
    const endedAt = `${form.get("ended_at")}Z`;
    operate(`End ride ${ride.id} at ${endedAt}? Reason: ${form.get("reason")}`,
      `/orders/${ride.id}/end`, { ended_at: endedAt, reason: form.get("reason") });
  });

  $("refund").addEventListener("input", () => { refundKey = null; }); // another refund
  $("refund").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = new FormData(ev.target);
    const amount = Number(form.get("amount"));
    refundKey = refundKey || Api.newKey();
    const ok = await operate(
      `Refund ${amount} of ride ${ride.id} to ${rider}? Reason: ${form.get("reason")}`,
      `/orders/${ride.id}/refunds`, { amount, reason: form.get("reason") },
      { "idempotency-key": refundKey });
    if (ok) refundKey = null;
  });

  $("settle").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const form = new FormData(ev.target);
    operate(`Settle the debt of ${rider}? Reason: ${form.get("reason")}`,
      `/users/${encodeURIComponent(rider)}/debt/settle`, { reason: form.get("reason") });
  });

  showWho();
})();
