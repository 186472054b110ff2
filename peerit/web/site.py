"""The daemon's web page: a ``twisted.web`` site, run as one more child service of the daemon.

Every request passes :meth:`WebFace.refusal` before any resource sees it:

* its ``Host`` header must name this server exactly (``127.0.0.1:PORT``, ``localhost:PORT``,
  or a name given with ``--web-allow-host``): a DNS-rebinding page's requests carry its own
  name and are refused;
* only GET, HEAD and POST exist; a POST must carry an ``Origin`` of this server (a page from
  another site, or from another port of this host, is refused) and, under ``/api/``, the
  session's CSRF token in ``X-Peerit-CSRF`` (a form or an image cannot set a header, and a
  script from elsewhere cannot read the token);
* ``/api/`` needs a session cookie (HttpOnly, SameSite=Strict), got by trading the one-time
  token of ``peerit-ctl ui``'s URL at ``/login`` (or the password, when one is configured);
* bodies are capped (:data:`MAX_BODY`) while they arrive, before anything is parsed.

Every response carries a Content-Security-Policy (own scripts and styles only, no framing),
``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``.
"""

import importlib.resources
import io
import ipaddress
import os
import stat
from dataclasses import dataclass

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.web import pages, resource, server

from peerit.errors import PeeritError, UsageError
from peerit.web.api import Api, write_json
from peerit.web.auth import CSRF_HEADER, SESSION_IDLE, Auth

log = Logger()

DEFAULT_PORT = 9880
DEFAULT_SPEC = f"tcp:{DEFAULT_PORT}:interface=127.0.0.1"
MAX_BODY = 16 * 1024 * 1024  # a .p2p upload (about 500,000 pieces); JSON bodies are far less
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "server": "peerit",
}
STATIC_FILES = {  # name in peerit/web/static -> content type; nothing else is served
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}


# -- the --web option -------------------------------------------------------------------------

@dataclass(frozen=True)
class WebSpec:
    port: int
    interface: str  # "" = every interface

    @property
    def loopback(self) -> bool:
        if not self.interface:
            return False
        try:
            return ipaddress.ip_address(self.interface).is_loopback
        except ValueError:
            return False

    def endpoint(self, port: int | None = None) -> str:
        port = self.port if port is None else port
        interface = self.interface.replace(":", "\\:")
        return f"tcp:{port}" + (f":interface={interface}" if interface else "")


def parse_web_spec(spec: str) -> WebSpec | None:
    """``none``, or ``tcp:PORT[:interface=ADDR]`` (Twisted's syntax, IPv6 colons escaped)."""
    if spec.strip().lower() == "none":
        return None
    fields = [f.replace("\x00", ":") for f in spec.replace("\\:", "\x00").split(":")]
    if fields[0] != "tcp" or len(fields) < 2:
        raise UsageError(f"--web {spec!r}: expected tcp:PORT[:interface=ADDR] or none")
    port_text, interface = fields[1], ""
    if port_text.startswith("port="):
        port_text = port_text[len("port="):]
    for field in fields[2:]:
        key, _, value = field.partition("=")
        if key != "interface" or not value:
            raise UsageError(f"--web {spec!r}: unknown part {field!r} "
                             "(only interface=ADDR is accepted)")
        interface = value
    try:
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise UsageError(f"--web {spec!r}: the port must be 0..65535") from None
    if interface:
        try:
            ipaddress.ip_address(interface)
        except ValueError:
            raise UsageError(f"--web {spec!r}: interface must be an IP address") from None
    return WebSpec(port, interface)


def read_password_file(path: str) -> str:
    """The password in ``path`` (one line), refusing a file others may read."""
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as f:
            password = f.read(4096).rstrip("\r\n")
    except OSError as e:
        raise UsageError(f"--web-password-file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--web-password-file {path}: not UTF-8 text") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"--web-password-file {path}: others may read it "
                         f"(chmod 600 {path})")
    if len(password) < 12:
        raise UsageError(f"--web-password-file {path}: use a password of at least 12 "
                         "characters")
    return password


# -- requests ---------------------------------------------------------------------------------

