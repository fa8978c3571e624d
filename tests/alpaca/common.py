"""Shared set-up of the alpaca-py programs run against tickgate (see tests/api/alpaca/py.rs).

The programs use alpaca-py exactly as a user would, with url_override pointing at tickgate.
Test data is published through tickgate's own POST /v1/publish with `requests` (installed
with alpaca-py). Each program exits 0 when every check held; a failed check raises.
"""

import datetime as dt
import logging
import os
import threading
import time

import requests

HTTP = os.environ["TICKGATE_HTTP"]
WS = os.environ["TICKGATE_WS"]
ADMIN_TOKEN = os.environ["TICKGATE_ADMIN_TOKEN"]
KEY = "demo-key"
SECRET = "demo-secret"


def publish(events):
    response = requests.post(
        HTTP + "/v1/publish",
        json=events,
        headers={"Authorization": "Bearer " + ADMIN_TOKEN},
        timeout=10,
    )
    response.raise_for_status()
    return response.json()


def iso(moment):
    return moment.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def wait_for(condition, what, timeout=20.0, step=None):
    """Polls until condition() holds, calling step() between polls; fails after timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        if step is not None:
            step()
        time.sleep(0.1)


def run_in_thread(stream):
    thread = threading.Thread(target=stream.run, daemon=True)
    thread.start()
    return thread


class Captured(logging.Handler):
    """Keeps the messages alpaca-py logs, to see the errors it reports."""

    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def saw(self, text):
        return any(text in message for message in self.messages)


def capture_logs(name):
    handler = Captured()
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def check(condition, message):
    if not condition:
        raise AssertionError(message)
