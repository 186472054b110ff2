"""The page's live feed: Server-Sent Events fed by the daemon's event hub.

One stream per open page. It starts with a full ``snapshot`` (the daemon and every transfer),
then sends each hub tick's changes as one ``update`` event; with ``?detail=ID`` it also sends
that transfer's ``detail`` (peers, piece map) whenever the transfer changed. A page that reads
too slowly pauses the stream (TCP back-pressure through the producer interface): nothing is
queued meanwhile, and a fresh snapshot is sent when it catches up, so memory stays bounded
whatever the client does. EventSource sends no custom headers: the stream is authenticated by
the session cookie alone, and it only ever reads.
"""

import json

from twisted.internet import interfaces
from zope.interface import implementer

KEEPALIVE = 15.0  # seconds between comments, so proxies and browsers keep an idle stream
MAX_STREAMS = 16  # open streams per daemon (browsers allow about 6 per host anyway)


def encode_event(name: str, data) -> bytes:
    body = json.dumps(data, separators=(",", ":"))
    # json.dumps escapes newlines inside strings, so the body is one line.
    return f"event: {name}\ndata: {body}\n\n".encode()


@implementer(interfaces.IPushProducer)
class EventStream:
    def __init__(self, request, hub, operations, clock, detail: str | None = None,
                 on_close=None):
        self.request = request
        self.hub = hub
        self.operations = operations
        self.clock = clock
        self.detail = detail  # a full info-hash, or None
        self.on_close = on_close
        self.paused = False
        self.stale = False
        self.closed = False
        self.sent_events = 0
        self._files_sent = False
        self._keepalive = None
        request.setHeader("content-type", "text/event-stream; charset=utf-8")
        request.setHeader("cache-control", "no-store")
        request.registerProducer(self, True)
        request.write(b"retry: 2000\n\n")
        self._snapshot()
        self.subscription = hub.subscribe(self.events)
        self._keepalive = clock.callLater(KEEPALIVE, self._ping)
        request.notifyFinish().addBoth(lambda _: self.close())

    def _send(self, name: str, data) -> None:
        self.sent_events += 1
        self.request.write(encode_event(name, data))

    def _snapshot(self) -> None:
        self.stale = False
        self._send("snapshot", {"daemon": self.operations.info(),
                                "transfers": self.operations.list_all()})
        self._send_detail()

    def _send_detail(self) -> None:
        if self.detail is None:
            return
        try:
            detail = self.operations.detail(self.detail)
        except Exception:
            detail = {"transfer": None}  # removed since: the page closes its detail view
        if self._files_sent:
            detail.pop("files", None)  # they never change: sent once per stream
        elif detail.get("transfer") is not None:
            self._files_sent = True
        self._send("detail", detail)

    def events(self, events: list[dict]) -> None:
        if self.closed:
            return
        if self.paused:
            self.stale = True  # resumeProducing sends a fresh snapshot instead
            return
        self._send("update", events)
        if self.detail is not None and any(e["id"] == self.detail for e in events):
            self._send_detail()

    def _ping(self) -> None:
        self._keepalive = None
        if self.closed:
            return
        if not self.paused:
            self.request.write(b": keepalive\n\n")
        self._keepalive = self.clock.callLater(KEEPALIVE, self._ping)

    # -- IPushProducer --------------------------------------------------------------------
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.stale and not self.closed:
            self._snapshot()

    def stopProducing(self) -> None:
        self.close()

    def finish(self) -> None:
        """End the stream from our side (the daemon is stopping)."""
        if self.closed:
            return
        self.request.unregisterProducer()
        self.close()
        self.request.finish()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.subscription.cancel()
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.cancel()
        if self.on_close is not None:
            self.on_close(self)
