"""Headless Chromium for the browser tests: Debian's ``chromium`` and ``chromium-driver`` (``make
browser`` installs them), driven by Selenium, with the console logged so tests can assert it is clean.

Without Chromium, chromedriver or Selenium a test skips with the reason, except under ``CI=true``,
where that is a failure (CI runs ``make browser``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

# What a page may do: nothing over the network beyond 127.0.0.1. Every other host fails to resolve, and
# any request that still tried would go to a proxy on a closed port (loopback bypasses the proxy,
# unless ``<-loopback>`` is added to the bypass list, as for pages opened from disk).
NO_NETWORK = ("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=127.0.0.1:9")


def missing(reason: str) -> None:
    """Skip with ``reason``, or fail under ``CI=true``."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@contextmanager
def chromium(*, width: int, height: int, arguments: Sequence[str] = NO_NETWORK) -> Iterator[Any]:
    """A headless Chromium WebDriver with its console logged (``driver.get_log("browser")``)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        missing(
            "chromium or chromedriver is not installed "
            "(apt-get install -y chromium chromium-driver, or `make browser`)"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium is not installed (pip install -e '.[dev]')")
    options = webdriver.ChromeOptions()
    options.binary_location = str(binary)  # given, so Selenium Manager never looks for (or downloads) one
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", *arguments):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(driver_path)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Any) -> list[dict[str, Any]]:
    """The console's SEVERE entries (errors, failed loads) since the last call."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def set_viewport(driver: Any, width: int, height: int, *, mobile: bool = False) -> None:
    """Make the page's viewport (what a screenshot shows) ``width`` x ``height`` CSS pixels, by
    Chromium's device emulation: a window cannot be narrower than about 500 pixels, a phone is."""
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
