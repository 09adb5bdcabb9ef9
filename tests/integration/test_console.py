"""The console in a real browser (issue 26): Playwright drives Debian's chromium. The page shows the writer,
follows a failover by itself (no reload), and runs a switchover that an operator confirms."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import PGAURORA, admin, refused, service_config

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "console.png"


def _login_url(svc) -> str:
    out = subprocess.run([*PGAURORA, "console", "--url", "--admin", svc.admin_url], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is installed by .ci/run")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def test_the_console_follows_a_failover_by_itself_and_runs_a_confirmed_switchover(
    fresh_cluster, service, browser, tmp_path
):
    cluster = fresh_cluster(replicas=2)
    config = service_config(cluster, monitor={"probe_interval": 0.5}, heal={"enabled": True, "backoff": 0.2})
    svc = service(config, cluster)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(_login_url(svc))
    assert "token=" not in page.url  # traded for a cookie, and gone from the address bar
    page.wait_for_function("document.getElementById('writer').textContent === 'n1'", timeout=10_000)
    page.wait_for_selector("#live.on", timeout=10_000)
    page.evaluate("window.notReloaded = true")

    killed = time.monotonic()
    cluster.primary.kill()
    page.wait_for_function(
        "!['n1', 'none', '-'].includes(document.getElementById('writer').textContent)", timeout=3_000
    )
    page.wait_for_selector("#events li[data-kind=failover] [data-phase=promoted]", timeout=3_000)
    shown = time.monotonic() - killed
    assert page.evaluate("window.notReloaded === true"), "the page was reloaded"
    new_writer = page.inner_text("#writer")
    assert new_writer == svc.topology.writer
    phases = page.inner_text("#events li[data-kind=failover] .phases")
    assert "detected" in phases and "promoted" in phases, phases
    print(f"the page showed the new writer {new_writer} and the failover {shown:.2f} s after the kill")

    target = next(n.name for n in cluster.nodes if n.name not in ("n1", new_writer))
    page.on("dialog", lambda dialog: dialog.accept())
    page.wait_for_function(
        f"[...document.getElementById('target').options].some(o => o.value === '{target}')", timeout=10_000
    )
    page.select_option("#target", target)
    page.click("#switchover")
    page.wait_for_function(f"document.getElementById('writer').textContent === '{target}'", timeout=30_000)
    page.wait_for_selector("#result:has-text('done')", timeout=30_000)
    assert svc.topology.writer == target
    page.wait_for_function(  # every node healed and healthy again: the picture the README shows
        "document.querySelectorAll('#nodes td.healthy').length === 3", timeout=30_000
    )
    shot = SCREENSHOT if os.environ.get("PGAURORA_SCREENSHOT") else tmp_path / "console.png"  # the README's: set it
    page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    phone = browser.new_page(viewport={"width": 390, "height": 844})
    phone.goto(_login_url(svc))
    phone.wait_for_function(f"document.getElementById('writer').textContent === '{target}'", timeout=10_000)
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px screen"


def test_the_console_refuses_a_browser_without_a_session_and_a_change_without_its_header(fresh_cluster, service):
    cluster = fresh_cluster(replicas=1)
    svc = service(service_config(cluster), cluster)
    status, _ = refused(svc.admin_url + "/", "GET", token="")
    assert status == 401
    status, _ = refused(svc.admin_url + "/?token=not-a-session", "GET", token="")
    assert status == 401
    url = admin(svc.admin_url + "/console/sessions", "POST", {"ttl": 60})["url"]

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as moved:
        opener.open(url, timeout=10)
    assert moved.value.code == 303
    cookie = moved.value.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie, cookie
    session = cookie.split(";")[0]
    forged = urllib.request.Request(svc.admin_url + "/drain/n2", method="POST", data=b"{}",
                                    headers={"Cookie": session, "Content-Type": "application/json"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as csrf:
        urllib.request.urlopen(forged, timeout=10)
    assert csrf.value.code == 403  # a form on another site cannot add the console's header
    page = urllib.request.Request(svc.admin_url + "/", headers={"Cookie": session})
    with urllib.request.urlopen(page, timeout=10) as response:
        assert b"<title>pgaurora</title>" in response.read()
