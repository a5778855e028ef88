"""Headless Chromium for the console's tests (Selenium, Debian's chromium and chromedriver).

``checked(driver, origin, screenshot)`` ends a test's browser: it saves a screenshot, then
fails on JavaScript console errors and on requests that left ``origin``. A test that
provokes an HTTP error on purpose lists it in ``driver.expected_errors`` (Chromium logs
every 4xx response as an error): an entry containing one of those strings is allowed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver"
)


def chromium():
    """Headless Chromium from the Debian packages, logging the page's console."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1400"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


def checked(driver, origin: str, screenshot: Path) -> None:
    """Quit ``driver`` after saving a screenshot; no console errors, nothing fetched elsewhere."""
    try:
        driver.save_screenshot(str(screenshot))  # kept by pytest
        expected = getattr(driver, "expected_errors", ())
        errors = [
            e
            for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and not any(x in e["message"] for x in expected)
        ]
        resources = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
    finally:
        driver.quit()
    assert not errors, f"JavaScript console errors: {errors}"
    outside = [r for r in resources if not r.startswith((origin, "data:", "blob:"))]
    assert not outside, f"requests left the machine: {outside}"


def text(driver, element_id: str) -> str:
    """The text of the element ``element_id``; empty while there is none."""
    return (
        driver.execute_script(
            "const e = document.getElementById(arguments[0]); return e ? e.textContent : null",
            element_id,
        )
        or ""
    )
