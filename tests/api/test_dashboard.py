"""The dashboard in a real browser: Debian's headless Chromium driven by selenium.

The API listener runs in this process; a scripted boot is fed into its session view one event
at a time (the events the DHCP, TFTP and HTTP services emit, with their details), and the
browser, polling as an operator's would, must show each stage as it happens.  A screenshot of
the end state is saved under the test output directory ($PXETWIST_TEST_OUTPUT, default
``test-output/`` in the checkout).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Generator
from functools import partial
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import SkipTest

from pxetwist.events import BootEvent, EventProtocol, EventStage, Outcome
from pxetwist.policy.values import MacAddress
from tests.api.dashboard_watch import click
from tests.api.support import READ, WRITE, ApiTestCase

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
OUTPUT = Path(os.environ.get("PXETWIST_TEST_OUTPUT", Path(__file__).parents[2] / "test-output"))
MAC = "52:54:00:77:00:10"  # node1 in the test config
ROW = f'#machines tr[data-mac="{MAC}"]'
#: The stages the timeline shows, read in one script (the page replaces the list at each poll).
STAGES = "return [...document.querySelectorAll('#timeline li')].map((li) => li.dataset.stage)"
STATES = "return [...document.querySelectorAll('#machines tbody tr')].map((tr) => tr.dataset.state)"
Gen = Generator[defer.Deferred[Any], Any, None]


def browser() -> Any:
    if CHROMIUM is None or CHROMEDRIVER is None:
        if os.environ.get("CI"):
            raise AssertionError(
                "chromium and chromium-driver are missing: scripts/setup.sh --test"
            )
        raise SkipTest("chromium and chromium-driver are not installed (scripts/setup.sh --test)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1440,1000",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def waiter(driver: Any) -> Any:
    """A wait with room for a loaded machine; it ends as soon as the page shows the thing.  An
    element redrawn while it was read is read again at the next poll."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(
        driver, 60, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
    )


def step(
    stage: EventStage, protocol: EventProtocol, outcome: Outcome = Outcome.OK, **details: Any
) -> Callable[[float], BootEvent]:
    return lambda now: BootEvent(
        now,
        protocol,
        stage,
        outcome,
        MacAddress.parse(MAC),
        IPv4Address("10.77.1.5"),
        details=details,
    )


BOOT = [
    step(
        EventStage.DISCOVER,
        EventProtocol.DHCP,
        message_type="DISCOVER",
        reply="offer",
        address="10.77.1.5",
        file="undionly.kpxe",
        policy="static",
        arch=0,
        firmware="pxe",
        pxe=True,
    ),
    step(
        EventStage.REQUEST,
        EventProtocol.DHCP,
        message_type="REQUEST",
        reply="ack",
        address="10.77.1.5",
        policy="static",
        arch=0,
        firmware="pxe",
        pxe=True,
    ),
    step(
        EventStage.TFTP_TRANSFER,
        EventProtocol.TFTP,
        file="undionly.kpxe",
        bytes=70312,
        seconds=0.31,
        retransmits=0,
        ended="completed",
        blksize=1468,
        windowsize=8,
    ),
    step(
        EventStage.HTTP_REQUEST,
        EventProtocol.HTTP,
        method="GET",
        path="/boot.ipxe?mac=52:54:00:77:00:10",
        status=200,
        bytes=412,
        generated=True,
        complete=True,
    ),
    step(
        EventStage.HTTP_REQUEST,
        EventProtocol.HTTP,
        method="GET",
        path="/compute/vmlinuz",
        status=200,
        bytes=11_534_336,
        seconds=1.8,
        complete=True,
    ),
    step(EventStage.OS_UP, EventProtocol.OS),
]
#: The stages the session registry places those events at, in order.
STAGES_SEEN = ["dhcp-offer", "dhcp-ack", "nbp", "script", "kernel", "os-up"]


