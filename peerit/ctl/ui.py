"""``peerit-ctl ui``: a one-time sign-in URL for the daemon's web page (and opening it)."""

from peerit.ctl import options
from peerit.ctl.daemon_commands import with_client
from peerit.ctl.output import emit
from peerit.errors import PeeritError


def ui(client, args):
    import webbrowser
    url = client.web_login()
    if args.open and not webbrowser.open(url):
        raise PeeritError(f"no browser to open here; open this link yourself:\n{url}")
    emit(args, {"url": url}, url)


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "ui", parents=[common, options.control_parent()], help="open the daemon's web page",
        description="Print a link to the daemon's web page carrying a one-time sign-in "
                    "token (good once, for 10 minutes); the page trades it for a session "
                    "cookie. With --open, open it in the default browser too.")
    p.add_argument("--open", action="store_true", help="open the link in a browser")
    p.set_defaults(run=with_client(ui))
