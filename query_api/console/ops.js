// The operations console: sign in as support, find a rider, their summary and rides, a
// ride's running cost, receipt and GPS track, and the operator commands with confirmation
// (docs/operator-api.md). Everything it shows from the services goes in as text
// (textContent or text nodes, never innerHTML); the bearer token only ever travels in the
// Authorization header (api.js), never in a URL or a log.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const path = (s) => encodeURIComponent(s);
  let rider = null, ride = null, ticker = null, shownSummary = null;
  // a refund whose outcome is unknown (no answer, or a 5xx): confirming the very same
  // refund again resends its idempotency key, so payments refunds it at most once
  let pendingRefund = null;

  // a refusal or failure: the problem's code and detail, and when to try again
  function show(err) {
    const box = $("error");
    if (!err) { box.replaceChildren(); return; }
    box.replaceChildren(
      Api.el("code", { "data-testid": "error-code" }, err.code), " ",
      Api.el("span", { "data-testid": "error-detail" }, err.message),
      err.retryAfter ? ` (try again in ${err.retryAfter} s)` : "");
  }
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
      dialog.returnValue = "";
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.showModal();
    });
  }

  function stopTicker() {
    if (ticker) { clearInterval(ticker); ticker = null; }
  }

  async function loadRider(userId) {
    const [summary, page] = await Promise.all([
      Api.query(`/users/${path(userId)}/summary`),
      Api.query(`/users/${path(userId)}/orders?limit=50`),
    ]);
    rider = userId;
    const d = $("summary");
    d.replaceChildren();
    for (const [k, v] of [["rider", summary.user_id], ["rides", summary.rides_count],
      ["total charged", summary.total_charged], ["debt", summary.debt],
      ["last payment", summary.last_payment_status ?? "–"]]) {
      d.append(Api.el("dt", {}, k), Api.el("dd", { "data-field": k }, v));
    }
    $("settle").hidden = !(summary.debt > 0);
    shownSummary = summary;
    const body = $("rides").tBodies[0];
    body.replaceChildren(...page.items.map((o) => Api.el("tr", {
      class: `selectable${ride && ride.id === o.id ? " selected" : ""}`, "data-order": o.id,
      onclick: () => openRide(o.id),
    }, Api.el("td", { class: "when" }, o.started_at.slice(0, 10), Api.el("br"), o.started_at.slice(11, 19)),
    Api.el("td", {}, Api.el("span", { class: `status ${o.status}` }, o.status)),
    Api.el("td", { class: "amount" }, Api.money(o.current_amount ?? o.total_amount)),
    Api.el("td", {}, Api.el("span", { class: `status ${o.payment_status}` }, o.payment_status)))));
    return summary;
  }

  // the ride's header: status, times and its cost (running while active); the rides
  // table's row follows, so the list shows the same amount
  async function refreshRide() {
    const id = ride.id;
    const screen = await Api.query(`/orders/${path(id)}`);
    if (!ride || ride.id !== id) return screen; // another ride was opened meanwhile
    ride = screen;
    $("ride-status").textContent = screen.status;
    $("ride-status").className = `status ${screen.status}`;
    $("ride-times").textContent = `started ${screen.started_at.slice(0, 19)} · ` +
      `${screen.elapsed_seconds} s · payment ${screen.payment_status}`;
    const amount = screen.status === "active" ? screen.current_amount : screen.total_amount;
    const refunded = (screen.receipt && screen.receipt.refunded) || 0;
    if (screen.status === "active") $("ride-cost").textContent = `running: ${Api.money(amount)}`;
    else if (!refunded) $("ride-cost").textContent = Api.money(amount);
    else {
      $("ride-cost").replaceChildren(Api.money(amount),
        Api.el("span", { class: "note" }, ` charged, ${refunded} refunded`));
    }
    for (const row of $("rides").tBodies[0].rows) {
      if (row.dataset.order === id) row.cells[2].textContent = Api.money(amount);
    }
    if (screen.status !== "active") stopTicker();
    $("end").hidden = screen.status !== "active"; // only a ride still going can be ended
    $("refund").hidden = screen.status !== "finished"; // only a charge can be refunded
    return screen;
  }

  function showReceipt(receipt) {
    const box = $("ride-receipt");
    if (receipt) box.replaceChildren(Api.receiptTable(receipt));
    else box.replaceChildren(Api.el("p", { class: "note" }, "the receipt comes when the ride ends"));
  }

  async function loadReceipt(screen) {
    if (screen.status === "active") { showReceipt(null); return; }
    // the order screen carries the receipt (issue 12); else the receipt endpoint
    const receipt = screen.receipt ?? (await Api.query(`/orders/${path(screen.id)}/receipt`)).receipt;
    if (ride && ride.id === screen.id) showReceipt(receipt);
  }

  async function openRide(orderId) {
    stopTicker();
    ride = { id: orderId };
    $("ride").hidden = false;
    $("ride-id").textContent = orderId;
    $("ride-receipt").replaceChildren();
    $("ride-track").replaceChildren();
    for (const row of $("rides").tBodies[0].rows) {
      row.classList.toggle("selected", row.dataset.order === orderId);
    }
    try {
      const screen = await refreshRide();
      await loadReceipt(screen);
      if (screen.status === "active") {
        ticker = setInterval(() => refreshRide().then((s) => {
          if (s.status !== "active") return loadReceipt(s);
          return null;
        }).catch(show), 1000);
      }
      const track = await Api.query(`/orders/${path(orderId)}/track`);
      $("ride-track").replaceChildren(Api.trackPlot(track.points, 360, 240),
        Api.el("p", { class: "note" }, `${track.points.length} points · ${track.distance_meters} m`));
      $("end").elements.ended_at.value = new Date().toISOString().slice(0, 19);
      show(null);
    } catch (err) { show(err); }
  }

  // Ask, then ``send()`` one operator command: its answer, or null when cancelled or
  // refused (the refusal is shown).
  async function operate(text, send) {
    if (!(await confirmDialog(text))) { done("cancelled"); return null; }
    done(""); show(null);
    let answer;
    try {
      answer = await send();
    } catch (err) { show(err); return null; }
    done(`done: ${text}`);
    return answer;
  }

  // After a command: the ride's header, the summary and the rides from the screens. The
  // screens are projections and may lag the command's answer by a moment: they are read
  // again (for up to ~5 s) until ``rideDone(screen)`` and ``summaryDone(summary)`` say
  // they show the command.
  async function afterCommand(rideDone, summaryDone) {
    const id = ride ? ride.id : null, user = rider;
    // the operator opened another ride or rider meanwhile: theirs to show now
    const movedOn = () => (id !== null && (!ride || ride.id !== id)) || rider !== user;
    try {
      for (let i = 0; i < 20; i += 1) {
        if (i > 0) await new Promise((resolve) => setTimeout(resolve, 250));
        if (movedOn()) break;
        const screen = id === null ? null : await refreshRide();
        if (movedOn()) break;
        const summary = user === null ? null : await loadRider(user);
        if ((!screen || rideDone(screen)) && (!summary || summaryDone(summary))) break;
      }
    } catch (err) { show(err); }
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

  // datetime-local gives "YYYY-MM-DDTHH:MM[:SS]" (no seconds when they are 0); as UTC
  function utc(local) {
    return `${local.length === 16 ? `${local}:00` : local.slice(0, 19)}Z`;
  }

  $("end").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = new FormData(ev.target), id = ride.id;
    const endedAt = utc(String(form.get("ended_at")));
    const reason = String(form.get("reason"));
    const answer = await operate(`End ride ${id} at ${endedAt}? Reason: ${reason}`,
      () => Api.command(`/orders/${path(id)}/end`, { ended_at: endedAt, reason }));
    if (answer === null) return;
    stopTicker();
    if (ride && ride.id === id && answer.receipt) showReceipt(answer.receipt);
    await afterCommand((screen) => screen.status !== "active", () => true);
    if (!answer.receipt && ride && ride.id === id && ride.status !== "active") {
      await loadReceipt(ride).catch(show);
    }
  });

  $("refund").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = new FormData(ev.target), id = ride.id;
    const amount = Number(form.get("amount")), reason = String(form.get("reason"));
    const again = pendingRefund !== null && pendingRefund.order === id &&
      pendingRefund.amount === amount && pendingRefund.reason === reason;
    const answer = await operate(
      `Refund ${amount} of ride ${id} to ${rider}? Reason: ${reason}` +
        (again ? " (the same refund as the attempt whose outcome is unknown: it is refunded at most once)" : ""),
      async () => {
        // one idempotency key per confirmed refund (kept only to retry an unknown outcome)
        const refund = again ? pendingRefund : { order: id, amount, reason, key: Api.newKey() };
        pendingRefund = refund;
        try {
          const result = await Api.command(`/orders/${path(id)}/refunds`, { amount, reason },
            { "idempotency-key": refund.key });
          pendingRefund = null;
          return result;
        } catch (err) {
          if (!err.ambiguous) pendingRefund = null; // refused: nothing was refunded
          throw err;
        }
      });
    if (answer === null) return;
    done(`refunded ${answer.amount} of ride ${answer.order_id}; refunded in all ${answer.refunded_total}`);
    if (ride && ride.id === id && answer.receipt) showReceipt(answer.receipt);
    ev.target.reset();
    const charged = shownSummary && shownSummary.user_id === rider ? shownSummary.total_charged : null;
    await afterCommand(
      (screen) => !screen.receipt || screen.receipt.refunded >= answer.refunded_total,
      (summary) => charged === null || summary.total_charged <= charged - answer.amount);
  });

  $("settle").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = new FormData(ev.target), user = rider;
    const reason = String(form.get("reason"));
    const answer = await operate(`Settle the debt of ${user}? Reason: ${reason}`,
      () => Api.command(`/users/${path(user)}/debt/settle`, { reason }));
    if (answer === null) return;
    done(`settled ${answer.settled.length} ride(s) of ${answer.user_id}; debt now ${answer.debt}`);
    ev.target.reset();
    await afterCommand(
      (screen) => !answer.settled.includes(screen.id) || screen.payment_status === "charged",
      (summary) => summary.debt === answer.debt);
    if (ride && ride.status !== "active") await loadReceipt(ride).catch(show);
  });

  showWho();
})();
