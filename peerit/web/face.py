"""The web page as a face of the daemon (``peerit.daemon.faces``): its twistd options, their
checks, and how it joins the composed daemon (``twisted/plugins/peerit_web.py`` offers it)."""

from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from peerit.daemon.faces import IDaemonFace
from peerit.errors import PeeritError
from peerit.web.site import DEFAULT_SPEC, WebFace, parse_web_spec, read_password_file


@implementer(IPlugin, IDaemonFace)
class WebPage:
    name = "web"
    optParameters = [
        ["web", None, DEFAULT_SPEC,
         "Where to serve the web page, as tcp:PORT[:interface=ADDR], or none. With the "
         "default, a daemon whose port is taken (another daemon's) takes any free one; "
         "'peerit-ctl ui' prints the address either way [default: " + DEFAULT_SPEC + "]"],
        ["web-password-file", None, None,
         "File (mode 600) holding a password that also signs in to the page; needed by "
         "--web-remote and --web-allow-host"],
        ["web-allow-host", None, "",
         "Also answer to these Host names, comma-separated: the name a reverse proxy "
         "forwards, e.g. peerit.example.org (needs --web-password-file)"],
    ]
    optFlags = [
        ["web-remote", None,
         "Allow --web on a non-loopback address (needs --web-password-file; better, put the "
         "page behind a TLS reverse proxy: see docs/web.md)"],
    ]

    def check(self, options) -> None:
        try:
            spec = parse_web_spec(options["web"])
        except PeeritError as e:
            raise usage.UsageError(str(e))
        options["web-fallback"] = options["web"] == DEFAULT_SPEC
        options["web-spec"] = spec
        options["web-password"] = None
        hosts = [h.strip().lower() for h in options["web-allow-host"].split(",") if h.strip()]
        options["web-allow-host"] = hosts
        if spec is not None and not spec.loopback:
            where = spec.interface or "every interface"
            if not options["web-remote"]:
                raise usage.UsageError(
                    f"--web {options['web']} serves the page on {where}, not only this "
                    "machine: add --web-remote and --web-password-file to mean it")
            if not options["web-password-file"]:
                raise usage.UsageError("--web-remote needs --web-password-file")
        if hosts and not options["web-password-file"]:
            raise usage.UsageError(
                "--web-allow-host lets other names (a reverse proxy) reach the page: it "
                "needs --web-password-file too")
        if options["web-password-file"]:
            try:
                options["web-password"] = read_password_file(options["web-password-file"])
            except PeeritError as e:
                raise usage.UsageError(str(e))

    def attach(self, daemon, options, reactor) -> None:
        if options["web-spec"] is None:
            return
        node = daemon.node
        web = WebFace(reactor, daemon.operations, daemon.events, options["web-spec"],
                      instance=lambda: node.peer_id.hex()[:12],
                      password=options["web-password"], allow_hosts=options["web-allow-host"],
                      fallback=options["web-fallback"], local_hosts=node.addresses)
        daemon.add_face(web)
        daemon.operations.web_sign_in = web.login_url


web_page = WebPage()
