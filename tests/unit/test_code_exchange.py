"""Code exchange over an in-memory mailbox: the link and both peer ids cross, wrong and
expired codes fail cleanly on both sides, an unreachable rendezvous is one clear error."""

import os
import subprocess
import sys
from pathlib import Path

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from peerit import errors, links
from peerit.addresses import TrackerAddress
from peerit.daemon.code_exchange import CodeExchange
from peerit.short_codes import check_code
from peerit.errors import (
    CodeExpired, NoSpace, ReceiverRefused, RendezvousUnreachable, UsageError, WrongCode)
from peerit.testing.wormholes import FakeMailbox, FakeWormhole

SENDER = b"S" * 32
RECEIVER = b"R" * 32
LINK = links.Link(bytes(range(32)), (TrackerAddress("127.0.0.1", 59000, b"F" * 32),),
                  "holiday", 1234)


class CodeExchangeTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.mailbox = FakeMailbox()

    def exchange(self, **kwargs):
        return CodeExchange(None, "ws://mailbox.invalid/v1", clock=self.clock,
                            create=self.mailbox.create, **kwargs)

    def offer(self, exchange=None, admit=None):
        d = defer.ensureDeferred((exchange or self.exchange()).offer(LINK, SENDER, admit))
        code, receiver = self.successResultOf(d)
        return code, receiver

    def test_matching_codes_pass_the_link_and_pin_both_peers(self):
        admitted = []
        code, receiver = self.offer(admit=admitted.append)
        self.assertRegex(code, r"^\d+-[a-z]+-[a-z]+$")
        prepared = []
        accepted = defer.ensureDeferred(self.exchange().accept(
            code, RECEIVER, lambda link: prepared.append(link) or "ready"))
        link, ready = self.successResultOf(accepted)
        self.assertEqual(ready, "ready")
        self.assertEqual(link, links.Link(LINK.info_hash, LINK.trackers, "holiday", 1234,
                                          SENDER))
        self.assertEqual(prepared, [link])
        self.assertEqual(admitted, [RECEIVER])  # pinned before the receiver was let go
        self.assertEqual(self.successResultOf(receiver), RECEIVER)
        self.assertEqual(self.mailbox.nameplates, {})  # both sides released the code

    def test_a_receiver_that_cannot_take_the_share_tells_the_sender_why(self):
        code, receiver = self.offer()

        def prepare(link):
            raise NoSpace("cannot write /full: no space left on device")
        d = defer.ensureDeferred(self.exchange().accept(code, RECEIVER, prepare))
        self.failureResultOf(d, NoSpace)
        failure = self.failureResultOf(receiver, ReceiverRefused)
        self.assertIn("no space left", failure.getErrorMessage())
        self.assertEqual(failure.value.exit_code, 18)

    def test_wrong_code_fails_both_sides_and_burns_the_code(self):
        code, receiver = self.offer()
        wrong = code.split("-")[0] + "-wrong-words"
        failure = self.failureResultOf(
            defer.ensureDeferred(self.exchange().accept(wrong, RECEIVER)), WrongCode)
        self.assertIn("burnt", failure.getErrorMessage())
        self.failureResultOf(receiver, WrongCode)
        # The right code afterwards finds nobody: the sender gave up on it.
        late = defer.ensureDeferred(self.exchange().accept(code, RECEIVER))
        self.assertNoResult(late)
        self.clock.advance(60)
        self.failureResultOf(late, CodeExpired)

    def test_unused_code_expires_on_the_sender_and_is_released(self):
        code, receiver = self.offer(self.exchange(code_lifetime=600))
        self.clock.advance(599)
        self.assertNoResult(receiver)
        self.clock.advance(1)
        failure = self.failureResultOf(receiver, CodeExpired)
        self.assertIn("expired", failure.getErrorMessage())
        self.assertEqual(self.mailbox.nameplates, {})
        late = defer.ensureDeferred(self.exchange(receive_wait=30).accept(code, RECEIVER))
        self.clock.advance(30)
        self.failureResultOf(late, CodeExpired)

    def test_unreachable_rendezvous_is_one_clear_error_after_a_bounded_wait(self):
        self.mailbox.reachable = False
        d = defer.ensureDeferred(self.exchange(connect_timeout=15).offer(LINK, SENDER))
        self.clock.advance(14)
        self.assertNoResult(d)
        self.clock.advance(1)
        failure = self.failureResultOf(d, RendezvousUnreachable)
        self.assertIn("ws://mailbox.invalid/v1", failure.getErrorMessage())
        d = defer.ensureDeferred(self.exchange().accept("7-a-b", RECEIVER))
        self.clock.advance(15)
        self.failureResultOf(d, RendezvousUnreachable)

    def test_codes_are_checked_before_anything_is_sent(self):
        self.assertEqual(check_code(" 7-Guitarist-Revenge\n"), "7-guitarist-revenge")
        for bad in ("", "guitarist-revenge", "7", "7-a", "7-a-b;rm", "x-a-b"):
            with self.assertRaises(UsageError, msg=bad):
                check_code(bad)
        d = defer.ensureDeferred(self.exchange().accept("nope", RECEIVER))
        self.failureResultOf(d, UsageError)
        self.assertEqual(self.mailbox.nameplates, {})

    def test_a_garbled_answer_is_refused(self):
        code, receiver = self.offer()
        w = self.mailbox.create(None, None, None)
        w.set_code(code)
        w.send_message(b"\xff not json")
        failure = self.failureResultOf(receiver)
        self.assertIn("malformed", failure.getErrorMessage())

    def test_the_receiver_waits_for_the_sender_to_pin_it(self):
        """A receiver that dialed before the sender admitted it would be refused: accept
        returns only once the sender's confirmation arrived."""
        code, receiver = self.offer(admit=lambda peer: None)
        held = []
        deliver = FakeWormhole._deliver

        def hold_confirmation(wormhole, message):
            if b'"ready"' in message:
                held.append((wormhole, message))
            else:
                deliver(wormhole, message)
        self.patch(FakeWormhole, "_deliver", hold_confirmation)
        d = defer.ensureDeferred(self.exchange(receive_wait=30).accept(code, RECEIVER))
        self.assertEqual(len(held), 1)
        self.assertNoResult(d)
        deliver(*held[0])
        self.successResultOf(d)

    def test_the_receiver_starts_without_waiting_for_the_mailbox_to_confirm_its_close(self):
        """Once confirmed, the download starts at once: leaving the mailbox (one more round
        trip to it) finishes meanwhile, and the code is released all the same."""
        code, receiver = self.offer()
        leaving = []
        close = FakeWormhole.close

        def slow_close(wormhole):
            close(wormhole)
            leaving.append(defer.Deferred())
            return leaving[-1]
        self.patch(FakeWormhole, "close", slow_close)
        d = defer.ensureDeferred(self.exchange().accept(code, RECEIVER))
        link, _ = self.successResultOf(d)
        self.assertEqual(link.peer_id, SENDER)
        self.assertTrue(leaving)
        self.assertNoResult(leaving[-1])
        self.assertEqual(self.mailbox.nameplates, {})

    def test_a_send_that_cannot_admit_leaves_the_receiver_unconfirmed(self):
        def admit(peer):
            raise errors.PeeritError("this send was removed meanwhile")
        code, receiver = self.offer(admit=admit)
        d = defer.ensureDeferred(self.exchange(receive_wait=30).accept(code, RECEIVER))
        self.failureResultOf(receiver, errors.PeeritError)
        self.clock.advance(30)
        self.failureResultOf(d, CodeExpired)


