"""MQTT.js and @stomp/stompjs in a real headless Chromium, talking to
Junction over WebSocket (docs/websocket.md). The page (web/ws_page.html,
with the npm packages' bundles from web/vendor/) is served by this test on
127.0.0.1; it subscribes with both libraries and sends a request with
each. The test then asserts what the page shows:

- a message a pika publisher sent to amq.topic (both libraries);
- a message a paho TCP client published (both);
- the reply a pika service sent to each request (MQTT 5 Response Topic
  and Correlation Data; STOMP reply-to /temp-queue/ and correlation-id).

A screenshot of the page is saved under tests/python/output/websocket/.
"""

import functools
import http.server
import threading
import urllib.parse
from pathlib import Path

import pika
import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from browser_support import browser  # noqa: F401 (fixture)
from mqtt_support import clients  # noqa: F401 (fixture)

pytestmark = pytest.mark.deadline(120)

WEB = Path(__file__).parent / "web"
SHOTS = Path(__file__).parent / "output" / "websocket"
WAIT = 15


@pytest.fixture
def page_server():
    """Serves tests/python/web on 127.0.0.1 (any free port)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(WEB))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def items(driver, list_id):
    return [li.text for li in driver.find_elements(By.CSS_SELECTOR, f"#{list_id} li")]


def wait_for(driver, what, cond):
    try:
        return WebDriverWait(driver, WAIT).until(lambda d: cond(d))
    except TimeoutException:
        SHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SHOTS / "failed.png"))
        errors = driver.find_element(By.ID, "errors").text
        pytest.fail(
            f"page: no {what} within {WAIT} s; mqtt {items(driver, 'mqtt-messages')}, "
            f"stomp {items(driver, 'stomp-messages')}, errors {errors!r}"
        )


def test_browser_clients_over_websocket(make_broker, browser, page_server, clients):  # noqa: F811
    b = make_broker(
        # The page's origin is the only one allowed.
        extra_config=f'[websocket]\nallowed_origins = ["{page_server}"]\n',
    )
    # The services answering the page's requests: pika consumers that reply
    # to reply_to with the request's correlation id.
    conn = b.connect()
    ch = conn.channel()
    ch.queue_declare("svc-mqtt")
    ch.queue_bind("svc-mqtt", "amq.topic", "svc.echo")
    ch.queue_declare("svc-stomp")

    def answer(ch_, method, props, body):
        ch_.basic_publish(
            "",
            props.reply_to,
            b"reply to " + body,
            pika.BasicProperties(correlation_id=props.correlation_id),
        )
        ch_.basic_ack(method.delivery_tag)

    ch.basic_consume("svc-mqtt", answer)
    ch.basic_consume("svc-stomp", answer)

    query = urllib.parse.urlencode(
        {
            "mqtt": b.ports["mqtt-ws"],
            "stomp": b.ports["stomp-ws"],
            "user": "guest",
            "password": "guest",
            "topic": "plant/7/#",
            "mreq": "svc/echo",
            "sreq": "svc-stomp",
        }
    )
    browser.get(f"{page_server}/ws_page.html?{query}")
    wait_for(
        browser,
        "subscriptions",
        lambda d: d.find_element(By.ID, "mqtt-state").text == "subscribed"
        and d.find_element(By.ID, "stomp-state").text == "subscribed",
    )
    # Replies come while pika serves its consumers.
    deadline_events = 50
    for _ in range(deadline_events):
        conn.process_data_events(time_limit=0.1)
        if any("reply to" in t for t in items(browser, "mqtt-messages")) and any(
            "reply to" in t for t in items(browser, "stomp-messages")
        ):
            break
    # A pika publisher and a paho TCP client publish to the page's topic.
    ch.basic_publish("amq.topic", "plant.7.temp", b"21.5 from pika")
    paho = clients.connect(b)
    paho.publish("plant/7/humidity", b"40% from paho", qos=1)

    mqtt_want = [
        "plant/7/temp 21.5 from pika",
        "plant/7/humidity 40% from paho",
    ]
    stomp_want = [
        "/topic/plant.7.temp 21.5 from pika",
        "/topic/plant.7.humidity 40% from paho",
    ]
    wait_for(browser, "the published messages", lambda d: all(w in items(d, "mqtt-messages") for w in mqtt_want) and all(w in items(d, "stomp-messages") for w in stomp_want))
    mqtt_got = items(browser, "mqtt-messages")
    stomp_got = items(browser, "stomp-messages")
    replies = [t for t in mqtt_got if t.startswith("replies/")]
    assert len(replies) == 1 and replies[0].endswith(" reply to ping from MQTT.js corr=mqtt-1"), mqtt_got
    assert "/temp-queue/replies reply to ping from stompjs corr=stomp-1" in stomp_got, stomp_got
    assert browser.find_element(By.ID, "errors").text == ""
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SHOTS / "ws_page.png"))
    conn.close()
