"""The link and code commands over an in-memory AMP connection: each error reaches the CLI
as its own class (so its own exit code), and the answers carry what the CLI prints."""

from twisted.internet.defer import ensureDeferred, fail, succeed
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from peerit import errors, links
from peerit.client import Client, as_json
from peerit.daemon.control import ControlFactory
from peerit.daemon.operations import DaemonOperations

IH = bytes(range(32))


class Started:
    info_hash, name, path = IH, "holiday", "/downloads"


class FakeTransfers:
    def add_link(self, link, target_dir):
        links.parse(link)
        return Started()


class FakeCodes:
    def __init__(self, failure=None):
        self.failure = failure
        self.calls = []

    def receive(self, code, target_dir):
        self.calls.append(("receive", code, target_dir))
        return fail(self.failure) if self.failure else succeed(Started())

    async def send(self, data_path, metainfo_path):
        if self.failure:
            raise self.failure
        return {"code": "7-guitarist-revenge", "info_hash": IH.hex(), "name": "holiday",
                "link": "peerit:?v=1"}

    def send_status(self, ident):
        return {"info_hash": IH.hex(), "code": "7-a-b", "state": "failed", "receiver": "",
                "delivered": False, "error": "code 7-a-b expired", "error_code": 16,
                "size": 10, "uploaded": 0, "peers": 0}


class LinkControlTests(SynchronousTestCase):
    def run_call(self, codes, call):
        factory = ControlFactory(DaemonOperations(None, FakeTransfers(), None, None, None,
                                                  codes=codes))
        client_proto, _, pump = iosim.connectedServerAndClient(
            lambda: factory.buildProtocol(None), lambda: amp.AMP())
        d = ensureDeferred(call(Client(client_proto, "memory", Clock())))
        pump.flush()
        return d

    def test_each_link_and_code_error_arrives_as_its_class(self):
        for error in (errors.WrongCode("wrong code 7-a-b"), errors.CodeExpired("expired"),
                      errors.RendezvousUnreachable("cannot reach"),
                      errors.ReceiverRefused("the receiver refused: full"),
                      errors.MetadataTooLarge("big"), errors.MetadataMismatch("tampered")):
            d = self.run_call(FakeCodes(error), lambda c: c.receive("7-a-b"))
            failure = self.failureResultOf(d, type(error))
            self.assertEqual(failure.getErrorMessage(), str(error))
            self.assertEqual(type(failure.value).exit_code, type(error).exit_code)

    def test_a_bad_link_arrives_as_bad_link_not_as_a_plain_usage_error(self):
        for text, cls in (("peerit:?v=9", errors.UnsupportedLink),
                          (f"peerit:?v=1&ih={IH.hex()}&tr=h:1", errors.UnpinnedTracker),
                          ("peerit:?v=1&ih=zz", errors.BadLink)):
            d = self.run_call(FakeCodes(), lambda c: c.download_link(text))
            self.assertIs(type(self.failureResultOf(d).value), cls)

    def test_send_answers_the_code_and_its_status_the_failure(self):
        codes = FakeCodes()
        answer = self.successResultOf(self.run_call(codes, lambda c: c.send("/a", "/a.p2p")))
        self.assertEqual(answer.code, "7-guitarist-revenge")
        status = self.successResultOf(self.run_call(codes, lambda c: c.send_status(IH.hex())))
        self.assertEqual((status.state, status.error_code), ("failed", 16))

    def test_receive_answers_where_the_download_goes(self):
        codes = FakeCodes()
        answer = self.successResultOf(self.run_call(codes, lambda c: c.receive("7-a-b", "")))
        self.assertEqual(as_json(answer), {"info_hash": IH.hex(), "name": "holiday",
                                           "path": "/downloads"})
