"""Browser tests of the operations console and the rider page (issue 12), in a real
headless Chromium (Debian's ``chromium``, installed by ``bin/_install_browser``) driven
by Playwright, against real processes: stubs, command API, projector and query API.

Screenshots of both pages are taken on every run; with ``SCOOTERS_UPDATE_SCREENSHOTS=1``
they are written to ``docs/`` (the pictures the README shows), else to a temporary folder.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import random
import re
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from redis.asyncio import Redis

from shared.ids import parse_order_id
from shared.settings import Settings
from shared.views import order_key
from stubs import StubSettings
from tests.auth import SUPPORT, tokens_for
from tests.conftest import ADMIN_TOKEN, ROOT, start_process, stop_process, wait_http
from tests.e2e.conftest import backdate, ledger, set_fault
from tests.ports import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 15_000

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing: bin/test installs it"
)


@dataclasses.dataclass(frozen=True)
class Stack:
    settings: Settings
    query_url: str
    command_url: str
    stubs_url: str


@pytest.fixture(scope="module")
def stack(base_settings: Settings, database: str) -> Iterator[Stack]:
    """Stubs, command API, worker, projector and query API as processes; the console's
    origin (the query API) may call the command API and the identity stub."""
    stubs_port, command_port, query_port = free_port(), free_port(), free_port()
    query_url = f"http://127.0.0.1:{query_port}"
    stubs_url = f"http://127.0.0.1:{stubs_port}"
    command_url = f"http://127.0.0.1:{command_port}"
    settings = base_settings.replace(
        redis={"key_prefix": f"{base_settings.redis.key_prefix}console:"},
        external={"base_url": stubs_url},
        serving={"command_port": command_port, "query_port": query_port},
        read={"projector_metrics_port": 0},
        console={"cors_allow_origins": query_url, "command_url": command_url},
    )
    stub_env = StubSettings(
        port=stubs_port, cors_allow_origins=query_url, admin_token=ADMIN_TOKEN
    ).to_env()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for module, health, extra in (
            ("stubs", f"{stubs_url}/health/live", stub_env),
            ("command_api", f"{command_url}/health/live", None),
            ("command_api.worker", None, None),  # payment retries: a charge may become debt
            ("query_api.projector", None, None),
            ("query_api", f"{query_url}/health/live", None),
        ):
            procs.append(start_process(module, settings, extra))
            if health is not None:
                # five processes start on a shared, loaded machine: more than the usual 30 s
                wait_http(health, timeout=120, proc=procs[-1])
        yield Stack(
            settings=settings, query_url=query_url, command_url=command_url, stubs_url=stubs_url
        )
    finally:
        for proc in reversed(procs):
            stop_process(proc)


@pytest.fixture(scope="module")
async def redis_keys(stack: Stack) -> AsyncIterator[None]:
    """Delete this module's Redis keys afterwards."""
    yield
    client = Redis.from_url(stack.settings.redis.url)
    try:
        keys = [k async for k in client.scan_iter(f"{stack.settings.redis.key_prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
async def browser(stack: Stack, redis_keys: None) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(  # whatever the policy blocked (docs: query_api/ride_details.py, console_csp)
        "console",
        lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    yield page
    await context.close()
    assert errors == [], f"the page threw or broke its policy: {errors}"


def screenshot_path(name: str, tmp_path: Path) -> Path:
    if os.environ.get("SCOOTERS_UPDATE_SCREENSHOTS") == "1":
        return ROOT / "docs" / name
    return tmp_path / name


def pick(stack: Stack, kind: str, rng: random.Random, used: set[str]) -> str:
    """A scooter or a debt-free rider that no other test of this module uses."""
    while True:
        if kind == "scooter":
            candidate = f"scooter-{rng.randint(21, 10_000)}"
            if candidate not in used:
                used.add(candidate)
                return candidate
            continue
        candidate = f"user-{rng.randint(21, 100_000)}"
        profile = httpx.get(f"{stack.stubs_url}/user-profile", params={"id": candidate}).json()
        if candidate not in used and profile["current_debt"] == 0:
            used.add(candidate)
            return candidate


@pytest.fixture(scope="module")
def used() -> set[str]:
    return set()


async def ride_longer(stack: Stack, db: Any, order_id: str, seconds: float) -> None:
    """Backdate an active ride and drop its projection, so screens refill it from Postgres
    (rides take time; tests should not)."""
    key = order_key(stack.settings.redis.key_prefix, order_id)
    client = Redis.from_url(stack.settings.redis.url)
    oid = parse_order_id(order_id)
    try:
        # projected first, so no late projection brings the old start back: its outbox
        # rows published (committed after Redis had the view), not merely a view in Redis
        # (a screen read before the projector's poll refills one from Postgres, ADR 0027)
        for _ in range(100):
            pending = await db.fetchval(
                "SELECT count(*) FROM outbox WHERE order_id = $1 AND published_at IS NULL", oid
            )
            if pending == 0 and await client.exists(key):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"order {order_id} was never projected")
        await backdate(db, order_id, seconds)
        await client.delete(key)
    finally:
        await client.aclose()


def amount_of(text: str) -> int:
    match = re.search(r"-?\d+", text)
    assert match is not None, text
    return int(match.group())


async def receipt_amounts(page: Page) -> tuple[list[tuple[str, int]], int]:
    """The receipt table's (kind, amount) lines and its total, as the page shows them."""
    rows = page.locator("[data-testid=receipt] tbody tr")
    lines = []
    for i in range(await rows.count()):
        row = rows.nth(i)
        kind = await row.get_attribute("data-kind")
        assert kind is not None
        lines.append((kind, amount_of(await row.locator("td.amount").inner_text())))
    total = amount_of(await page.get_by_test_id("receipt-total").inner_text())
    return lines, total


async def start_ride(page: Page, stack: Stack, rider: str, scooter: str) -> str:
    """On the rider page: sign in, get an offer, start; the order's id."""
    await page.goto(f"{stack.query_url}/console/rider.html")
    await page.fill("#signin input[name=sub]", rider)
    await page.click("#signin button")
    await expect(page.locator("#who")).to_contain_text(rider)
    await expect(page.locator("#who")).not_to_contain_text("no sign-in")  # a real token
    await page.fill("#offer input[name=scooter]", scooter)
    await page.click("#offer button")
    await expect(page.locator("[data-field='per minute']")).to_have_text(
        re.compile(r"^\d+$"), timeout=WAIT_MS
    )
    await page.click("#start")
    await expect(page.get_by_test_id("status")).to_have_text("active", timeout=WAIT_MS)
    order_id = (await page.get_by_test_id("order-id").inner_text()).strip()
    assert order_id
    return order_id


async def play_ride(
    page: Page,
    stack: Stack,
    rider: str,
    scooter: str,
    db: Any,
    before_finish: Callable[[], Awaitable[None]] | None = None,
) -> str:
    """On the rider page: sign in, offer, start, ride 10 minutes (backdated), finish
    (``before_finish`` runs just before)."""
    order_id = await start_ride(page, stack, rider, scooter)
    # the running cost updates: 10 minutes of riding appear without reloading the page
    per_minute = amount_of(await page.locator("[data-field='per minute']").inner_text())
    unlock = amount_of(await page.locator("[data-field='unlock']").inner_text())
    await ride_longer(stack, db, order_id, 600)
    await expect(page.get_by_test_id("cost")).to_have_text(re.compile(r"^\d+$"), timeout=WAIT_MS)
    expected_floor = 600 * per_minute // 60 + unlock
    for _ in range(50):
        if amount_of(await page.get_by_test_id("cost").inner_text()) >= expected_floor:
            break
        await page.wait_for_timeout(200)
    assert amount_of(await page.get_by_test_id("cost").inner_text()) >= expected_floor
    if before_finish is not None:
        await before_finish()
    await page.click("#finish")
    await expect(page.get_by_test_id("receipt")).to_be_visible(timeout=WAIT_MS)
    return order_id


async def test_a_rider_plays_a_ride_to_its_receipt(
    page: Page, stack: Stack, db: Any, used: set[str], tmp_path: Path
) -> None:
    rng = random.Random()
    rider, scooter = pick(stack, "user", rng, used), pick(stack, "scooter", rng, used)
    order_id = await play_ride(page, stack, rider, scooter, db)

    lines, total = await receipt_amounts(page)
    assert sum(amount for _, amount in lines) == total
    kinds = [kind for kind, _ in lines]
    assert kinds[0] == "riding_time"
    assert "unlock" in kinds
    money = await ledger(stack.stubs_url, order_id)
    assert money["charged"] == total  # the screen and payments agree
    row = await db.fetchrow(
        "SELECT total_amount, payment_status FROM orders WHERE id = $1::uuid", order_id
    )
    assert (row["total_amount"], row["payment_status"]) == (total, "charged")
    await page.set_viewport_size({"width": 680, "height": 700})
    await page.screenshot(path=screenshot_path("console-rider.png", tmp_path), full_page=True)


async def test_support_finds_the_ride_its_receipt_track_and_a_running_cost(
    page: Page, browser: Browser, stack: Stack, db: Any, used: set[str], tmp_path: Path
) -> None:
    rng = random.Random()
    rider = pick(stack, "user", rng, used)
    # the rider rides twice: one finished ride, one still active
    rider_page = await browser.new_page()
    finished = await play_ride(rider_page, stack, rider, pick(stack, "scooter", rng, used), db)
    points = amount_of(await rider_page.locator("#points").inner_text())
    _, charged = await receipt_amounts(rider_page)
    # another offer, this time for a ride left active
    await rider_page.fill("#offer input[name=scooter]", pick(stack, "scooter", rng, used))
    await rider_page.click("#offer button")
    await rider_page.click("#start")
    await expect(rider_page.get_by_test_id("status")).to_have_text("active", timeout=WAIT_MS)
    active = (await rider_page.get_by_test_id("order-id").inner_text()).strip()
    assert active != finished
    await rider_page.close()

    await page.goto(f"{stack.query_url}/console/index.html")
    await page.fill("#signin input[name=sub]", "support-1")
    await page.click("#signin button")
    await expect(page.locator("#who")).to_contain_text("support-1")
    await expect(page.locator("#who")).not_to_contain_text("no sign-in")
    await page.fill("#find input[name=user]", rider)
    await page.click("#find button")
    await expect(page.locator("#summary [data-field='total charged']")).to_have_text(
        str(charged), timeout=WAIT_MS
    )
    await expect(page.locator(f"#rides tr[data-order='{finished}']")).to_be_visible()
    await expect(page.locator(f"#rides tr[data-order='{active}']")).to_be_visible()

    # the finished ride: its receipt and its GPS track as a plot
    await page.click(f"#rides tr[data-order='{finished}']")
    await expect(page.get_by_test_id("receipt-total")).to_have_text(str(charged))
    await expect(page.get_by_test_id("track")).to_have_attribute("data-points", str(points))
    assert await page.locator("[data-testid=track] polyline").count() == 1

    # the active ride: its running cost updates on the open page
    await page.click(f"#rides tr[data-order='{active}']")
    await expect(page.get_by_test_id("ride-status")).to_have_text("active")
    await expect(page.get_by_test_id("ride-cost")).to_have_text(re.compile(r"^running: \d+$"))
    before = amount_of(await page.get_by_test_id("ride-cost").inner_text())
    await ride_longer(stack, db, active, 3600)
    await expect(page.get_by_test_id("ride-cost")).not_to_have_text(
        f"running: {before}", timeout=WAIT_MS
    )
    assert amount_of(await page.get_by_test_id("ride-cost").inner_text()) > before
    await expect(page.get_by_test_id("error")).to_have_text("")


async def test_console_files_are_served_by_the_query_api(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.query_url) as client:
        for name, media in (
            ("index.html", "text/html"),
            ("rider.html", "text/html"),
            ("api.js", "javascript"),
            ("console.css", "text/css"),
        ):
            answer = await client.get(f"/console/{name}")
            assert answer.status_code == 200, name
            assert media in answer.headers["content-type"]
            # nothing is loaded from elsewhere: the console works offline
            assert not re.search(r"(src|href)=\"https?://", answer.text), name
            # and the browser is told so: our files only, requests to our services only
            policy = answer.headers["content-security-policy"]
            assert "script-src 'self';" in policy
            assert f"connect-src 'self' {stack.command_url} {stack.stubs_url};" in policy
            assert answer.headers["x-content-type-options"] == "nosniff"
        config = (await client.get("/console-config")).json()
        assert config == {"command_url": stack.command_url, "identity_url": stack.stubs_url}
        assert (await client.get("/console/missing.js")).status_code == 404


async def test_only_the_consoles_origin_may_call_the_command_api(stack: Stack) -> None:
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type, idempotency-key",
    }
    async with httpx.AsyncClient(base_url=stack.command_url) as client:
        allowed = await client.options("/offers", headers={"origin": stack.query_url, **preflight})
        assert allowed.status_code in (200, 204)
        assert allowed.headers["access-control-allow-origin"] == stack.query_url
        # a refusal's Retry-After is readable by the console's script (when to try again)
        answer = await client.post("/offers", json={}, headers={"origin": stack.query_url})
        assert answer.status_code == 401
        assert answer.headers["access-control-allow-origin"] == stack.query_url
        assert "retry-after" in answer.headers["access-control-expose-headers"].lower()
        refused = await client.options(
            "/offers", headers={"origin": "http://elsewhere.example", **preflight}
        )
        assert refused.headers.get("access-control-allow-origin") != "http://elsewhere.example"
        assert refused.status_code >= 400


# --- operator commands on the console (docs/operator-api.md) ----------------------------------

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


async def sign_in_support(page: Page, stack: Stack, sub: str = "support-1") -> None:
    await page.goto(f"{stack.query_url}/console/index.html")
    await page.fill("#signin input[name=sub]", sub)
    await page.click("#signin button")
    await expect(page.locator("#who")).to_contain_text(sub)
    await expect(page.locator("#who")).not_to_contain_text("no sign-in")  # a real token


async def open_ride(page: Page, rider: str, order_id: str) -> None:
    """On the console: find ``rider`` and open the ride ``order_id`` from their rides."""
    await page.fill("#find input[name=user]", rider)
    await page.click("#find button")
    row = page.locator(f"#rides tr[data-order='{order_id}']")
    await expect(row).to_be_visible(timeout=WAIT_MS)
    await row.click()
    await expect(page.locator("#ride-id")).to_have_text(order_id)


async def answer_dialog(page: Page, button: str) -> str:
    """Answer the open confirmation dialog with ``button`` ("ok" or "cancel"); its text."""
    dialog = page.locator("dialog#confirm")
    await expect(dialog).to_be_visible()
    text = await page.locator("#confirm-text").inner_text()
    await dialog.locator(f"button[value={button}]").click()
    await expect(dialog).to_be_hidden()
    return text


async def rider_with_a_finished_ride(
    browser: Browser, stack: Stack, db: Any, used: set[str]
) -> tuple[str, str, int]:
    """A fresh rider plays a ride to its receipt on the rider page: (rider, order, total)."""
    rng = random.Random()
    rider = pick(stack, "user", rng, used)
    context = await browser.new_context(viewport={"width": 1000, "height": 800})
    try:
        rider_page = await context.new_page()
        order_id = await play_ride(rider_page, stack, rider, pick(stack, "scooter", rng, used), db)
        _, charged = await receipt_amounts(rider_page)
    finally:
        await context.close()
    assert charged > 1
    return rider, order_id, charged


def support_headers(stack: Stack) -> dict[str, str]:
    return tokens_for(stack.settings, ADMIN_TOKEN).headers("support-1", SUPPORT)


async def test_support_refunds_part_of_a_ride_and_the_ledger_and_screens_agree(
    page: Page, browser: Browser, stack: Stack, db: Any, used: set[str], tmp_path: Path
) -> None:
    rider, order_id, charged = await rider_with_a_finished_ride(browser, stack, db, used)
    sent: list[tuple[str, str, dict[str, str]]] = []  # every request of the console page
    page.on("request", lambda r: sent.append((r.method, r.url, r.headers)))
    logged: list[str] = []
    page.on("console", lambda message: logged.append(message.text))

    await sign_in_support(page, stack)
    await open_ride(page, rider, order_id)
    await expect(page.get_by_test_id("receipt-total")).to_have_text(str(charged))
    await expect(page.locator("#end")).to_be_hidden()  # a finished ride cannot be ended

    part = charged // 3
    reason = "the scooter's brake failed"
    await page.fill("#refund input[name=amount]", str(part))
    await page.fill("#refund input[name=reason]", reason)

    # cancelled at the confirmation: nothing is sent, nothing refunded
    await page.click("#refund button[type=submit]")
    text = await answer_dialog(page, "cancel")
    assert f"Refund {part} of ride {order_id}" in text
    assert reason in text
    await expect(page.get_by_test_id("done")).to_have_text("cancelled")
    assert not [url for method, url, _ in sent if method == "POST" and "/refunds" in url]
    assert (await ledger(stack.stubs_url, order_id))["refunded"] == 0

    # confirmed: one refund, with an idempotency key of its own
    await page.click("#refund button[type=submit]")
    await answer_dialog(page, "ok")
    await expect(page.get_by_test_id("done")).to_contain_text(
        f"refunded {part} of ride {order_id}", timeout=WAIT_MS
    )
    await expect(page.get_by_test_id("error")).to_have_text("")

    # the console's receipt: a refund line, the refunded total, the total net of it
    await expect(page.get_by_test_id("receipt-refunded")).to_have_text(str(part))
    await expect(page.get_by_test_id("receipt-charged")).to_have_text(str(charged))
    await expect(page.get_by_test_id("receipt-total")).to_have_text(str(charged - part))
    lines, total = await receipt_amounts(page)
    assert sum(amount for _, amount in lines) == total == charged - part
    assert [amount for kind, amount in lines if kind == "refund"] == [-part]
    # and the summary follows: the rider's total charged drops by the refund
    await expect(page.locator("#summary [data-field='total charged']")).to_have_text(
        str(charged - part), timeout=WAIT_MS
    )
    await expect(page.get_by_test_id("ride-cost")).to_have_text(
        f"{charged} charged, {part} refunded"
    )
    await page.set_viewport_size({"width": 1000, "height": 700})
    await page.screenshot(path=screenshot_path("console-operations.png", tmp_path), full_page=True)

    refunds = [
        (url, headers) for method, url, headers in sent if method == "POST" and "/refunds" in url
    ]
    assert len(refunds) == 1
    url, headers = refunds[0]
    assert url == f"{stack.command_url}/orders/{order_id}/refunds"
    key = headers["idempotency-key"]
    assert UUID.match(key), key

    # payments: charged once, refunded the part once, under the console's key
    money = await ledger(stack.stubs_url, order_id)
    assert (money["charged"], money["refunded"]) == (charged, part)
    assert [(e["amount"], e.get("key")) for e in money["entries"] if e["kind"] == "refund"] == [
        (part, key)
    ]

    # the query API's screens agree with the console and the ledger
    async with httpx.AsyncClient(base_url=stack.query_url, headers=support_headers(stack)) as api:
        answer = (await api.get(f"/orders/{order_id}/receipt")).json()
        receipt = answer["receipt"]
        assert (receipt["total"], receipt["charged"], receipt["refunded"]) == (
            charged - part,
            charged,
            part,
        )
        assert [(line["kind"], line["amount"]) for line in receipt["lines"]] == lines
        for _ in range(50):  # the order screen and the summary are projections
            screen = (await api.get(f"/orders/{order_id}")).json()
            summary = (await api.get(f"/users/{rider}/summary")).json()
            if summary["total_charged"] == charged - part and "receipt" in screen:
                break
            await asyncio.sleep(0.2)
        assert summary["total_charged"] == charged - part
        assert screen["receipt"]["total"] == charged - part
        assert screen["receipt"]["refunded"] == part
        assert [(line["kind"], line["amount"]) for line in screen["receipt"]["lines"]] == lines

    # the bearer token travelled in headers only: in no URL, in no console message
    token = await page.evaluate("sessionStorage.getItem('scooters.console.token')")
    assert token
    assert len(token) > 20
    assert headers["authorization"] == f"Bearer {token}"
    assert not [url for _, url, _ in sent if token in url]
    assert not [text for text in logged if token in text]


async def test_a_refused_refund_is_shown_to_the_operator(
    page: Page, browser: Browser, stack: Stack, db: Any, used: set[str]
) -> None:
    rider, order_id, charged = await rider_with_a_finished_ride(browser, stack, db, used)
    keys: list[str] = []
    page.on(
        "request",
        lambda r: keys.append(r.headers["idempotency-key"]) if "/refunds" in r.url else None,
    )
    await sign_in_support(page, stack)
    await open_ride(page, rider, order_id)
    await expect(page.get_by_test_id("receipt-total")).to_have_text(str(charged))

    # more than was charged: refused, the problem's code and detail shown, nothing refunded
    await page.fill("#refund input[name=amount]", str(charged + 1))
    await page.fill("#refund input[name=reason]", "goodwill")
    await page.click("#refund button[type=submit]")
    await answer_dialog(page, "ok")
    await expect(page.get_by_test_id("error-code")).to_have_text(
        "refund_exceeds_charge", timeout=WAIT_MS
    )
    await expect(page.get_by_test_id("error-detail")).not_to_be_empty()
    await expect(page.get_by_test_id("done")).to_have_text("")
    await expect(page.get_by_test_id("receipt-total")).to_have_text(str(charged))
    money = await ledger(stack.stubs_url, order_id)
    assert (money["charged"], money["refunded"]) == (charged, 0)

    # the operator corrects the amount: a new refund with a new key goes through; its
    # reason (the operator's text) is shown as text, never as markup
    reason = 'goodwill <img id="injected" src="x">'
    await page.fill("#refund input[name=amount]", str(charged))
    await page.fill("#refund input[name=reason]", reason)
    await page.click("#refund button[type=submit]")
    assert reason in await answer_dialog(page, "ok")
    await expect(page.get_by_test_id("receipt-total")).to_have_text("0", timeout=WAIT_MS)
    await expect(page.get_by_test_id("error")).to_have_text("")
    await expect(page.locator("[data-testid=receipt] tr[data-kind=refund]")).to_contain_text(reason)
    assert await page.locator("#injected").count() == 0
    assert len(keys) == 2
    assert keys[0] != keys[1]
    money = await ledger(stack.stubs_url, order_id)
    assert (money["charged"], money["refunded"]) == (charged, charged)

    # and nothing is left to refund: the next one is refused too
    await page.fill("#refund input[name=amount]", "1")
    await page.fill("#refund input[name=reason]", "once more")
    await page.click("#refund button[type=submit]")
    await answer_dialog(page, "ok")
    await expect(page.get_by_test_id("error-code")).to_have_text(
        "refund_exceeds_charge", timeout=WAIT_MS
    )
    assert (await ledger(stack.stubs_url, order_id))["refunded"] == charged


async def test_support_ends_a_ride_on_the_riders_behalf(
    page: Page, browser: Browser, stack: Stack, db: Any, used: set[str]
) -> None:
    rng = random.Random()
    rider = pick(stack, "user", rng, used)
    context = await browser.new_context()
    try:  # the rider starts a ride and leaves it (the app crashed)
        rider_page = await context.new_page()
        order_id = await start_ride(rider_page, stack, rider, pick(stack, "scooter", rng, used))
    finally:
        await context.close()
    await ride_longer(stack, db, order_id, 1800)  # started half an hour ago
    row = await db.fetchrow("SELECT started_at FROM orders WHERE id = $1::uuid", order_id)
    started = row["started_at"]

    await sign_in_support(page, stack)
    await open_ride(page, rider, order_id)
    await expect(page.get_by_test_id("ride-status")).to_have_text("active")
    await expect(page.locator("#refund")).to_be_hidden()  # nothing charged yet

    # before the start: refused, shown, the ride goes on
    before = (started - dt.timedelta(minutes=5)).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    await page.fill("#end input[name=ended_at]", before)
    await page.fill("#end input[name=reason]", "scooter parked, app crashed")
    await page.click("#end button[type=submit]")
    await answer_dialog(page, "ok")
    await expect(page.get_by_test_id("error-code")).to_have_text(
        "end_before_start", timeout=WAIT_MS
    )
    await expect(page.get_by_test_id("ride-status")).to_have_text("active")

    # ten minutes after the start (when the scooter was last seen parked): ended, charged
    ended_at = started.replace(microsecond=0) + dt.timedelta(seconds=601)
    ended = ended_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    await page.fill("#end input[name=ended_at]", ended)
    await page.click("#end button[type=submit]")
    text = await answer_dialog(page, "ok")
    assert f"at {ended}Z" in text
    await expect(page.get_by_test_id("ride-status")).to_have_text("finished", timeout=WAIT_MS)
    await expect(page.get_by_test_id("error")).to_have_text("")
    await expect(page.get_by_test_id("receipt")).to_be_visible()
    lines, total = await receipt_amounts(page)
    assert sum(amount for _, amount in lines) == total
    row = await db.fetchrow(
        "SELECT total_amount, duration_seconds, finished_at FROM orders WHERE id = $1::uuid",
        order_id,
    )
    assert row["total_amount"] == total
    # charged up to the given end (600-601 s after a start with a fraction), not up to now
    assert 600 <= row["duration_seconds"] <= 601
    money = await ledger(stack.stubs_url, order_id)
    assert money["charged"] == total
    await expect(page.get_by_test_id("ride-cost")).to_have_text(str(total))
    await expect(page.locator("#refund")).to_be_visible()  # now it can be refunded


async def test_the_console_shows_what_it_is_sent_as_text(page: Page, stack: Stack) -> None:
    await sign_in_support(page, stack)
    await page.fill("#find input[name=user]", '<img id="injected" src="x">')
    await page.click("#find button")
    await expect(page.get_by_test_id("error-code")).not_to_be_empty(timeout=WAIT_MS)
    assert await page.locator("#injected").count() == 0


async def test_a_refund_retried_after_payments_was_down_refunds_once(
    page: Page, browser: Browser, stack: Stack, db: Any, used: set[str]
) -> None:
    rider, order_id, charged = await rider_with_a_finished_ride(browser, stack, db, used)
    keys: list[str] = []
    page.on(
        "request",
        lambda r: keys.append(r.headers["idempotency-key"]) if "/refunds" in r.url else None,
    )
    await sign_in_support(page, stack)
    await open_ride(page, rider, order_id)
    await expect(page.get_by_test_id("receipt-total")).to_have_text(str(charged))
    await page.fill("#refund input[name=amount]", "1")
    await page.fill("#refund input[name=reason]", "scooter battery died mid-ride")

    await set_fault(stack.stubs_url, "payments", outage=True)
    try:  # payments down: 503, shown with when to try again
        await page.click("#refund button[type=submit]")
        await answer_dialog(page, "ok")
        await expect(page.get_by_test_id("error-code")).to_have_text(
            "dependency_unavailable", timeout=WAIT_MS
        )
        await expect(page.get_by_test_id("error")).to_contain_text("try again in")
    finally:
        await set_fault(stack.stubs_url, "payments", outage=False)

    # the operator confirms the same refund again: the same key, so at most one refund
    await page.click("#refund button[type=submit]")
    text = await answer_dialog(page, "ok")
    assert "outcome is unknown" in text
    await expect(page.get_by_test_id("receipt-refunded")).to_have_text("1", timeout=WAIT_MS)
    await expect(page.get_by_test_id("error")).to_have_text("")
    assert len(keys) == 2
    assert keys[0] == keys[1]
    money = await ledger(stack.stubs_url, order_id)
    assert [(e["amount"], e.get("key")) for e in money["entries"] if e["kind"] == "refund"] == [
        (1, keys[0])
    ]


async def test_support_settles_a_riders_debt(
    page: Page, browser: Browser, stack: Stack, db: Any, used: set[str]
) -> None:
    rng = random.Random()
    rider = pick(stack, "user", rng, used)

    async def card_declines() -> None:
        await set_fault(stack.stubs_url, "payments", decline=True)

    context = await browser.new_context()
    try:  # the ride ends while the card declines the charge, to the last try: debt
        rider_page = await context.new_page()
        order_id = await play_ride(
            rider_page, stack, rider, pick(stack, "scooter", rng, used), db, card_declines
        )
        await expect(rider_page.locator("[data-testid=receipt]")).to_contain_text("pending")
    finally:
        await context.close()
    try:
        for _ in range(100):
            row = await db.fetchrow(
                "SELECT total_amount, payment_status FROM orders WHERE id = $1::uuid", order_id
            )
            if row["payment_status"] == "debt":
                break
            await asyncio.sleep(0.1)
        assert row["payment_status"] == "debt"
    finally:
        await set_fault(stack.stubs_url, "payments", decline=False)
    total = row["total_amount"]
    assert total > 0
    assert (await ledger(stack.stubs_url, order_id))["charged"] == 0

    await sign_in_support(page, stack)
    await page.fill("#find input[name=user]", rider)
    await page.click("#find button")
    await expect(page.locator("#summary [data-field='debt']")).to_have_text(
        str(total), timeout=WAIT_MS
    )
    await page.fill("#settle input[name=reason]", "rider called, card updated")
    await page.click("#settle button[type=submit]")
    text = await answer_dialog(page, "ok")
    assert f"Settle the debt of {rider}?" in text
    await expect(page.get_by_test_id("done")).to_have_text(
        f"settled 1 ride(s) of {rider}; debt now 0", timeout=WAIT_MS
    )
    await expect(page.get_by_test_id("error")).to_have_text("")
    await expect(page.locator("#summary [data-field='debt']")).to_have_text("0", timeout=WAIT_MS)
    await expect(page.locator("#summary [data-field='total charged']")).to_have_text(str(total))
    await expect(page.locator("#settle")).to_be_hidden()

    money = await ledger(stack.stubs_url, order_id)
    assert money["charged"] == total
    row = await db.fetchrow("SELECT payment_status FROM orders WHERE id = $1::uuid", order_id)
    assert row["payment_status"] == "charged"
    # and the rider may ride again
    async with httpx.AsyncClient(base_url=stack.command_url) as api:
        offer = await api.post(
            "/offers",
            json={"user_id": rider, "scooter_id": pick(stack, "scooter", rng, used)},
            headers=tokens_for(stack.settings, ADMIN_TOKEN).headers(rider),
        )
    assert offer.status_code == 201, offer.text