class DashboardBrowserTests(ApiTestCase):
    timeout = 240

    @defer.inlineCallbacks
    def in_browser(self, action: Callable[[], Any]) -> Generator[defer.Deferred[Any], Any, Any]:
        result = yield threads.deferToThread(action)
        return result

    def wait_for(self, driver: Any, predicate: Callable[[Any], Any], what: str) -> Any:
        return waiter(driver).until(predicate, what)

    @defer.inlineCallbacks
    def test_watch_a_boot_live(self) -> Gen:
        from selenium.webdriver.common.by import By

        driver = yield self.in_browser(browser)
        self.addCleanup(lambda: threads.deferToThread(driver.quit))

        def sign_in() -> None:
            driver.get(self.base + "/")
            self.wait_for(driver, lambda d: d.find_element(By.ID, "token").is_displayed(), "login")
            driver.find_element(By.ID, "token").send_keys(READ)
            driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
            click(driver, ROW)  # node1 listed (the list is redrawn at every poll)

        yield self.in_browser(sign_in)
        state = yield self.in_browser(lambda: driver.execute_script(STATES)[0])
        self.assertEqual(state, "idle")
        # The token survives a reload of the page (session storage), not asked again.
        yield self.in_browser(driver.refresh)
        yield self.in_browser(
            lambda: self.wait_for(
                driver, lambda d: d.find_element(By.ID, "app").is_displayed(), "app"
            )
        )
        yield self.in_browser(lambda: click(driver, ROW))  # node1 again
        seen: list[str] = []
        for number, (make, expected) in enumerate(zip(BOOT, STAGES_SEEN, strict=True), start=1):
            self.now = reactor.seconds()
            event = make(self.now)
            self.sessions(event)

            def shows_step(d: Any, count: int = number, stage: str = expected) -> bool:
                stages = d.execute_script(STAGES)
                return len(stages) >= count and stages[count - 1] == stage

            yield self.in_browser(partial(self.wait_for, driver, shows_step, event.stage.value))
            seen.append(expected)
        row_state = yield self.in_browser(
            lambda: self.wait_for(
                driver,
                lambda d: "booted" if d.execute_script(STATES) == ["booted"] else False,
                "booted",
            )
        )
        self.assertEqual(row_state, "booted")
        shown = yield self.in_browser(lambda: driver.execute_script(STAGES))
        self.assertEqual(shown, seen)
        text = yield self.in_browser(lambda: driver.find_element(By.ID, "timeline").text)
        self.assertIn("undionly.kpxe", text)
        self.assertIn("/compute/vmlinuz", text)

        # Explain for any MAC, from the same page.
        def explain() -> str:
            field = driver.find_element(By.ID, "explain-mac")
            field.clear()
            field.send_keys("52:54:00:aa:bb:cc")
            driver.find_element(By.CSS_SELECTOR, "#explain-form button").click()
            self.wait_for(
                driver,
                lambda d: "decision:" in d.find_element(By.ID, "explain-out").text,
                "explain",
            )
            return str(driver.find_element(By.ID, "explain-out").text)

        explained = yield self.in_browser(explain)
        self.assertIn("by policy arch", explained)

        # Two more machines: one stuck after its NBP long ago, one mid-boot.  Stuck sorts first.
        stuck, busy = "52:54:00:77:00:21", "52:54:00:77:00:22"
        self.bind_lease(stuck, "10.77.1.7")
        self.bind_lease(busy, "10.77.1.8")
        for mac, ago, make in (
            (stuck, 400.0, BOOT[0]),
            (stuck, 399.0, BOOT[1]),
            (stuck, 398.0, BOOT[2]),
            (busy, 3.0, BOOT[0]),
            (busy, 2.0, BOOT[1]),
        ):
            self.sessions(attrs.evolve(make(self.now - ago), mac=MacAddress.parse(mac)))
        self.sweep()  # the recorder's timer: the machine silent since its NBP is stuck

        def stuck_first(d: Any) -> Any:
            states = d.execute_script(STATES)
            return states if len(states) == 3 else False

        states = yield self.in_browser(lambda: self.wait_for(driver, stuck_first, "three rows"))
        self.assertEqual(states, ["stuck", "in-progress", "booted"])
        banner = yield self.in_browser(lambda: driver.find_element(By.ID, "stuck-banner").text)
        self.assertIn(f"{stuck} at nbp", banner)

        def filtered(text: str) -> Any:
            field = driver.find_element(By.ID, "machine-filter")
            field.clear()
            field.send_keys(text)
            return driver.execute_script(STATES)

        only = yield self.in_browser(lambda: filtered("node1"))
        self.assertEqual(only, ["booted"])
        only = yield self.in_browser(lambda: filtered("stuck nbp"))
        self.assertEqual(only, ["stuck"])
        count = yield self.in_browser(lambda: driver.find_element(By.ID, "machine-count").text)
        self.assertEqual(count, "(1 of 3)")
        yield self.in_browser(lambda: filtered(""))  # (clear() fires no input event: next poll)
        everything = yield self.in_browser(
            lambda: self.wait_for(driver, stuck_first, "all rows again")
        )
        self.assertEqual(len(everything), 3)
        OUTPUT.mkdir(parents=True, exist_ok=True)
        shot = OUTPUT / "dashboard.png"
        saved = yield self.in_browser(lambda: driver.save_screenshot(str(shot)))
        self.assertTrue(saved)
        self.assertGreater(shot.stat().st_size, 10_000)

    @defer.inlineCallbacks
    def test_a_wrong_token_is_refused(self) -> Gen:
        from selenium.webdriver.common.by import By

        driver = yield self.in_browser(browser)
        self.addCleanup(lambda: threads.deferToThread(driver.quit))

        def try_token() -> str:
            driver.get(self.base + "/")
            self.wait_for(driver, lambda d: d.find_element(By.ID, "token").is_displayed(), "login")
            driver.find_element(By.ID, "token").send_keys("not-the-token-0000000000")
            driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
            self.wait_for(driver, lambda d: d.find_element(By.ID, "login-error").text, "refusal")
            return str(driver.find_element(By.ID, "login-error").text)

        message = yield self.in_browser(try_token)
        self.assertIn("refused", message)
        hidden = yield self.in_browser(lambda: driver.find_element(By.ID, "app").is_displayed())
        self.assertFalse(hidden)


