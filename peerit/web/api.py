"""The JSON API under the page (``/api/v1/...``): the daemon's operations, over HTTP.

Each route calls the same :class:`peerit.daemon.operations.Operations` method as the AMP
command of the same name and reports the same error classes, with the AMP contract's error
code and an HTTP status:

=====================================  ====================================================
``GET  /api/v1/session``               this session's CSRF token (the page reads it first)
``GET  /api/v1/daemon``                peer id, trackers, public address, NAT type, rates
``GET  /api/v1/transfers``             every transfer
``POST /api/v1/transfers``             body: a .p2p file; ``?to=DIR``: download it
``POST /api/v1/shares``                body: ``{"path": "/abs/path"}``: share it in place
``GET  /api/v1/transfers/ID``          one transfer with its peers, files and piece map
``GET  /api/v1/transfers/ID/peers``    its peers and the path each one uses
``GET  /api/v1/transfers/ID/p2p``      its .p2p file
``POST /api/v1/transfers/ID/pause``    (and ``resume``)
``POST /api/v1/transfers/ID/remove``   body: ``{"delete_data": false}``
``GET  /api/v1/events``                Server-Sent Events (``?detail=ID`` adds one detail)
=====================================  ====================================================

Authentication, the Host/Origin/CSRF checks and the body cap happen before this resource
runs (``peerit.web.site``); here every request already has a session.
"""

import json
import urllib.parse

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from peerit import errors
from peerit.control.commands import ERRORS
from peerit.web.stream import MAX_STREAMS, EventStream

log = Logger()

STATUS = {
    errors.UnknownSwarm: 404,
    errors.MalformedMessage: 400,
    errors.UsageError: 400,
    errors.PermissionDenied: 403,
    errors.NoSpace: 507,
    errors.TimedOut: 504,
    errors.PeeritError: 409,
}

MAX_JSON_BODY = 64 * 1024  # a JSON request (a path, a flag) is small


def error_body(error: errors.PeeritError) -> tuple[int, dict]:
    """The HTTP status and body for one of the project's errors (the AMP code as ``code``)."""
    code = next((c for cls, c in ERRORS.items() if isinstance(error, cls)), b"FAILED")
    status = next((s for cls, s in STATUS.items() if isinstance(error, cls)), 409)
    return status, {"error": str(error), "code": code.decode()}


def write_json(request, status: int, value) -> None:
    body = json.dumps(value, separators=(",", ":")).encode()
    request.setResponseCode(status)
    request.setHeader("content-type", "application/json")
    request.setHeader("cache-control", "no-store")
    request.setHeader("content-length", str(len(body)))
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


def json_body(request) -> dict:
    data = request.content.read(MAX_JSON_BODY + 1) if request.content else b""
    if len(data) > MAX_JSON_BODY:
        raise errors.UsageError("request body too large")
    if not data:
        return {}
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise errors.UsageError("the request body is not JSON") from None
    if not isinstance(value, dict):
        raise errors.UsageError("the request body must be a JSON object")
    return value


class Api(resource.Resource):
    isLeaf = True

    def __init__(self, operations, hub, clock):
        super().__init__()
        self.operations = operations
        self.hub = hub
        self.clock = clock
        self.streams: set[EventStream] = set()

    def render(self, request):
        parts = [p.decode("utf-8", "replace") for p in request.postpath]
        if parts and parts[-1] == "":
            parts.pop()
        method = request.method.decode()
        if method == "HEAD":
            method = "GET"
        try:
            result = self._route(request, method, parts)
        except errors.PeeritError as e:
            status, body = error_body(e)
            write_json(request, status, body)
            return server.NOT_DONE_YET
        if isinstance(result, defer.Deferred):
            finished = [False]
            request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

            def done(value):
                if not finished[0]:
                    write_json(request, 200, value)

            def failed(failure):
                if finished[0]:
                    return
                if failure.check(errors.PeeritError):
                    status, body = error_body(failure.value)
                else:
                    log.failure("web request {path} failed", failure,
                                path=request.path.decode("utf-8", "replace"))
                    status, body = 500, {"error": "internal error (see the daemon's log)",
                                         "code": "FAILED"}
                write_json(request, status, body)
            result.addCallbacks(done, failed)
        elif result is not server.NOT_DONE_YET:
            write_json(request, 200, result)
        return server.NOT_DONE_YET

    def _route(self, request, method: str, parts: list[str]):
        ops = self.operations
        route = (method, *parts[:1])
        if route == ("GET", "session"):
            session = request.web_session
            return {"csrf": session.csrf}
        if route == ("GET", "daemon"):
            return ops.info()
        if route == ("GET", "events"):
            return self._events(request)
        if route == ("POST", "shares") and len(parts) == 1:
            body = json_body(request)
            path = body.get("path")
            if not isinstance(path, str):
                raise errors.UsageError('give the path to share as {"path": "/abs/path"}')
            return defer.ensureDeferred(ops.share_path(path))
        if parts[:1] != ["transfers"]:
            raise errors.UnknownSwarm(f"no such API route: {method} /{'/'.join(parts)}")
        if len(parts) == 1:
            if method == "GET":
                return {"transfers": ops.list_all()}
            if method == "POST":
                target = self._query(request, "to")
                request.content.seek(0)
                return ops.download_metainfo(request.content.read(), target)
        ident = parts[1] if len(parts) > 1 else ""
        action = parts[2] if len(parts) > 2 else ""
        if len(parts) > 3:
            raise errors.UnknownSwarm(f"no such API route: {method} /{'/'.join(parts)}")
        if method == "GET" and action == "":
            return ops.detail(ident)
        if method == "GET" and action == "peers":
            return ops.peers(ident)
        if method == "GET" and action == "p2p":
            name, data = ops.metainfo(ident)
            request.setHeader("content-type", "application/x-peerit-p2p")
            request.setHeader("content-disposition", "attachment; filename*=UTF-8''"
                              + urllib.parse.quote(name))
            request.setHeader("content-length", str(len(data)))
            request.write(data)
            request.finish()
            return server.NOT_DONE_YET
        if method == "POST" and action in ("pause", "resume"):
            return getattr(ops, action)(ident)
        if method == "POST" and action == "remove":
            delete = json_body(request).get("delete_data", False)
            if not isinstance(delete, bool):
                raise errors.UsageError("delete_data must be true or false")
            return ops.remove(ident, delete)
        raise errors.UnknownSwarm(f"no such API route: {method} /{'/'.join(parts)}")

    @staticmethod
    def _query(request, name: str) -> str:
        values = request.args.get(name.encode(), [b""])
        return values[0].decode("utf-8", "replace")

    def _events(self, request):
        if len(self.streams) >= MAX_STREAMS:
            raise errors.PeeritError(f"too many open event streams (at most {MAX_STREAMS})")
        detail = self._query(request, "detail") or None
        if detail is not None:
            detail = self.operations.status(detail)["info_hash"]  # an unknown id: 404
        stream = EventStream(request, self.hub, self.operations, self.clock, detail,
                             on_close=self.streams.discard)
        if not stream.closed:
            self.streams.add(stream)
        return server.NOT_DONE_YET
