"""The web face over in-memory HTTP connections: login, the request checks, the JSON API and
the event stream, against a fake of the daemon's operations and a real EventHub on a Clock."""

import json
import os
import shutil
import tempfile

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from peerit.daemon.events import EventHub
from peerit.errors import UsageError
from peerit.testing.operations import FakeOperations
from peerit.web import auth
from peerit.web.site import WebFace, WebSpec, parse_web_spec
from peerit.web.stream import KEEPALIVE

HOST = "127.0.0.1:9880"
ORIGIN = "http://127.0.0.1:9880"
A, B = "ab" * 32, "ac" * 32


class Response:
    def __init__(self, raw: bytes):
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {}
        self.cookies = []
        for line in lines[1:]:
            name, _, value = line.partition(": ")
            if name.lower() == "set-cookie":
                self.cookies.append(value)
            self.headers[name.lower()] = value

    def json(self):
        return json.loads(self.body)


class WebTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.ops = FakeOperations()
        self.ops.add(A, "alpha.iso", size=4 << 20, done=1 << 20, down_rate=2e6)
        self.ops.add(B, "beta.mkv", role="seed", state="seeding")
        self.hub = EventHub(self.clock, self.snapshot)
        self.face = self.make_face(WebSpec(9880, "127.0.0.1"))

    def make_face(self, spec, **kwargs):
        face = WebFace(self.clock, self.ops, self.hub, spec, instance=lambda: "abcdef012345",
                       **kwargs)
        face.port = object()  # listening is the service's business, not these tests'
        face.configure(spec.port)
        return face

    def snapshot(self, key):
        kind, ident = key
        if kind == "daemon":
            return self.ops.info()
        return self.ops.transfers.get(ident)

    # -- plumbing -------------------------------------------------------------------------
    def connect(self, face=None):
        face = face or self.face
        channel = face.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport

    def request(self, method, path, body=b"", headers=None, host=HOST, cookie=None,
                face=None, keep=False):
        channel, transport = self.connect(face)
        lines = [f"{method} {path} HTTP/1.1"]
        if host is not None:
            lines.append(f"Host: {host}")
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if cookie:
            lines.append(f"Cookie: {cookie}")
        lines.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        channel.dataReceived(raw)
        if keep:
            return channel, transport
        return Response(transport.value())

    def directory(self) -> str:
        path = tempfile.mkdtemp(prefix="peerit-test-web-")
        self.addCleanup(shutil.rmtree, path)
        return path

    def login(self):
        token = self.face.auth.mint_token()
        response = self.request("GET", f"/login?token={token}")
        self.assertEqual(response.status, 303)
        cookie = response.cookies[0].split(";")[0]
        csrf = self.request("GET", "/api/v1/session", cookie=cookie).json()["csrf"]
        return cookie, csrf

    def post(self, path, body=b"", cookie=None, csrf=None, origin=ORIGIN, **kwargs):
        headers = {}
        if origin:
            headers["Origin"] = origin
        if csrf:
            headers[auth.CSRF_HEADER] = csrf
        return self.request("POST", path, body, headers, cookie=cookie, **kwargs)

    # -- sign-in --------------------------------------------------------------------------
    def test_token_is_traded_once_for_an_httponly_samesite_strict_cookie(self):
        token = self.face.auth.mint_token()
        first = self.request("GET", f"/login?token={token}")
        self.assertEqual(first.status, 303)
        self.assertEqual(first.headers["location"], "/")
        (cookie,) = first.cookies
        self.assertTrue(cookie.startswith("peerit-abcdef012345="))
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=strict", cookie)
        self.assertEqual(self.request("GET", f"/login?token={token}").status, 403)

    def test_wrong_or_missing_token_gives_no_session(self):
        self.assertEqual(self.request("GET", "/login?token=guess").status, 403)
        self.assertEqual(self.request("GET", "/login").status, 401)
        self.assertEqual(self.request("GET", "/api/v1/transfers").status, 401)
        self.assertEqual(self.request("GET", "/api/v1/transfers",
                                      cookie="peerit-abcdef012345=forged").status, 401)

    def test_token_expires(self):
        token = self.face.auth.mint_token()
        self.clock.advance(auth.TOKEN_LIFETIME + 1)
        self.assertEqual(self.request("GET", f"/login?token={token}").status, 403)

    def test_idle_session_expires(self):
        cookie, _ = self.login()
        self.clock.advance(auth.SESSION_IDLE + 1)
        self.assertEqual(self.request("GET", "/api/v1/transfers", cookie=cookie).status, 401)

    def test_password_login_and_throttling(self):
        face = self.make_face(WebSpec(9880, "127.0.0.1"), password="correct horse battery")
        form = {"Origin": ORIGIN, "Content-Type": "application/x-www-form-urlencoded"}
        ok = self.request("POST", "/login", b"password=correct+horse+battery", form,
                          face=face)
        self.assertEqual(ok.status, 303)
        for _ in range(auth.PASSWORD_TRIES):
            self.assertEqual(self.request("POST", "/login", b"password=nope", form,
                                          face=face).status, 403)
        # Throttled now: even the right password waits out the window.
        self.assertEqual(self.request("POST", "/login", b"password=correct+horse+battery",
                                      form, face=face).status, 403)
        self.clock.advance(auth.PASSWORD_WINDOW + 1)
        self.assertEqual(self.request("POST", "/login", b"password=correct+horse+battery",
                                      form, face=face).status, 303)

    def test_no_password_configured_refuses_password_login(self):
        form = {"Origin": ORIGIN, "Content-Type": "application/x-www-form-urlencoded"}
        self.assertEqual(self.request("POST", "/login", b"password=", form).status, 403)

    # -- request checks -------------------------------------------------------------------
    def test_foreign_host_header_is_refused_even_with_a_session(self):
        """DNS rebinding: the attacker's page talks to us under its own name."""
        cookie, _ = self.login()
        for host in ("evil.example", "evil.example:9880", "127.0.0.1:9881", None):
            response = self.request("GET", "/api/v1/transfers", cookie=cookie, host=host)
            self.assertEqual(response.status, 403, host)
        self.assertEqual(self.request("GET", "/").status, 200)
        self.assertEqual(self.request("GET", "/", host="localhost:9880").status, 200)

    def test_post_needs_csrf_header_and_own_origin(self):
        cookie, csrf = self.login()
        self.assertEqual(self.post(f"/api/v1/transfers/{A}/pause", cookie=cookie).status, 403)
        self.assertEqual(self.post(f"/api/v1/transfers/{A}/pause", cookie=cookie,
                                   csrf="wrong").status, 403)
        for origin in (None, "http://127.0.0.1:8000", "http://evil.example", "null"):
            response = self.post(f"/api/v1/transfers/{A}/pause", cookie=cookie, csrf=csrf,
                                 origin=origin)
            self.assertEqual(response.status, 403, origin)
        self.assertEqual(self.ops.calls, [])
        ok = self.post(f"/api/v1/transfers/{A}/pause", cookie=cookie, csrf=csrf)
        self.assertEqual(ok.status, 200)
        self.assertEqual(self.ops.calls, [("pause", A)])

    def test_other_methods_are_refused(self):
        cookie, csrf = self.login()
        for method in ("PUT", "DELETE", "OPTIONS", "PATCH"):
            self.assertEqual(self.request(method, f"/api/v1/transfers/{A}",
                                          cookie=cookie).status, 405)

    def test_every_response_carries_the_security_headers(self):
        for response in (self.request("GET", "/"), self.request("GET", "/app.js"),
                         self.request("GET", "/api/v1/daemon"),
                         self.request("GET", "/", host="evil.example")):
            self.assertIn("frame-ancestors 'none'", response.headers["content-security-policy"])
            self.assertIn("script-src 'self'", response.headers["content-security-policy"])
            self.assertEqual(response.headers["x-content-type-options"], "nosniff")
            self.assertEqual(response.headers["referrer-policy"], "no-referrer")

    def test_oversized_body_is_refused_before_it_is_stored(self):
        face = self.make_face(WebSpec(9880, "127.0.0.1"), max_body=1000)
        token = face.auth.mint_token()
        cookie = self.request("GET", f"/login?token={token}", face=face).cookies[0]
        cookie = cookie.split(";")[0]
        csrf = self.request("GET", "/api/v1/session", cookie=cookie, face=face).json()["csrf"]
        response = self.post("/api/v1/transfers", b"P2P" + b"x" * 5000, cookie=cookie,
                             csrf=csrf, face=face)
        self.assertEqual(response.status, 413)
        self.assertEqual(self.ops.calls, [])

    def test_static_files_only_those_shipped(self):
        page = self.request("GET", "/")
        self.assertEqual(page.status, 200)
        self.assertIn(b'<script src="/app.js"', page.body)
        self.assertEqual(self.request("GET", "/style.css").headers["content-type"],
                         "text/css; charset=utf-8")
        self.assertEqual(self.request("GET", "/../setup.cfg").status, 404)
        self.assertEqual(self.request("GET", "/static/app.js").status, 404)

    # -- the API --------------------------------------------------------------------------
    def test_list_detail_and_errors_as_the_amp_commands(self):
        cookie, csrf = self.login()
        listed = self.request("GET", "/api/v1/transfers", cookie=cookie).json()
        self.assertEqual([t["name"] for t in listed["transfers"]], ["alpha.iso", "beta.mkv"])
        detail = self.request("GET", "/api/v1/transfers/ab", cookie=cookie).json()
        self.assertEqual(detail["transfer"]["info_hash"], A)
        self.assertEqual(detail["piece_map"], "2100")
        unknown = self.request("GET", "/api/v1/transfers/ff", cookie=cookie)
        self.assertEqual(unknown.status, 404)
        self.assertEqual(unknown.json()["code"], "UNKNOWN_SWARM")
        ambiguous = self.request("GET", "/api/v1/transfers/a", cookie=cookie)
        self.assertEqual(ambiguous.status, 400)
        self.assertEqual(ambiguous.json()["code"], "BAD_REQUEST")
        self.assertIn("matches 2 transfers", ambiguous.json()["error"])

    def test_upload_p2p_starts_a_download(self):
        cookie, csrf = self.login()
        response = self.post("/api/v1/transfers?to=/srv/in", b"P2P-file", cookie=cookie,
                             csrf=csrf)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.json()["name"], "uploaded.bin")
        self.assertEqual(self.ops.calls, [("download", b"P2P-file", "/srv/in")])
        bad = self.post("/api/v1/transfers", b"junk", cookie=cookie, csrf=csrf)
        self.assertEqual((bad.status, bad.json()["code"]), (400, "BAD_METAINFO"))

    def test_share_answers_when_hashing_is_done(self):
        cookie, csrf = self.login()
        path = os.path.join(self.directory(), "shared.bin")
        open(path, "wb").close()
        channel, transport = self.post("/api/v1/shares", json.dumps({"path": path}).encode(),
                                       cookie=cookie, csrf=csrf, keep=True)
        self.assertEqual(transport.value(), b"")  # still hashing
        self.ops.shares[path].callback({"info_hash": A, "name": "x", "state": "seeding"})
        self.assertEqual(Response(transport.value()).json()["info_hash"], A)

    def test_share_of_a_relative_or_missing_path_is_a_usage_error(self):
        cookie, csrf = self.login()
        for path in ("relative/dir", "/no/such/path", "/tmp/a\x00b"):
            response = self.post("/api/v1/shares", json.dumps({"path": path}).encode(),
                                 cookie=cookie, csrf=csrf)
            self.assertEqual(response.status, 400, path)
        self.assertEqual(self.ops.calls, [])

    def test_remove_passes_delete_data(self):
        cookie, csrf = self.login()
        response = self.post(f"/api/v1/transfers/{B}/remove",
                             json.dumps({"delete_data": True}).encode(), cookie=cookie,
                             csrf=csrf)
        self.assertEqual(response.status, 200)
        self.assertEqual(self.ops.calls, [("remove", B, True)])
        bad = self.post(f"/api/v1/transfers/{A}/remove", b'{"delete_data": "yes"}',
                        cookie=cookie, csrf=csrf)
        self.assertEqual(bad.status, 400)

    def test_p2p_download_is_an_attachment(self):
        cookie, _ = self.login()
        response = self.request("GET", f"/api/v1/transfers/{B}/p2p", cookie=cookie)
        self.assertEqual(response.body, b"P2P-bytes-of-beta.mkv")
        self.assertIn("attachment", response.headers["content-disposition"])

    # -- the event stream -----------------------------------------------------------------
    def events_of(self, transport):
        out = []
        for block in transport.value().split(b"\n\n"):
            lines = dict(line.split(b": ", 1) for line in block.split(b"\n")
                         if line.startswith((b"event: ", b"data: ")))
            if b"event" in lines:
                out.append((lines[b"event"].decode(), json.loads(lines[b"data"])))
        return out

    def test_stream_sends_a_snapshot_then_coalesced_changes_per_tick(self):
        cookie, _ = self.login()
        channel, transport = self.request("GET", "/api/v1/events", cookie=cookie, keep=True)
        ((name, first),) = self.events_of(transport)
        self.assertEqual(name, "snapshot")
        self.assertEqual(len(first["transfers"]), 2)
        transport.clear()
        # Many changes within one tick: one update, with the last state.
        for done in range(10):
            self.ops.transfers[A]["done"] = done
            self.hub.changed(("transfer", A))
        self.clock.advance(0.5)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.5)
        events = self.events_of(transport)
        self.assertEqual([name for name, _ in events], ["update"])
        (update,) = [e for e in events[0][1] if e["kind"] == "transfer"]
        self.assertEqual(update["data"]["done"], 9)
        # An unchanged transfer marked again is not sent again.
        transport.clear()
        self.hub.changed(("transfer", A))
        self.clock.advance(1)
        self.assertEqual(transport.value(), b"")
        # Removal arrives as data null.
        del self.ops.transfers[A]
        self.hub.changed_now(("transfer", A))
        self.clock.advance(0)
        ((_, removed),) = self.events_of(transport)
        self.assertEqual(removed, [{"kind": "transfer", "id": A, "data": None}])

    def test_stream_with_detail_sends_the_transfers_detail_on_its_changes(self):
        cookie, _ = self.login()
        channel, transport = self.request("GET", "/api/v1/events?detail=ab", cookie=cookie,
                                          keep=True)
        events = self.events_of(transport)
        self.assertEqual([n for n, _ in events], ["snapshot", "detail"])
        self.assertEqual(events[1][1]["files"], [{"path": "alpha.iso", "size": 4 << 20}])
        transport.clear()
        self.ops.transfers[B]["done"] = 5
        self.hub.changed(("transfer", B))
        self.clock.advance(1)
        self.assertEqual([n for n, _ in self.events_of(transport)], ["update"])
        transport.clear()
        self.ops.transfers[A]["done"] = 7
        self.hub.changed(("transfer", A))
        self.clock.advance(1)
        events = self.events_of(transport)
        self.assertEqual([n for n, _ in events], ["update", "detail"])
        self.assertNotIn("files", events[1][1])  # sent with the first detail only

    def test_paused_stream_queues_nothing_and_resyncs_on_resume(self):
        cookie, _ = self.login()
        channel, transport = self.request("GET", "/api/v1/events", cookie=cookie, keep=True)
        (stream,) = self.face.api.streams
        transport.clear()
        stream.pauseProducing()
        for n in range(5):
            self.ops.transfers[A]["done"] = n
            self.hub.changed(("transfer", A))
            self.clock.advance(1)
        self.assertEqual(transport.value(), b"")
        stream.resumeProducing()
        self.assertEqual([n for n, _ in self.events_of(transport)], ["snapshot"])

    def test_closed_stream_unsubscribes_and_the_hub_stops_ticking(self):
        cookie, _ = self.login()
        channel, transport = self.request("GET", "/api/v1/events", cookie=cookie, keep=True)
        self.assertEqual(self.hub.subscribers, 1)
        self.clock.advance(KEEPALIVE)
        self.assertIn(b": keepalive", transport.value())
        (stream,) = self.face.api.streams
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.hub.subscribers, 0)
        self.assertEqual(self.face.api.streams, set())
        ours = [c for c in self.clock.getDelayedCalls()
                if getattr(c.func, "__self__", None) in (self.hub, stream)]
        self.assertEqual(ours, [])


    def test_stopping_the_service_ends_open_streams_cleanly(self):
        cookie, _ = self.login()
        channel, transport = self.request("GET", "/api/v1/events", cookie=cookie, keep=True)
        self.face.port = None
        self.face.stopService()
        self.assertEqual(self.hub.subscribers, 0)
        self.assertEqual(self.face.api.streams, set())
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertTrue(transport.value().endswith(b"0\r\n\r\n"))  # last chunk sent


