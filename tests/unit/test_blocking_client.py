"""The blocking control client against a scripted daemon on the other end of a local socket
pair (no network, no reactor): answers, error classes, pushed changes, bounded waits."""

import socket

from twisted.trial.unittest import SynchronousTestCase

from peerit.control import boxes, contract
from peerit.control.blocking_client import BlockingClient
from peerit.errors import DaemonNotRunning, PeeritError, TimedOut, UnknownSwarm

STATUS = {name.decode(): kind.python() for name, kind in contract.TRANSFER_FIELDS}


def answer(tag: bytes, command: str, **values) -> bytes:
    fields = contract.BY_NAME[command].response
    return boxes.encode_box({boxes.ANSWER: tag, **boxes.encode_fields(fields, values)})


def changed(info_hash: str, status: dict | None, ask: bytes | None = None) -> bytes:
    fields = contract.BY_NAME["TransferChanged"].arguments
    box = {boxes.COMMAND: b"TransferChanged", **boxes.encode_fields(
        fields, {"id": info_hash, "transfers": [status] if status else []})}
    if ask is not None:
        box[boxes.ASK] = ask
    return boxes.encode_box(box)


class BlockingClientTests(SynchronousTestCase):
    def setUp(self):
        ours, self.daemon = socket.socketpair()
        self.addCleanup(self.daemon.close)
        self.client = BlockingClient("/nowhere/control.sock", connected=ours)
        self.addCleanup(self.client.close)
        self.decoder = boxes.BoxDecoder()
        self.sent = []

    def asked(self) -> dict:
        """The next box the client sent (it is already written when a call returns)."""
        self.daemon.settimeout(5)
        while not self.sent:
            self.sent += self.decoder.feed(self.daemon.recv(65536))
        return self.sent.pop(0)

    def test_a_call_returns_the_typed_answer_to_its_own_tag(self):
        self.daemon.sendall(answer(b"1", "Status", **{**STATUS, "name": "x", "size": 10}))
        status = self.client.status("ab")
        self.assertEqual((status.name, status.size), ("x", 10))
        sent = self.asked()
        self.assertEqual((sent[boxes.COMMAND], sent[boxes.ASK], sent[b"id"]),
                         (b"Status", b"1", b"ab"))

    def test_an_error_arrives_as_its_class_and_an_unknown_code_as_a_plain_error(self):
        self.daemon.sendall(boxes.encode_box({
            boxes.ERROR: b"1", boxes.ERROR_CODE: b"UNKNOWN_SWARM",
            boxes.ERROR_DESCRIPTION: b"no share or download matches ff"}))
        with self.assertRaises(UnknownSwarm) as raised:
            self.client.pause("ff")
        self.assertEqual(str(raised.exception), "no share or download matches ff")
        self.daemon.sendall(boxes.encode_box({
            boxes.ERROR: b"2", boxes.ERROR_CODE: b"UNHANDLED",
            boxes.ERROR_DESCRIPTION: b"boom"}))
        with self.assertRaises(PeeritError) as raised:
            self.client.pause("ff")
        self.assertIs(type(raised.exception), PeeritError)
        self.assertEqual(str(raised.exception), "the daemon failed: boom")

    def test_changes_pushed_during_a_call_are_kept_for_next_change_in_order(self):
        ih = "ab" * 32
        self.daemon.sendall(answer(b"1", "Status", **{**STATUS, "info_hash": ih}))
        self.daemon.sendall(
            changed(ih, {**STATUS, "state": "downloading"})  # before Follow's answer
            + answer(b"2", "Follow", info_hash=ih)
            + changed("cd" * 32, {**STATUS, "state": "seeding"})  # not followed
            + answer(b"3", "Status", **{**STATUS, "info_hash": ih, "state": "stalled"})
            + changed(ih, {**STATUS, "state": "seeding"}, ask=b"9")
            + changed(ih, None))
        self.assertEqual(self.client.follow("ab").state, "stalled")
        self.assertEqual(self.client.next_change(5).state, "downloading")
        self.assertEqual(self.client.next_change(5).state, "seeding")
        self.assertIsNone(self.client.next_change(5))
        sent = [self.asked() for _ in range(4)]
        self.assertEqual(sent[-1], {boxes.ANSWER: b"9"})  # a change asked for is answered

    def test_waits_are_bounded_and_a_closed_connection_is_daemon_not_running(self):
        with self.assertRaises(TimedOut):
            self.client.next_change(0.01)
        self.daemon.close()
        with self.assertRaises(DaemonNotRunning):
            self.client.status("ab")

    def test_a_call_not_answered_in_time_times_out_with_the_commands_name(self):
        with self.assertRaises(TimedOut) as raised:
            self.client._call("Status", timeout=0.01, id="ab")
        self.assertIn("did not answer Status", str(raised.exception))
