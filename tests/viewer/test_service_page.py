"""The viewer in ``rlm serve`` (``/view/``), in headless Chromium against the real
service: a login form, the tenant's own runs only, and a run followed live."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from rlm.testing import OfflineModelServer
from tests.service.api_support import SCRIPTS, TOKENS, Service, wait_status
from tests.viewer.support import css, text_of, wait_for

#: The "pause" profile's root model waits in a sub-call long enough to be watched.
PAUSE = ["```repl\nx = llm_query('[[sleep:4]] a pause')\nprint(x)\n```", "FINAL(after the pause)"]
CONTEXT = "first line\nthe code is 42\nlast line"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with OfflineModelServer(scripts={**SCRIPTS, "root-pause": PAUSE}) as model_server:
        folder: Path = tmp_path_factory.mktemp("service")
        running = Service(folder, model_server, str(folder / "rlm.db")).start()
        try:
            yield running
        finally:
            assert running.stop() == 0


def start_run(client: httpx.Client, profile: str, query: str) -> str:
    reply = client.post("/v1/runs", json={"profile": profile, "query": query, "context": CONTEXT})
    assert reply.status_code == 202, reply.text
    run_id: str = reply.json()["id"]
    return run_id


def sign_in(browser: WebDriver, token: str) -> None:
    field = wait_for(lambda: css(browser, "form.login input[type=password]"), 10, "the form")[0]
    field.clear()
    field.send_keys(token)
    css(browser, "form.login button[type=submit]")[0].click()


def test_the_page_holds_no_tenant_data_and_a_strict_policy(service: Service) -> None:
    with service.client() as client:
        run_id = start_run(client, "rlm", "What is the code?")
        wait_status(client, run_id, {"succeeded"})
    for path in ("/view/", "/view/static/service.js", "/view/static/tree.js"):
        reply = httpx.get(service.url + path)  # no token
        assert reply.status_code == 200, path
        assert run_id not in reply.text and "acme" not in reply.text
        policy = reply.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert httpx.get(service.url + "/view").status_code in (307, 200)
    assert httpx.get(service.url + "/view/static/..%2Fpages.py").status_code == 404


def test_a_tenant_sees_only_its_runs_and_one_run_live(browser: WebDriver, service: Service) -> None:
    with service.client("acme") as acme, service.client("globex") as globex:
        mine = start_run(acme, "rlm", "What is the code?")
        theirs = start_run(globex, "rlm", "globex's own question")
        assert wait_status(acme, mine, {"succeeded"})["status"] == "succeeded"
        assert wait_status(globex, theirs, {"succeeded"})["status"] == "succeeded"
        browser.get(service.url + "/view/")
        sign_in(browser, "not-a-token")
        wait_for(lambda: "the token was refused" in text_of(browser), 10, "the refusal")
        sign_in(browser, TOKENS["acme"])
        wait_for(lambda: css(browser, f"tr.run-row[data-run-id='{mine}']"), 10, "acme's run")
        listed = text_of(browser, ".runs-table")
        assert theirs not in listed and "globex's own question" not in listed
        assert browser.execute_script("return localStorage.length") == 0  # the tab only
        assert browser.get_cookies() == []
        browser.execute_script("window.stillHere = 'yes'")

        # A new run shows up in the list by itself; its page follows it as it runs.
        live = start_run(acme, "pause", "Wait, then answer.")
        row = wait_for(lambda: css(browser, f"tr.run-row[data-run-id='{live}']"), 10, "new run")
        row[0].click()
        wait_for(lambda: css(browser, ".iteration[data-iteration='1'] .cell"), 10, "the cell")
        assert acme.get(f"/v1/runs/{live}").json()["status"] == "running"
        assert not css(browser, ".final")
        assert "running…" in text_of(browser, ".iteration[data-iteration='1']")
        final = wait_for(lambda: css(browser, ".final .answer"), 20, "the final answer")
        assert final[0].text.strip() == "after the pause"
        wait_for(lambda: "succeeded" in text_of(browser, ".run-status"), 10, "the status")
        assert browser.execute_script("return window.stillHere") == "yes"  # no reload

        # Another tenant's run is not there for this one, even by its id.
        browser.get(f"{service.url}/view/#run/{theirs}")
        wait_for(lambda: f"no run '{theirs}'" in text_of(browser), 10, "the 404")
        assert "globex's own question" not in text_of(browser)
        css(browser, "button.logout")[0].click()
        wait_for(lambda: css(browser, "form.login"), 10, "the form again")
        assert browser.execute_script("return sessionStorage.length") == 0
