"""``--log-format text|json`` for both programs: twisted.logger events as one JSON object
per line, for journald (``journalctl -o json``), Loki or ``jq``.

Each line holds ``time`` (seconds since the epoch), ``level`` (debug, info, warn, error,
critical), ``namespace`` (the logger's), ``message`` (the rendered text), ``format`` (the
message template, stable across events: good for grouping), ``failure`` (a traceback, when
the event has one), ``system`` (Twisted's, when set), then the event's own keys (``peer``,
``info_hash``, ``code``...). An event key that would collide with one of those gets a
trailing ``_``. Values JSON cannot hold (bytes, objects) are written as text (bytes as hex).

twistd picks the observer from its application's ``ILogObserver`` component; a program's
top service sets it (:class:`ProgramService`) when ``--log-format json`` asks for it, writing
where twistd would have: stdout with ``-n`` and no ``--logfile`` (or ``--logfile -``), else
the file (``twistd.log`` by default).
"""

import json
import sys

from twisted.application import service
from twisted.logger import FileLogObserver, ILogObserver, formatEvent
from twisted.python import logfile
from twisted.python.components import Componentized

LOG_FORMATS = ("text", "json")
FIXED_FIELDS = ("time", "level", "namespace", "message", "format", "failure", "system")
# Keys of twisted.python.log (legacy) events, already rendered into ``message``.
_LEGACY_KEYS = frozenset({"message", "isError", "why", "failure", "system", "time", "format",
                          "printed"})


def _plain(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def event_record(event: dict) -> dict:
    """The JSON object for one twisted.logger event."""
    level = event.get("log_level")
    record = {
        "time": event.get("log_time"),
        "level": level.name if level is not None else None,
        "namespace": event.get("log_namespace"),
        "message": formatEvent(event),
        "format": event.get("log_format"),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["failure"] = failure.getTraceback()
        except Exception:
            record["failure"] = repr(failure)
    if "log_system" in event:
        record["system"] = event["log_system"]
    legacy = "log_legacy" in event or event.get("log_namespace") == "log_legacy"
    for key, value in event.items():
        if key.startswith("log_") or (legacy and key in _LEGACY_KEYS):
            continue
        name = key
        while name in record:
            name += "_"
        record[name] = _plain(value)
    return record


def json_line(event: dict) -> str:
    try:
        return json.dumps(event_record(event), ensure_ascii=False) + "\n"
    except Exception as e:  # an observer must not raise; keep the line, lose the details
        return json.dumps({"time": event.get("log_time"), "level": "error",
                           "namespace": "peerit.logs",
                           "message": f"unloggable event: {e!r}"}) + "\n"


def json_observer(out) -> FileLogObserver:
    """One JSON object per line (``jsonFileLogObserver``'s shape with ``recordSeparator=""``,
    flattened for people and their tools)."""
    return FileLogObserver(out, json_line)


def twistd_log_file(twistd_options):
    """Where twistd would log, from its own options (our Options' ``parent``)."""
    if twistd_options is None:
        return sys.stdout
    path = twistd_options.get("logfile") or ""
    if path == "-" or (not path and twistd_options.get("nodaemon")):
        return sys.stdout
    return logfile.LogFile.fromFullPath(path or "twistd.log")


class LogsToApplication:
    """For a program's top service: with ``log_observer`` set, that observer becomes the log
    observer of the twistd application the service joins (twistd reads it before it starts
    logging)."""

    log_observer = None

    def setServiceParent(self, parent):
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        return super().setServiceParent(parent)


class ProgramService(LogsToApplication, service.MultiService):
    def __init__(self, log_observer=None):
        super().__init__()
        self.log_observer = log_observer


def log_observer(options):
    """The observer ``--log-format`` asks for (None: twistd's own text observer);
    ``options.parent`` is twistd's options, which say where to write."""
    if options.get("log-format", "text") == "json":
        return json_observer(twistd_log_file(getattr(options, "parent", None)))
    return None


def program_service(options) -> ProgramService:
    """A top service for ``options`` (with ``log-format``)."""
    return ProgramService(log_observer(options))
