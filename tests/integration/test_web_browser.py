"""The web page end to end: a real tracker and daemons, driven from a real headless Chromium
(Debian's /usr/bin/chromium through Playwright), and the page's defences against other sites.

Screenshots land in each test's ``tmp_path/screenshots``.
"""

import http.client
import http.server
import json
import os
import socket
import subprocess
import threading

import pytest

from peerit.daemon.node import local_addresses
from peerit.testing.files import random_file, sha256_of
from peerit.testing.localswarm import LocalSwarm
from peerit.testing.processes import environment, run_ctl, twistd_argv

pytestmark = pytest.mark.integration

MiB = 1 << 20
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
WEB = "tcp:0:interface=127.0.0.1"
SLOW = 120_000  # ms: a whole download on a loaded machine
SOON = 20_000  # ms: one event on a loaded machine (the page updates within a second)


@pytest.fixture
def swarm(tmp_path):
    with LocalSwarm(tmp_path / "swarm") as s:
        s.start_tracker()
        yield s


@pytest.fixture
def browser(tmp_path):
    """A fresh Chromium profile per test; no browser is ever downloaded."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed (bin/setup --test installs it)")
    from playwright.sync_api import sync_playwright
    playwright = sync_playwright().start()
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
        args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(SOON)
    yield context
    context.close()
    playwright.stop()


@pytest.fixture
def shots(tmp_path):
    directory = tmp_path / "screenshots"
    directory.mkdir()
    return directory


def login_url(swarm: LocalSwarm, name: str) -> str:
    return swarm.ctl(name, "ui").stdout.strip()


def base_of(url: str) -> str:
    return url.split("/login")[0]


def test_page_adds_watches_pauses_shares_and_removes(swarm, browser, shots, tmp_path):
    """The whole life of a download from the page: the .p2p chosen in the file input, the
    row reaching 100% live (no reload), the peer row naming its path, the bytes' sha256;
    then pause, resume, a share made from a typed path, and remove (keeping or deleting the
    data)."""
    from playwright.sync_api import expect
    src = random_file(tmp_path / "src" / "film.bin", 24 * MiB, seed=11)
    swarm.start_daemon("seed", "--max-upload-rate", "6M", "--web", WEB)
    swarm.start_daemon("dl", "--web", WEB)
    shared = swarm.ctl_json("seed", "share", str(src), "-o", str(tmp_path / "film.bin.p2p"))
    info_hash = shared["info_hash"]

    page = browser.new_page()
    page.goto(login_url(swarm, "dl"))
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator("#empty")).to_contain_text("Nothing shared or downloading yet")
    expect(page.locator("#d-trackers")).to_have_text("1 of 1 connected")
    page.screenshot(path=str(shots / "1-empty.png"))
    page.evaluate("window.notReloaded = true")

    page.set_input_files("#p2p-input", shared["metainfo"])
    row = page.locator(f'#transfers tr[data-id="{info_hash}"]')
    expect(row).to_be_visible()
    row.locator(".name-button").click()
    expect(page.locator("#detail")).to_be_visible()
    expect(page.locator("#peers tbody .path").first).to_have_text("LAN", timeout=SLOW)
    expect(page.locator("#peers tbody td.mono").nth(1)).to_contain_text("127.0.0.1:")
    page.screenshot(path=str(shots / "2-downloading.png"), full_page=True)
    expect(row.locator(".pct")).to_have_text("100%", timeout=SLOW)
    expect(row.locator(".state")).to_have_text("seeding")
    assert page.evaluate("window.notReloaded") is True  # it all came by events
    downloaded = swarm.daemons["dl"].data_dir / "downloads" / "film.bin"
    assert sha256_of(downloaded) == sha256_of(src)
    page.screenshot(path=str(shots / "3-complete.png"), full_page=True)

    toggle = row.locator(".row-actions button").first
    toggle.click()
    expect(row.locator(".state")).to_have_text("paused")
    assert swarm.status("dl", info_hash)["state"] == "paused"
    toggle.click()
    expect(row.locator(".state")).to_have_text("seeding")
    assert swarm.status("dl", info_hash)["state"] == "seeding"

    mine = random_file(tmp_path / "mine" / "notes.bin", 3 * MiB, seed=12)
    page.click("#share-button")
    page.fill("#share-path", str(mine))
    page.click("#share-submit")
    mine_row = page.locator("#transfers tr", has_text="notes.bin")
    expect(mine_row.locator(".state")).to_have_text("seeding")
    listed = {t["name"]: t for t in swarm.ctl_json("dl", "list")}
    assert listed["notes.bin"]["role"] == "seed"
    assert listed["notes.bin"]["path"] == str(mine)
    page.keyboard.press("Escape")
    page.screenshot(path=str(shots / "4-two-transfers.png"), full_page=True)

    mine_row.get_by_role("button", name="Remove notes.bin").click()
    expect(page.locator("#remove-dialog")).to_be_visible()
    page.click("#remove-confirm")
    expect(mine_row).to_have_count(0)
    assert mine.exists()  # removed without "delete its files": the original stays

    row.get_by_role("button", name="Remove film.bin").click()
    page.check("#remove-delete")
    expect(page.locator("#remove-warning")).to_be_visible()
    page.click("#remove-confirm")
    expect(row).to_have_count(0)
    expect(page.locator("#empty")).to_be_visible()
    assert not downloaded.exists()
    assert swarm.ctl_json("dl", "list") == []


def test_page_on_a_phone_sized_screen_in_dark_mode(swarm, browser, shots, tmp_path):
    """At 390 px the table turns into cards and the dark theme applies; nothing overflows
    sideways."""
    from playwright.sync_api import expect
    swarm.start_daemon("a", "--web", WEB)
    src = random_file(tmp_path / "src" / "a-rather-long-file-name-for-a-phone.bin", MiB, seed=3)
    swarm.ctl_json("a", "share", str(src), "-o", str(tmp_path / "x.p2p"))
    page = browser.new_page()
    page.set_viewport_size({"width": 390, "height": 844})
    page.emulate_media(color_scheme="dark")
    page.goto(login_url(swarm, "a"))
    expect(page.locator("#transfers .state")).to_have_text("seeding")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(17, 21, 27)"
    page.screenshot(path=str(shots / "phone-dark.png"), full_page=True)


def test_dropped_p2p_starts_a_download_and_the_keyboard_drives_the_detail(swarm, browser,
                                                                           tmp_path):
    """A .p2p dropped on the page starts a download (here waiting for peers: nobody seeds
    it); Tab reaches the row's name, Enter opens its detail, Escape closes it."""
    from playwright.sync_api import expect
    swarm.start_daemon("a", "--web", WEB)
    src = random_file(tmp_path / "src" / "dropped.bin", MiB, seed=7)
    p2p = tmp_path / "dropped.p2p"
    created = run_ctl("create", str(src), "-o", str(p2p), "--tracker", swarm.tracker_endpoint)
    assert created.returncode == 0, created.stderr
    page = browser.new_page()
    page.goto(login_url(swarm, "a"))
    expect(page.locator("#app")).to_be_visible()
    data = list(p2p.read_bytes())
    transfer = page.evaluate_handle("""(bytes) => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], "dropped.p2p"));
        return dt; }""", data)
    page.dispatch_event("body", "drop", {"dataTransfer": transfer})
    row = page.locator("#transfers tr", has_text="dropped.bin")
    expect(row.locator(".state")).to_have_text("waiting for peers")
    assert swarm.ctl_json("a", "list")[0]["role"] == "download"
    button = row.locator(".name-button")
    for _ in range(12):  # the header's buttons come first
        page.keyboard.press("Tab")
        if button.evaluate("b => b === document.activeElement"):
            break
    assert button.evaluate("b => b === document.activeElement")
    page.keyboard.press("Enter")
    expect(page.locator("#detail")).to_be_visible()
    expect(page.locator("#no-peers")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()


# -- defences ---------------------------------------------------------------------------------

def raw_request(base: str, method: str, path: str, headers: dict, body: bytes = b""):
    host, port = base.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for name, value in headers.items():
        connection.putheader(name, value)
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    response = connection.getresponse()
    result = response.status, response.read()
    connection.close()
    return result


def test_no_token_wrong_token_and_a_used_token_are_refused(swarm, browser):
    from playwright.sync_api import expect
    swarm.start_daemon("a", "--web", WEB)
    url = login_url(swarm, "a")
    base = base_of(url)
    page = browser.new_page()
    page.goto(base + "/")
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()
    assert page.request.get(base + "/api/v1/transfers").status == 401
    assert page.goto(base + "/login?token=not-the-token").status == 403
    assert page.goto(url).status == 200  # traded, then redirected to the page
    expect(page.locator("#app")).to_be_visible()
    status, _ = raw_request(base, "GET", url.removeprefix(base),
                            {"Host": base.removeprefix("http://")})
    assert status == 403  # used once already


def test_foreign_host_missing_csrf_and_other_methods_are_refused(swarm, browser):
    """With a valid session cookie: a request under another Host name (DNS rebinding), a
    POST without the CSRF header, and one with a wrong Origin all change nothing."""
    from playwright.sync_api import expect
    swarm.start_daemon("a", "--web", WEB)
    src = random_file(swarm.workdir / "src" / "keep.bin", MiB, seed=4)
    shared = swarm.ctl_json("a", "share", str(src), "-o", str(swarm.workdir / "k.p2p"))
    url = login_url(swarm, "a")
    base = base_of(url)
    page = browser.new_page()
    page.goto(url)
    expect(page.locator("#transfers .state")).to_have_text("seeding")
    (cookie,) = [c for c in browser.cookies() if c["name"].startswith("peerit-")]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    session = f"{cookie['name']}={cookie['value']}"
    host = base.removeprefix("http://")
    assert raw_request(base, "GET", "/api/v1/transfers",
                       {"Host": host, "Cookie": session})[0] == 200
    assert raw_request(base, "GET", "/api/v1/transfers",
                       {"Host": "evil.example", "Cookie": session})[0] == 403
    pause = f"/api/v1/transfers/{shared['info_hash']}/pause"
    assert page.evaluate("""async (path) => (await fetch(path, {method: "POST"})).status""",
                         pause) == 403  # same origin, cookie, no CSRF header
    csrf = page.evaluate("async () => (await (await fetch('/api/v1/session')).json()).csrf")
    assert raw_request(base, "POST", pause, {
        "Host": host, "Cookie": session, "X-Peerit-CSRF": csrf,
        "Origin": "http://127.0.0.1:1"})[0] == 403
    assert raw_request(base, "POST", pause, {"Host": host, "Cookie": session,
                                             "X-Peerit-CSRF": csrf})[0] == 403  # no Origin
    assert swarm.status("a", shared["info_hash"])["state"] == "seeding"
    # The same request from the page itself works: the checks above refused for cause.
    assert page.evaluate("""async ([path, csrf]) => (await fetch(path, {method: "POST",
        headers: {"X-Peerit-CSRF": csrf}})).status""", [pause, csrf]) == 200
    assert swarm.status("a", shared["info_hash"])["state"] == "paused"


ATTACKER_PAGE = """<!doctype html><html><body><script>
const target = %(target)s, path = %(path)s;
const body = JSON.stringify({path});
window.results = {};
fetch(target + "/api/v1/shares", {method: "POST", mode: "no-cors", credentials: "include",
      headers: {"Content-Type": "text/plain"}, body})
  .then(() => { results.simple = "sent"; }, () => { results.simple = "failed"; });
fetch(target + "/api/v1/shares", {method: "POST", credentials: "include",
      headers: {"Content-Type": "application/json", "X-Peerit-CSRF": "guess"}, body})
  .then(() => { results.preflighted = "answered"; }, () => { results.preflighted = "blocked"; });
fetch(target + "/api/v1/session", {credentials: "include"})
  .then((r) => r.text()).then((t) => { results.read = t; }, () => { results.read = "blocked"; });
</script>
<form id="f" method="post" enctype="text/plain" action="%(form_action)s">
<input name='{"path": "%(raw_path)s", "x": "' value='"}'></form>
</body></html>"""


def test_cross_origin_post_from_another_local_port_is_refused(swarm, browser, tmp_path):
    """A page served from another port of 127.0.0.1 (same site, so the SameSite cookie goes
    along) tries to share a fake ~/.ssh through the signed-in browser: a simple fetch, a
    fetch with a guessed CSRF header and a form post. The daemon refuses each; nothing is
    shared and the page cannot read the session's CSRF token."""
    from playwright.sync_api import expect
    secret = tmp_path / "home" / ".ssh"
    random_file(secret / "id_ed25519", 1000, seed=5)
    swarm.start_daemon("a", "--web", WEB)
    url = login_url(swarm, "a")
    base = base_of(url)
    page = browser.new_page()
    page.goto(url)
    expect(page.locator("#app")).to_be_visible()

    html = ATTACKER_PAGE % {"target": json.dumps(base), "path": json.dumps(str(secret)),
                            "raw_path": str(secret), "form_action": base + "/api/v1/shares"}

    class Attacker(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(html.encode())

        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(("127.0.0.1", 0), Attacker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sent, answered = [], []
    browser.on("request", lambda r: sent.append((r.method, r.url))
               if r.url.startswith(base + "/api/") else None)
    browser.on("response", lambda r: answered.append((r.request.method, r.url, r.status))
               if r.url.startswith(base + "/api/") else None)
    try:
        evil = browser.new_page()
        evil.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        evil.wait_for_function("window.results && Object.keys(window.results).length === 3")
        results = evil.evaluate("window.results")
        evil.evaluate("document.getElementById('f').submit()")
        evil.wait_for_url(base + "/api/v1/shares")
    finally:
        server.shutdown()
        server.server_close()
    assert results["read"] == "blocked"
    assert results["preflighted"] == "blocked"
    # All three attempts were made (the simple fetch and the form need no preflight, so
    # they reached the daemon) and every answer the browser got was a refusal.
    shares = base + "/api/v1/shares"
    assert sent.count(("POST", shares)) >= 2, sent
    statuses = [status for method, u, status in answered if (method, u) == ("POST", shares)]
    assert statuses and set(statuses) == {403}, answered
    assert swarm.ctl_json("a", "list") == []


def test_web_on_a_non_loopback_address_needs_remote_and_a_password(tmp_path):
    """Without --web-remote and a password file the daemon refuses to start on 0.0.0.0."""
    data = tmp_path / "d"
    for extra, expected in (
            ([], "add --web-remote and --web-password-file"),
            (["--web-remote"], "--web-remote needs --web-password-file")):
        result = subprocess.run(
            twistd_argv("peerit-daemon", "--data-dir", str(data), "--control",
                        f"unix:{tmp_path}/c.sock", "--web", "tcp:0:interface=0.0.0.0",
                        *extra),
            capture_output=True, text=True, env=environment(), timeout=60)
        assert result.returncode != 0
        assert expected in result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
    loose = tmp_path / "password"
    loose.write_text("a long enough password\n")
    loose.chmod(0o644)
    result = subprocess.run(
        twistd_argv("peerit-daemon", "--data-dir", str(data), "--control",
                    f"unix:{tmp_path}/c.sock", "--web", "tcp:0:interface=0.0.0.0",
                    "--web-remote", "--web-password-file", str(loose)),
        capture_output=True, text=True, env=environment(), timeout=60)
    assert result.returncode != 0 and "chmod 600" in result.stdout + result.stderr


def test_default_web_port_is_loopback_only_and_each_daemon_gets_its_own(swarm):
    """Two daemons with the default --web: each serves its own page (the second on a free
    port when the default one is taken), and neither answers on this host's other
    addresses. An explicit port that is taken is an error; --web none serves nothing."""
    swarm.start_daemon("a")
    swarm.start_daemon("b")
    urls = [login_url(swarm, name) for name in ("a", "b")]
    bases = [base_of(u) for u in urls]
    assert len(set(bases)) == 2
    for url, base in zip(urls, bases):
        assert base.startswith("http://127.0.0.1:")
        status, _ = raw_request(base, "GET", url.removeprefix(base),
                                {"Host": base.removeprefix("http://")})
        assert status == 303
        port = int(base.rsplit(":", 1)[1])
        for address in local_addresses():
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=5).close()
    # An explicit --web whose port is taken stops the daemon with one line.
    # (Not 9880: naming the default port is the default, which falls back.)
    taken = next(p for p in (b.rsplit(":", 1)[1] for b in bases) if p != "9880")
    with pytest.raises(RuntimeError):
        swarm.start_daemon("d", "--web", f"tcp:{taken}:interface=127.0.0.1")
    log = swarm.daemons["d"].process.log()
    assert f"cannot serve the web page on tcp:{taken}:interface=127.0.0.1" in log
    assert "Traceback" not in log
    swarm.start_daemon("c", "--web", "none")
    result = swarm.ctl("c", "ui", check=False)
    assert result.returncode == 1
    assert "serves no web page" in result.stderr and "Traceback" not in result.stderr