class WebRequest(server.Request):
    """A request whose body is capped as it arrives and which the face checks first."""

    too_large = False
    web_session = None
    _received = 0

    def gotLength(self, length):
        if length is not None and length > self.channel.site.face.max_body:
            self.too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.too_large:
            return  # dropped, not stored; the answer is 413
        self._received += len(data)
        if self._received > self.channel.site.face.max_body:
            self.too_large = True
            self.content = io.BytesIO()
            return
        super().handleContentChunk(data)

    def process(self):
        face = self.channel.site.face
        for name, value in SECURITY_HEADERS.items():
            self.setHeader(name, value)
        refusal = face.refusal(self)
        if refusal is not None:
            status, message = refusal
            self.setHeader("cache-control", "no-store")
            write_json(self, status, {"error": message, "code": "REFUSED"})
            return
        super().process()


class WebSite(server.Site):
    requestFactory = WebRequest
    noisy = False

    def __init__(self, root, face, reactor):
        super().__init__(root, reactor=reactor)
        self.face = face

    def log(self, request):
        """No access log: a login URL's token must not land in the daemon's log."""


# -- resources --------------------------------------------------------------------------------

class StaticFile(resource.Resource):
    isLeaf = True

    def __init__(self, data: bytes, content_type: str):
        super().__init__()
        self.data = data
        self.content_type = content_type

    def render_GET(self, request):
        request.setHeader("content-type", self.content_type)
        request.setHeader("cache-control", "no-cache")
        return self.data

    render_HEAD = render_GET


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>peer-it: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/style.css"></head>
<body class="login"><main class="card">
<h1>peer-it</h1><p>{message}</p>{form}
</main></body></html>
"""
PASSWORD_FORM = """<form method="post" action="/login">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button></form>"""


class Login(resource.Resource):
    """``GET /login?token=T`` (from ``peerit-ctl ui``) or ``POST /login`` with the password:
    a session cookie, then the page."""
    isLeaf = True

    def __init__(self, face):
        super().__init__()
        self.face = face

    def render_GET(self, request):
        token = request.args.get(b"token", [b""])[0].decode("utf-8", "replace")
        session = self.face.auth.redeem_token(token) if token else None
        if session is None:
            return self._refused(request, 403 if token else 401,
                                 "This sign-in link was already used or has expired."
                                 if token else "Sign in with a link from the daemon.")
        return self._signed_in(request, session)

    def render_POST(self, request):
        password = request.args.get(b"password", [b""])[0].decode("utf-8", "replace")
        session = self.face.auth.login_password(password)
        if session is None:
            return self._refused(request, 403, "Wrong password (or too many tries: wait a "
                                               "minute).")
        return self._signed_in(request, session)

    def _signed_in(self, request, session):
        # Behind a TLS reverse proxy (which says so) the cookie is also Secure.
        secure = request.getHeader("x-forwarded-proto") == "https"
        request.addCookie(self.face.cookie_name, session.key, path="/", httpOnly=True,
                          sameSite="strict", max_age=str(int(SESSION_IDLE)),
                          secure=secure or None)
        request.setResponseCode(303)
        request.setHeader("location", "/")
        request.setHeader("cache-control", "no-store")
        return b""

    def _refused(self, request, status: int, message: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader("content-type", "text/html; charset=utf-8")
        request.setHeader("cache-control", "no-store")
        message += " Run <code>peerit-ctl ui</code> on the daemon's machine for a new one."
        form = PASSWORD_FORM if self.face.auth.has_password else ""
        return LOGIN_PAGE.format(message=message, form=form).encode()


class Root(resource.Resource):
    def __init__(self, face, api: Api):
        super().__init__()
        static = importlib.resources.files("peerit.web") / "static"
        for name, content_type in STATIC_FILES.items():
            child = StaticFile((static / name).read_bytes(), content_type)
            self.putChild(b"" if name == "index.html" else name.encode(), child)
        self.putChild(b"login", Login(face))
        v1 = resource.Resource()
        v1.putChild(b"v1", api)
        self.putChild(b"api", v1)

    def getChild(self, name, request):
        return pages.notFound("Not found", "No such page.")


# -- the face ---------------------------------------------------------------------------------

class WebFace(service.Service):
    """The page's server: listens on ``spec``, checks every request, mints login URLs."""

    name = "web"

    def __init__(self, reactor, operations, events, spec: WebSpec, *, instance,
                 password: str | None = None, allow_hosts=(), fallback: bool = False,
                 max_body: int = MAX_BODY, local_hosts=lambda: ()):
        self.reactor = reactor
        self.instance = instance  # () -> a short id of this daemon, for the cookie's name
        self.spec = spec
        self.auth = Auth(reactor, password)
        self.allow_hosts = [h.lower() for h in allow_hosts]
        self.fallback = fallback  # the default port is taken: any free port instead
        self.max_body = max_body
        self.local_hosts = local_hosts  # () -> this host's addresses, for an all-interfaces bind
        self.port = None
        self.allowed_hosts: frozenset[str] = frozenset()
        self.allowed_origins: frozenset[str] = frozenset()
        self.cookie_name = "peerit"
        self.url_host = ""
        # operations: the daemon's DaemonOperations (a fake in tests); events: its EventHub
        self.api = Api(operations, events, reactor)
        self.site = WebSite(Root(self, self.api), self, reactor)

    def startService(self):
        super().startService()
        return defer.ensureDeferred(self.listen())

    async def listen(self) -> None:
        """Start serving (the daemon starts its faces after its identity is loaded)."""
        try:
            self.port = await endpoints.serverFromString(
                self.reactor, self.spec.endpoint()).listen(self.site)
        except CannotListenError as e:
            if not self.fallback:
                raise PeeritError(f"cannot serve the web page on {self.spec.endpoint()}: "
                                  f"{e.socketError} (choose another --web port, or "
                                  "--web none)") from None
            log.info("web port {port} is taken; serving the page on a free port instead",
                     port=self.spec.port)
            self.port = await endpoints.serverFromString(
                self.reactor, self.spec.endpoint(0)).listen(self.site)
        port = self.port.getHost().port
        self.configure(port)
        log.info("web page on http://{host}/ (peerit-ctl ui prints a sign-in link)",
                 host=self.url_host)

    def configure(self, port: int) -> None:
        """The names this server answers to, once its port is known."""
        # Cookies ignore ports: daemons on one host need cookies of their own names.
        self.cookie_name = f"peerit-{self.instance()}"
        interface = self.spec.interface
        hosts = set()
        if not interface or ipaddress.ip_address(interface).is_unspecified:
            hosts |= {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
            hosts |= {_host_port(h, port) for h in self.local_hosts()}
        elif ipaddress.ip_address(interface).is_loopback:
            hosts |= {_host_port(interface, port), f"localhost:{port}"}
        else:
            hosts.add(_host_port(interface, port))
        origins = {f"http://{h}" for h in hosts}
        for name in self.allow_hosts:  # names a reverse proxy forwards, with or without TLS
            hosts.add(name)
            origins |= {f"http://{name}", f"https://{name}"}
        self.allowed_hosts = frozenset(hosts)
        self.allowed_origins = frozenset(origins)
        self.url_host = _host_port(
            "127.0.0.1" if not interface or ipaddress.ip_address(interface).is_unspecified
            else interface, port)

    def login_url(self) -> str:
        if self.port is None:
            raise PeeritError("the web page is not being served yet")
        return f"http://{self.url_host}/login?token={self.auth.mint_token()}"

    def refusal(self, request) -> tuple[int, str] | None:
        """Why ``request`` is refused, or None: the checks in the module docstring."""
        host = (request.getHeader("host") or "").lower()
        if host not in self.allowed_hosts:
            return 403, "unexpected Host header (this server answers only to its own name)"
        method = request.method
        if method not in (b"GET", b"HEAD", b"POST"):
            return 405, "method not allowed"
        if request.too_large:
            return 413, f"request body larger than {self.max_body} bytes"
        if method == b"POST" and request.getHeader("origin") not in self.allowed_origins:
            return 403, "cross-origin request refused (missing or foreign Origin)"
        if request.path.startswith(b"/api/"):
            cookie = request.getCookie(self.cookie_name.encode())
            session = self.auth.session(cookie.decode("ascii", "replace") if cookie else None)
            if session is None:
                return 401, "not signed in: run 'peerit-ctl ui' for a sign-in link"
            if method == b"POST" and not self.auth.check_csrf(
                    session, request.getHeader(CSRF_HEADER)):
                return 403, f"missing or wrong {CSRF_HEADER} header"
            request.web_session = session
        return None

    def stopService(self):
        super().stopService()
        for stream in list(self.api.streams):
            stream.finish()
        if self.port is not None:
            return self.port.stopListening()


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
