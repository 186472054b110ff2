from peerit.web.face import web_page  # noqa: F401  (the daemon's web page: docs/web.md)
