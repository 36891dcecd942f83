"""What the browser tests share: headless Chromium that reaches loopback only, and a bounded wait."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def wait_for(what: str, timeout: float, condition):
    """Polls `condition` until it returns something truthy and returns that; fails after `timeout` seconds.
    Exceptions count as "not yet" (a page or server that is not up); the last one is in the failure message."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as error:  # not up yet
            last_error = error
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s: {what} (last error: {last_error})")


@pytest.fixture
def browser():
    """Headless Chromium: every host name but 127.0.0.1 resolves to nothing, and background networking (updates,
    sync, safe browsing) is off."""
    options = webdriver.ChromeOptions()
    for argument in [
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1250",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--safebrowsing-disable-auto-update",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ]:
        options.add_argument(argument)
    for candidate in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if os.path.exists(candidate):
            options.binary_location = candidate
            break
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
