"""peerit.client's typed answers: dataclasses whose fields are the AMP response lists of
peerit.control.commands, and a BlockingClient whose methods have the real signatures."""

import dataclasses
import inspect

from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase

from peerit import client
from peerit.control import commands


class ResultClassTests(SynchronousTestCase):
    def assertFieldsMatch(self, cls, amp_fields):
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        self.assertEqual(list(fields), [name.decode() for name, _ in amp_fields])
        for name, argument in amp_fields:
            if isinstance(argument, (amp.ListOf, amp.AmpList)):
                self.assertEqual(getattr(fields[name.decode()], "__origin__", None), list)
            else:
                expected = {amp.Unicode: str, amp.Integer: int, amp.Float: float,
                            amp.Boolean: bool}[type(argument)]
                self.assertIs(fields[name.decode()], expected, name)

    def test_each_result_has_exactly_the_fields_of_its_amp_response(self):
        for cls, amp_fields in ((client.TransferStatus, commands.TRANSFER_FIELDS),
                                (client.PeerInfo, commands.PEER_FIELDS),
                                (client.DaemonInfo, commands.DaemonInfo.response),
                                (client.Shared, commands.Share.response),
                                (client.Started, commands.Download.response),
                                (client.PeerList, commands.Peers.response),
                                (client.Done, commands.Remove.response)):
            self.assertFieldsMatch(cls, amp_fields)

    def test_nested_lists_become_lists_of_results_and_json_is_plain(self):
        peer = {f.name: 0 for f in dataclasses.fields(client.PeerInfo)}
        listed = client._from_answer(client.PeerList, {"peers": [peer], "total": 1})
        self.assertIsInstance(listed.peers[0], client.PeerInfo)
        self.assertEqual(client.as_json(listed), {"peers": [peer], "total": 1})
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, listed, "total", 2)


class BlockingClientSignatureTests(SynchronousTestCase):
    def test_blocking_methods_have_the_async_clients_signatures(self):
        for name in ("info", "share", "download", "status", "list", "peers", "pause",
                     "resume", "remove", "netcheck"):
            self.assertEqual(inspect.signature(getattr(client.BlockingClient, name)),
                             inspect.signature(getattr(client.Client, name)), name)
