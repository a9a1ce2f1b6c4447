"""The web console (docs/management.md) in a real headless Chromium from
Debian (`chromium` + `chromium-driver`, which scripts/setup installs),
driven by selenium: logging in, refused without or with bad credentials,
a queue that an AMQP publisher filled shown with its depth, peeked and
purged from the console, an MQTT client listed and its connection closed,
the other pages drawn. Each run saves screenshots of the main pages in
tests/python/output/console/.
"""

import shutil
from pathlib import Path

import pytest
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from admin_support import api
from browser_support import browser  # noqa: F401 (fixture)
from mqtt_support import V5
from mqtt_support import clients  # noqa: F401 (fixture)

pytestmark = pytest.mark.deadline(120)

SHOTS = Path(__file__).parent / "output" / "console"
WAIT = 15


def shot(driver, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SHOTS / f"{name}.png"))


def until(driver, what, cond):
    try:
        # The live pages redraw every 2 s: an element found just before a
        # redraw is stale, and the next try finds the new one.
        wait = WebDriverWait(driver, WAIT, ignored_exceptions=(StaleElementReferenceException,))
        return wait.until(lambda d: cond(d))
    except TimeoutException:
        shot(driver, "failed-" + what.replace(" ", "-"))
        status = driver.find_element(By.ID, "status").text
        pytest.fail(f"console: no {what} within {WAIT} s (status line: {status!r})")


def act(driver, by, sel, do):
    """`do(element)` on a fresh find, again if a redraw made it stale."""
    for _ in range(5):
        try:
            return do(driver.find_element(by, sel))
        except StaleElementReferenceException:
            continue
    return do(driver.find_element(by, sel))


def text_of(driver, css):
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else None


def log_in(driver, user, password):
    until(driver, "login form", lambda d: d.find_element(By.ID, "login").is_displayed())
    for field, value in (("login-user", user), ("login-password", password)):
        el = driver.find_element(By.ID, field)
        el.clear()
        el.send_keys(value)
    driver.find_element(By.ID, "login-submit").click()


def test_console_in_a_real_browser(broker, browser, clients):
    shutil.rmtree(SHOTS, ignore_errors=True)  # this run's screenshots only
    base = f"http://127.0.0.1:{broker.admin_port}/"
    # Without credentials the API refuses; the console asks for them.
    assert api(broker, "GET", "/api/queues", user=None)[0] == 401
    browser.get(base)
    log_in(browser, "guest", "wrong")
    until(browser, "login refusal", lambda d: d.find_element(By.ID, "login-error").is_displayed())
    assert browser.find_element(By.ID, "login-error").text.startswith("Login refused")
    assert not browser.find_element(By.ID, "nav").is_displayed()
    shot(browser, "login-refused")

    log_in(browser, "guest", "guest")
    until(browser, "overview", lambda d: text_of(d, "#total-queues .value") is not None)
    assert browser.find_element(By.ID, "who").text == "guest (administrator)"
    shot(browser, "overview")

    # A queue an AMQP publisher filled shows its depth.
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare("console-q")
    ch.confirm_delivery()
    for i in range(7):
        ch.basic_publish("", "console-q", f"order {i}".encode())
    browser.get(base + "#/queues")
    row = '#page tr[data-queue="console-q"] td.messages'
    until(browser, "console-q with 7 messages", lambda d: text_of(d, row) == "7")
    shot(browser, "queues")

    # Its page: peek, then purge.
    act(browser, By.LINK_TEXT, "console-q", lambda e: e.click())
    until(browser, "queue page", lambda d: text_of(d, "#queue-messages") == "7")
    act(browser, By.ID, "get-count", lambda e: (e.clear(), e.send_keys("2")))
    act(browser, By.ID, "peek", lambda e: e.click())
    until(browser, "peeked messages", lambda d: len(d.find_elements(By.CSS_SELECTOR, "#got td.payload")) == 2)
    payloads = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#got td.payload")]
    assert payloads == ["order 0", "order 1"]
    act(browser, By.ID, "purge", lambda e: e.click())
    until(browser, "purged queue", lambda d: text_of(d, "#queue-messages") == "0")
    assert ch.queue_declare("console-q", passive=True).method.message_count == 0
    shot(browser, "queue")

    # An MQTT client is listed, and its connection closed from the console.
    device = clients.connect(broker, version=V5, client_id="console-dev")
    assert device.subscribe("plant/+/temp", qos=1) == [1]
    browser.get(base + "#/mqtt")
    client_row = '#page tr[data-client="console-dev"] td.state'
    until(browser, "MQTT client console-dev", lambda d: text_of(d, client_row) == "connected")
    row_text = act(browser, By.CSS_SELECTOR, '#page tr[data-client="console-dev"]', lambda e: e.text)
    assert "plant/+/temp" in row_text
    shot(browser, "mqtt")
    browser.get(base + "#/connections")
    close = '#page tr[data-client-id="console-dev"] button.close'
    until(browser, "connection of console-dev", lambda d: d.find_elements(By.CSS_SELECTOR, close))
    shot(browser, "connections")
    act(browser, By.CSS_SELECTOR, close, lambda e: e.click())
    gone = device.wait_disconnected()
    assert (gone.by_server, gone.reason) == (True, 0x98)
    until(browser, "the closed connection gone", lambda d: not d.find_elements(By.CSS_SELECTOR, close))

    # The other pages draw.
    for page, marker in (("exchanges", '#page tr[data-exchange="amq.topic"]'), ("users", '#page tr[data-user="guest"]')):
        browser.get(base + "#/" + page)
        until(browser, page, lambda d: d.find_elements(By.CSS_SELECTOR, marker))
        shot(browser, page)
    browser.get(base + "#/definitions")
    until(browser, "definitions page", lambda d: d.find_elements(By.ID, "export"))
    browser.find_element(By.ID, "export").click()
    until(browser, "exported definitions", lambda d: '"console-q"' in d.find_element(By.ID, "definitions").text)
    shot(browser, "definitions")
    conn.close()


def test_a_user_without_management_tags_is_refused(make_broker, browser):
    b = make_broker(users=[("plain", "plain", ["/"])])
    browser.get(f"http://127.0.0.1:{b.admin_port}/")
    log_in(browser, "plain", "plain")
    until(browser, "login refusal", lambda d: d.find_element(By.ID, "login-error").is_displayed())
    assert browser.find_element(By.ID, "login-error").text == "Login refused: Not management user"
