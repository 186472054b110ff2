"""``twistd peerit-daemon`` as it runs: the daemon's services plus its web page.

The daemon's own ``peerit.daemon.tap`` composes the daemon; it may not import the faces above
it (docs/architecture.md, *Layers*). This module, at the top, is where the page joins: its
``Options`` are the daemon's plus ``--web*``, and ``makeService`` adds the page to the
daemon's services with ``Daemon.add_face`` (before the control socket, so that the socket's
appearance still means "ready"). The ``peerit-daemon`` twistd plugin points here.
"""

from twisted.python import usage

from peerit.daemon import tap as daemon_tap
from peerit.daemon.service import Daemon
from peerit.errors import PeeritError
from peerit.web.site import DEFAULT_SPEC, WebFace, parse_web_spec, read_password_file


class Options(daemon_tap.Options):
    # usage.Options gathers optParameters and optFlags along the class hierarchy: these
    # come on top of the daemon's.
    optParameters = [
        ["web", None, DEFAULT_SPEC,
         "Where to serve the web page, as tcp:PORT[:interface=ADDR], or none. With the "
         "default, a daemon whose port is taken (another daemon's) takes any free one; "
         "'peerit-ctl ui' prints the address either way [default: " + DEFAULT_SPEC + "]"],
        ["web-password-file", None, None,
         "File (mode 600) holding a password that also signs in to the page; needed by "
         "--web-remote and --web-allow-host"],
    ]
    optFlags = [
        ["web-remote", None,
         "Allow --web on a non-loopback address (needs --web-password-file; better, put the "
         "page behind a TLS reverse proxy: see docs/web.md)"],
    ]

    def __init__(self):
        super().__init__()
        self["web-allow-host"] = []

    def opt_web_allow_host(self, value):
        """Also answer to this Host name (repeatable): the name a reverse proxy forwards,
        e.g. peerit.example.org (needs --web-password-file)."""
        self["web-allow-host"].append(value.strip().lower())

    def postOptions(self):
        super().postOptions()
        try:
            spec = parse_web_spec(self["web"])
        except PeeritError as e:
            raise usage.UsageError(str(e))
        self["web-fallback"] = self["web"] == DEFAULT_SPEC
        self["web-spec"] = spec
        self["web-password"] = None
        if spec is not None and not spec.loopback:
            where = spec.interface or "every interface"
            if not self["web-remote"]:
                raise usage.UsageError(
                    f"--web {self['web']} serves the page on {where}, not only this "
                    "machine: add --web-remote and --web-password-file to mean it")
            if not self["web-password-file"]:
                raise usage.UsageError("--web-remote needs --web-password-file")
        if self["web-allow-host"] and not self["web-password-file"]:
            raise usage.UsageError(
                "--web-allow-host lets other names (a reverse proxy) reach the page: it "
                "needs --web-password-file too")
        if self["web-password-file"]:
            try:
                self["web-password"] = read_password_file(self["web-password-file"])
            except PeeritError as e:
                raise usage.UsageError(str(e))


def makeService(options, reactor=None) -> Daemon:
    """The daemon (``peerit.daemon.tap.makeService``) with its web page, unless
    ``--web none``."""
    if reactor is None:
        from twisted.internet import reactor
    daemon = daemon_tap.makeService(options, reactor=reactor)
    if options["web-spec"] is not None:
        node = daemon.node
        web = WebFace(reactor, daemon.operations, daemon.events, options["web-spec"],
                      instance=lambda: node.peer_id.hex()[:12],
                      password=options["web-password"], allow_hosts=options["web-allow-host"],
                      fallback=options["web-fallback"], local_hosts=node.addresses)
        daemon.add_face(web)
        daemon.operations.web_sign_in = web.login_url
    return daemon