class DeferredImportTests(SynchronousTestCase):
    def test_a_daemon_loads_magic_wormhole_only_to_exchange_a_code(self):
        """magic-wormhole and what it pulls in cost every daemon ~13 MiB: loading the daemon
        leaves them out; the first exchange brings them in."""
        code = ("import sys\n"
                "import peerit.daemon.tap\n"
                "heavy = ('wormhole', 'autobahn', 'nacl', 'spake2')\n"
                "loaded = lambda: [m for m in heavy if m in sys.modules]\n"
                "print(loaded())\n"
                "from peerit.daemon.code_exchange import CodeExchange\n"
                "CodeExchange(None, 'ws://mailbox.invalid/v1')._translate(ValueError('x'), '')\n"
                "print(loaded())\n")
        before, after = self.run_python(code)
        self.assertEqual(before, "[]")
        self.assertIn("'wormhole'", after)

    def run_python(self, code: str, **env) -> list[str]:
        root = Path(__file__).resolve().parents[2]
        environ = {k: v for k, v in os.environ.items() if k != "AUTOBAHN_USE_NVX"}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=root, env=dict(environ, PYTHONPATH=str(root), **env),
                              timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout.splitlines()

    def test_the_import_skips_autobahns_native_helpers_unless_the_operator_asked(self):
        """Their cffi declaration costs the receiver ~18 ms before its first byte; the
        operator's own AUTOBAHN_USE_NVX still wins."""
        code = ("import sys\n"
                "from peerit.daemon.code_exchange import _magic_wormhole\n"
                "_magic_wormhole()\n"
                "import autobahn.websocket\n"
                "print(autobahn.websocket.USES_NVX, 'pycparser' in sys.modules)\n"
                "print(autobahn.websocket.HAS_NVX)\n")
        uses, has = self.run_python(code)
        self.assertEqual(uses, "False False")
        if has == "True":  # an autobahn built with them: the operator may turn them on
            uses, _ = self.run_python(code, AUTOBAHN_USE_NVX="1")
            self.assertEqual(uses.split()[0], "True")