#: Click the element a selector finds (its text, or null when there is none).
CLICK = (
    "const e = document.querySelector(arguments[0]); if (!e) return null;"
    " e.click(); return e.textContent"
)
#: Its text, or (second argument true) whether it is armed for its second click.
TEXT = (
    "const e = document.querySelector(arguments[0]); if (!e) return null;"
    " return arguments[1] ? e.dataset.armed === 'yes' : e.textContent"
)


class DashboardActionTests(ApiTestCase):
    timeout = 240

    @defer.inlineCallbacks
    def test_write_token_releases_a_lease_and_resets_boot_once(self) -> Gen:
        from selenium.webdriver.common.by import By

        self.bind_lease("52:54:00:aa:00:01", "10.77.1.5")
        self.boot_once.used.add(MacAddress.parse(MAC))
        driver = yield threads.deferToThread(browser)
        self.addCleanup(lambda: threads.deferToThread(driver.quit))
        wait = waiter(driver)
        release = '#leases tr[data-address="10.77.1.5"] button'
        reset = "#machine-actions button"

        def click_twice(selector: str) -> str:
            # by script: the page redraws its lists at every poll (no stale elements)
            wait.until(lambda d: d.execute_script(CLICK, selector) is not None)
            wait.until(lambda d: d.execute_script(TEXT, selector, True))
            first = str(driver.execute_script(TEXT, selector, False))
            driver.execute_script(CLICK, selector)
            return first

        def act() -> tuple[str, str]:
            driver.get(self.base + "/")
            wait.until(lambda d: d.find_element(By.ID, "token").is_displayed())
            driver.find_element(By.ID, "token").send_keys(WRITE)
            driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
            asked = click_twice(release)
            wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, release))
            click(driver, ROW)
            confirm = click_twice(reset)
            wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, reset))
            return asked, confirm

        asked, confirm = yield threads.deferToThread(act)
        self.assertEqual((asked, confirm), ("release it?", "netboot it once more?"))
        self.assertEqual([lease.state.value for lease in self.table.leases()], ["released"])
        self.assertEqual(self.boot_once.resets, [MacAddress.parse(MAC)])

    @defer.inlineCallbacks
    def test_read_token_gets_no_buttons(self) -> Gen:
        from selenium.webdriver.common.by import By

        self.bind_lease("52:54:00:aa:00:01", "10.77.1.5")
        self.boot_once.used.add(MacAddress.parse(MAC))
        driver = yield threads.deferToThread(browser)
        self.addCleanup(lambda: threads.deferToThread(driver.quit))

        def look() -> int:
            wait = waiter(driver)
            driver.get(self.base + "/")
            wait.until(lambda d: d.find_element(By.ID, "token").is_displayed())
            driver.find_element(By.ID, "token").send_keys(READ)
            driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
            wait.until(
                lambda d: d.find_elements(By.CSS_SELECTOR, '#leases tr[data-address="10.77.1.5"]')
            )
            click(driver, ROW)
            wait.until(lambda d: d.find_element(By.ID, "timeline-mac").text == MAC)
            return len(
                driver.find_elements(By.CSS_SELECTOR, "#leases button, #machine-actions button")
            )

        buttons = yield threads.deferToThread(look)
        self.assertEqual(buttons, 0)
