"""Watch one machine's boot on the dashboard, in headless Chromium, as an operator would.

Run inside the server namespace of a lab (where the API listens on loopback)::

    python tests/api/dashboard_watch.py --url http://127.0.0.1:8090/ --token-file T \\
        --mac 52:54:00:77:0a:02 --until os-up --ready R --screenshot S

It signs in with the token (typed into the page), selects the machine, writes ``R`` when it is
watching, then records every change of the boot timeline the page shows (the stages of its
items, in order) until a stage ``--until`` appears or ``--timeout`` passes, saves a
screenshot, and prints ``{"observations": [[seconds, [stages...]], ...], "state": ...}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

STAGES = "return [...document.querySelectorAll('#timeline li')].map((li) => li.dataset.stage)"
STATE = "const row = document.querySelector(arguments[0]); return row ? row.dataset.state : null"


def browser(window: str) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={window}",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(
        service=Service(shutil.which("chromedriver") or "chromedriver"), options=options
    )


def click(driver: Any, selector: str, timeout: float = 60.0) -> None:
    """Click what ``selector`` finds, as an operator would, once it is on the page.

    The page redraws its lists at every poll (the machines every 2 s): a row found just before
    a redraw is stale by the time it is clicked, so finding and clicking are retried together.
    """
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def attempt(d: Any) -> bool:
        found = d.find_elements(By.CSS_SELECTOR, selector)
        if not found:
            return False
        found[0].click()
        return True

    WebDriverWait(
        driver, timeout, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
    ).until(attempt, f"click {selector}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--mac", required=True)
    parser.add_argument("--until", default="os-up")
    parser.add_argument("--ready", required=True)
    parser.add_argument("--screenshot", required=True)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--window", default="1440,1000")
    args = parser.parse_args()

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    token = Path(args.token_file).read_text().strip()
    row = f'#machines tr[data-mac="{args.mac}"]'
    driver = browser(args.window)
    try:
        wait = WebDriverWait(driver, 60, poll_frequency=0.2)
        driver.get(args.url)
        wait.until(lambda d: d.find_element(By.ID, "token").is_displayed())
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
        click(driver, row)
        wait.until(lambda d: d.find_element(By.ID, "timeline-mac").text == args.mac)
        Path(args.ready).write_text("watching\n")
        start = time.monotonic()
        observations: list[tuple[float, list[str]]] = []
        last: list[str] | None = None
        while time.monotonic() - start < args.timeout:
            # one script: the page replaces the list at every poll (no stale elements)
            stages = [str(stage) for stage in driver.execute_script(STAGES)]
            if stages != last:
                observations.append((round(time.monotonic() - start, 2), stages))
                last = stages
            if args.until in stages:
                break
            time.sleep(0.2)
        state = driver.execute_script(STATE, row)
        deadline = time.monotonic() + 10
        while state != "booted" and time.monotonic() < deadline:  # the list polls every 2 s
            time.sleep(0.3)
            state = driver.execute_script(STATE, row)
        driver.save_screenshot(args.screenshot)
        json.dump({"observations": observations, "state": state}, sys.stdout)
        sys.stdout.write("\n")
    finally:
        driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
