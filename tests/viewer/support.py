"""Helpers for the viewer's tests: a headless Chromium, an ``rlm view`` server in a
thread, waits, and trajectories written to order."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from rlm.viewer.server import bind, build_viewer

T = TypeVar("T")


def chromium() -> WebDriver:
    """Debian's chromium, headless, through Debian's chromedriver (set up by
    scripts/setup-browser.sh; missing, this fails saying so)."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        raise RuntimeError("chromium or chromedriver is missing: run scripts/setup-browser.sh")
    options = Options()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=DriverService(driver), options=options)


def wait_for(check: Callable[[], T | None], timeout: float = 10, what: str = "it") -> T:
    """``check()``'s first truthy value, polled until ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception:  # the page is mid-redraw: an element went stale
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def css(driver: WebDriver, selector: str) -> list[WebElement]:
    return driver.find_elements("css selector", selector)


def text_of(driver: WebDriver, selector: str = "#app") -> str:
    """The text content of the first match, hidden parts included."""
    value = driver.execute_script(
        "const n = document.querySelector(arguments[0]); return n ? n.textContent : '';", selector
    )
    return str(value)


@contextmanager
def viewer(path: Path) -> Iterator[str]:
    """``rlm view path``'s app on a free loopback port, in a thread; yields its URL."""
    sock = bind(0)
    config = uvicorn.Config(build_viewer(path), lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10, "the viewer to start")
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def write_events(path: Path, events: list[dict[str, Any]], mode: str = "a") -> None:
    with path.open(mode, encoding="utf-8") as file:
        for event in events:
            file.write(json.dumps(event) + "\n")


def event(kind: str, t: float, run: str = "r00t", **fields: Any) -> dict[str, Any]:
    """One event of run ``run`` (the root unless ``parent`` is given)."""
    parent = fields.pop("parent", None)
    depth = fields.pop("depth", 0 if parent is None else 1)
    return {
        "event": kind,
        "session": run,
        "run_id": run,
        "parent_id": parent,
        "depth": depth,
        **fields,
        "t": t,
    }


def iteration(n: int, t: float, code: str, stdout: str, **more: Any) -> list[dict[str, Any]]:
    """A root call, its cell and the cell's output."""
    reply = more.pop("reply", f"step {n}\n```repl\n{code}\n```")
    return [
        event("root_call", t, iteration=n, model="root-m", text=reply, prompt_tokens=10,
              completion_tokens=5, seconds=0.01, **more),
        event("cell", t + 0.01, iteration=n, code=code, **more),
        event("output", t + 0.05, iteration=n, stdout=stdout, stderr="", error=None,
              timed_out=False, duration_s=0.04, state_lost=False, truncated=False, final=None,
              **more),
    ]  # fmt: skip
