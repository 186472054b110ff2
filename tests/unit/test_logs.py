"""--log-format json: each twisted.logger event as one flat JSON object per line."""

import io
import json

from twisted.application import service
from twisted.logger import ILogObserver, Logger
from twisted.logger._legacy import publishToNewObserver
from twisted.python.log import textFromEventDict
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from peerit.logs import ProgramService, event_record, json_line, json_observer, program_service


def capture(emit) -> dict:
    events = []
    emit(Logger(namespace="peerit.test", observer=events.append))
    [event] = events
    return event


class JsonLogTests(SynchronousTestCase):
    def test_fixed_fields_and_the_events_own_keys(self):
        event = capture(lambda log: log.info("piece {index} verified from {peer}", index=3,
                                             peer="ab12", info_hash=b"\x01\x02"))
        record = json.loads(json_line(event))
        self.assertEqual(record["level"], "info")
        self.assertEqual(record["namespace"], "peerit.test")
        self.assertEqual(record["message"], "piece 3 verified from ab12")
        self.assertEqual(record["format"], "piece {index} verified from {peer}")
        self.assertIsInstance(record["time"], float)
        self.assertEqual((record["index"], record["peer"], record["info_hash"]),
                         (3, "ab12", "0102"))
        self.assertFalse([key for key in record if key.startswith("log_")])

    def test_colliding_keys_and_odd_values(self):
        event = capture(lambda log: log.warn("{message} at {time}", message="hi",
                                             time=ValueError("x"), extra=(1, b"\xff")))
        record = event_record(event)
        self.assertEqual((record["level"], record["message"]), ("warn", "hi at x"))
        self.assertEqual(record["message_"], "hi")
        self.assertEqual(record["extra"], [1, "ff"])
        self.assertEqual(record["time_"], "x")
        self.assertIsInstance(record["time"], float)
        json.dumps(record)

    def test_failures_carry_their_traceback(self):
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        event = capture(lambda log: log.failure("it broke", failure))
        record = json.loads(json_line(event))
        self.assertEqual(record["level"], "critical")
        self.assertIn("ZeroDivisionError", record["failure"])

    def test_legacy_events_keep_only_the_rendered_text(self):
        """twisted.python.log events (Twisted's own "Starting factory" lines) as the legacy
        bridge delivers them: the rendered text, no tuple-valued 'message' key."""
        lines = io.StringIO()
        publishToNewObserver(json_observer(lines), {
            "message": ("Starting factory",), "isError": 0, "system": "-", "time": 1.0},
            textFromEventDict)
        record = json.loads(lines.getvalue())
        self.assertEqual(record["message"], "Starting factory")
        self.assertEqual(record["system"], "-")
        self.assertEqual(set(record), {"time", "level", "namespace", "message", "format",
                                       "system"})

    def test_one_line_per_event(self):
        out = io.StringIO()
        observer = json_observer(out)
        for n in range(3):
            observer(capture(lambda log: log.info("line {n}\nwith a newline", n=n)))
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 3)
        self.assertEqual([json.loads(line)["n"] for line in lines], [0, 1, 2])


class ProgramServiceTests(SynchronousTestCase):
    def test_json_observer_becomes_the_applications(self):
        application = service.Application("test")
        options = {"log-format": "json"}
        top = program_service(options)
        top.setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), top.log_observer)

    def test_text_leaves_twistd_its_own_observer(self):
        application = service.Application("test")
        ProgramService().setServiceParent(application)
        self.assertIsNone(application.getComponent(ILogObserver, None))
