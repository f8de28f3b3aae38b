"""Fixtures of the HTML report tests: one headless Chromium per session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from report_helpers import CHROMIUM_ARGS, SENTINEL_JS, find_binary


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's chromium + chromedriver through selenium; skip without them (fail under CI)."""
    chromium = find_binary("chromium", "chromium-browser")
    driver_bin = find_binary("chromedriver")
    if chromium is None or driver_bin is None:
        msg = "chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile_dir = tempfile.mkdtemp(prefix="autotune-chromium-")
    options = webdriver.ChromeOptions()
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={profile_dir}", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_bin))
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": SENTINEL_JS})
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile_dir, ignore_errors=True)
