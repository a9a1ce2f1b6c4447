"""A real headless Chromium from Debian (`chromium` + `chromium-driver`,
which scripts/setup installs), driven by selenium, for the tests of what a
browser shows or speaks (the web console, MQTT and STOMP over WebSocket)."""

import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

# Seconds a page has to load.
PAGE_LOAD = 15


def chromium_paths():
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    assert browser and driver, "chromium and chromium-driver are not installed (scripts/setup installs them)"
    return browser, driver


@pytest.fixture
def browser():
    """A headless Chromium session, quit at teardown."""
    binary, driver_path = chromium_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    driver.set_page_load_timeout(PAGE_LOAD)
    try:
        yield driver
    finally:
        driver.quit()