class WebSpecTests(SynchronousTestCase):
    def test_forms(self):
        self.assertIsNone(parse_web_spec("none"))
        self.assertEqual(parse_web_spec("tcp:9880:interface=127.0.0.1"),
                         WebSpec(9880, "127.0.0.1"))
        self.assertEqual(parse_web_spec("tcp:0:interface=\\:\\:1"), WebSpec(0, "::1"))
        self.assertTrue(parse_web_spec("tcp:1:interface=::1".replace("::1", "\\:\\:1"))
                        .loopback)
        self.assertFalse(parse_web_spec("tcp:8080").loopback)
        self.assertFalse(parse_web_spec("tcp:8080:interface=0.0.0.0").loopback)
        for bad in ("udp:1", "tcp:x", "tcp:70000", "tcp:1:backlog=5", "tcp:1:interface=host"):
            with self.assertRaises(UsageError):
                parse_web_spec(bad)

    def test_all_interfaces_answer_to_loopback_and_allowed_names_only(self):
        face = WebFace(Clock(), FakeOperations(), EventHub(Clock(), lambda k: None),
                       WebSpec(8080, "0.0.0.0"), instance=lambda: "x", password="p" * 12,
                       allow_hosts=["peerit.example.org"], local_hosts=lambda: ["10.1.2.3"])
        face.configure(8080)
        self.assertIn("10.1.2.3:8080", face.allowed_hosts)
        self.assertIn("peerit.example.org", face.allowed_hosts)
        self.assertIn("https://peerit.example.org", face.allowed_origins)
        self.assertNotIn("evil.example", face.allowed_hosts)


