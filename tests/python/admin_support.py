"""The broker's admin HTTP endpoint as the tests read it: `/metrics`
(Prometheus text), `/api/health` (JSON) and the management API (`api`,
HTTP Basic as guest unless told), on 127.0.0.1 at the broker's admin port.
Every request is bounded by a timeout."""

import base64
import json
import urllib.error
import urllib.request

HTTP_TIMEOUT = 5.0


def _get(broker, path):
    """(status, body text) of GET `path`; a 4xx/5xx answer is returned,
    not raised."""
    url = f"http://127.0.0.1:{broker.admin_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metrics(broker):
    """Every unlabelled sample of `/metrics`: {name: value} (ints where
    the value is integral)."""
    status, text = _get(broker, "/metrics")
    assert status == 200, (status, text)
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if "{" in name:
            continue
        v = float(value)
        out[name] = int(v) if v.is_integer() else v
    return out


def metric(broker, name):
    """One unlabelled sample of `/metrics`; fails the test if absent."""
    got = metrics(broker)
    assert name in got, f"no {name} in /metrics"
    return got[name]


def memory_alarm(broker):
    """The `junction_memory_alarm` gauge."""
    return metric(broker, "junction_memory_alarm")


def disk_alarm(broker):
    """The `junction_disk_alarm` gauge."""
    return metric(broker, "junction_disk_alarm")


def health(broker):
    """`/api/health`: (HTTP status, decoded JSON body)."""
    status, text = _get(broker, "/api/health")
    return status, json.loads(text)


def api(broker, method, path, body=None, user="guest", password="guest", headers=None):
    """A management API request: (status, decoded JSON body or None when
    empty or not JSON, response headers). `user=None` sends no
    credentials; `body` (not None) is sent as JSON, or as it is when it
    is bytes."""
    url = f"http://127.0.0.1:{broker.admin_port}{path}"
    h = dict(headers or {})
    data = None
    if isinstance(body, bytes):
        data = body
        h["Content-Type"] = "application/json"
    elif body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        h["Authorization"] = f"Basic {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as r:
            status, raw, got = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, raw, got = e.code, e.read(), e.headers
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    return status, parsed, got