class EventHubTests(SynchronousTestCase):
    def test_no_subscriber_no_timer_and_no_work(self):
        clock = Clock()
        calls = []
        hub = EventHub(clock, lambda key: calls.append(key) or {"x": 1})
        hub.changed(("transfer", "a"))
        hub.changed_now(("transfer", "a"))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(calls, [])

    def test_live_keys_are_published_each_tick_while_they_change(self):
        clock = Clock()
        value = {"rate": 1}
        hub = EventHub(clock, lambda key: dict(value), live=lambda: [("daemon", "")])
        got = []
        subscription = hub.subscribe(got.append)
        clock.advance(1)
        value["rate"] = 2
        clock.advance(1)
        clock.advance(1)  # unchanged: nothing
        self.assertEqual([[e["data"]["rate"] for e in events] for events in got], [[1], [2]])
        subscription.cancel()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_failing_subscriber_is_dropped_others_still_served(self):
        clock = Clock()
        hub = EventHub(clock, lambda key: {"n": 1})
        got = []

        def broken(events):
            raise RuntimeError("boom")
        hub.subscribe(broken)
        hub.subscribe(got.append)
        hub.changed(("transfer", "a"))
        clock.advance(1)
        self.assertEqual(len(got), 1)
        self.assertEqual(hub.subscribers, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class PieceMapTests(SynchronousTestCase):
    def test_one_cell_per_piece_up_to_the_cap_then_groups(self):
        from peerit.daemon.operations import piece_map
        self.assertEqual(piece_map(5, {0, 1}, {3}), "22010")
        self.assertEqual(piece_map(0, set(), set()), "")
        # 10 pieces in 4 cells: 3 per cell; a cell is 2 only when all of it is verified.
        self.assertEqual(piece_map(10, {0, 1, 2, 3}, set(), cells=4), "2100")
        self.assertTrue(1000 <= len(piece_map(100_000, set(), set())) <= 1024)


class DaemonWebOptionTests(SynchronousTestCase):
    def parse(self, *argv):
        from peerit.daemon.tap import Options
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_default_is_loopback_with_a_fallback_port(self):
        options = self.parse()
        self.assertEqual(options["web-spec"], WebSpec(9880, "127.0.0.1"))
        self.assertTrue(options["web-fallback"])
        self.assertFalse(self.parse("--web", "tcp:9999:interface=127.0.0.1")["web-fallback"])
        self.assertIsNone(self.parse("--web", "none")["web-spec"])

    def test_other_interfaces_and_names_need_an_explicit_option_and_a_password(self):
        from twisted.python.usage import UsageError as OptionsError
        for argv in (["--web", "tcp:8080"], ["--web", "tcp:8080:interface=0.0.0.0"],
                     ["--web", "tcp:8080:interface=10.0.0.1", "--web-remote"],
                     ["--web-allow-host", "peerit.example.org"]):
            with self.assertRaises(OptionsError):
                self.parse(*argv)
        password = os.path.join(tempfile.mkdtemp(), "password")
        self.addCleanup(shutil.rmtree, os.path.dirname(password))
        with open(password, "w") as f:
            f.write("a long enough password\n")
        os.chmod(password, 0o600)
        options = self.parse("--web", "tcp:8080:interface=0.0.0.0", "--web-remote",
                             "--web-password-file", password)
        self.assertEqual(options["web-password"], "a long enough password")
        os.chmod(password, 0o640)
        with self.assertRaises(OptionsError):
            self.parse("--web-allow-host", "x.example", "--web-password-file", password)


class DaemonWithPageTests(SynchronousTestCase):
    """``twistd peerit-daemon``: the daemon's children plus the page, a face found as a
    Twisted plugin (the daemon does not import it)."""

    def daemon(self, *extra):
        from twisted.internet.testing import MemoryReactorClock

        from peerit.daemon import tap
        directory = tempfile.mkdtemp(prefix="peerit-test-web-")
        self.addCleanup(shutil.rmtree, directory)
        options = tap.Options()
        options.parseOptions(["--data-dir", os.path.join(directory, "d"), *extra])
        return tap.makeService(options, reactor=MemoryReactorClock())

    def test_the_page_starts_after_the_transfers_and_before_the_control_socket(self):
        daemon = self.daemon()
        self.assertEqual([child.name for child in daemon],
                         ["node", "peers", "udp", "trackers", "transfers", "web", "control"])
        web = daemon.getServiceNamed("web")
        self.assertIs(web.api.operations, daemon.operations)
        self.assertIs(web.api.hub, daemon.events)
        self.assertIs(daemon.transfers.events, daemon.events)
        self.assertEqual(daemon.operations.web_sign_in, web.login_url)

    def test_web_none_leaves_the_page_out_and_sign_in_says_why(self):
        from peerit.errors import PeeritError
        daemon = self.daemon("--web", "none")
        self.assertNotIn("web", [child.name for child in daemon])
        with self.assertRaises(PeeritError) as caught:
            daemon.operations.web_login()
        self.assertIn("serves no web page", str(caught.exception))
