"""peerit.client's typed answers: dataclasses whose fields are the AMP response lists of
peerit.control.commands, and a BlockingClient whose methods have the real signatures."""

import dataclasses
import inspect
import os
import subprocess
import sys
from pathlib import Path

from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase

from peerit import client
from peerit.control import commands, results


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
            self.assertEqual(
                inspect.signature(getattr(client.BlockingClient, name), eval_str=True),
                inspect.signature(getattr(client.Client, name), eval_str=True), name)


class DeferredClassTests(SynchronousTestCase):
    def test_a_command_pays_only_for_the_answers_it_reads(self):
        """peerit-ctl imports the blocking client before it reaches the daemon: no answer
        class is made then; naming one makes it (and the classes of its records) once."""
        code = ("from peerit.control import blocking_client, results\n"
                "print(sorted(set(vars(results)) & set(results._CLASSES)))\n"
                "print(results.PeerList is results.PeerList, results.PeerList._nested)\n"
                "print(sorted(set(vars(results)) & set(results._CLASSES)))\n")
        root = Path(__file__).resolve().parents[2]
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=root, env=dict(os.environ, PYTHONPATH=str(root)), timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        before, peer_list, after = done.stdout.splitlines()
        self.assertEqual(before, "[]")
        self.assertEqual(peer_list, "True {'peers': <class 'peerit.client.PeerInfo'>}")
        self.assertEqual(after, "['PeerInfo', 'PeerList']")

    def test_a_name_that_is_no_answer_class_is_an_attribute_error(self):
        with self.assertRaises(AttributeError):
            results.NoSuchAnswer  # noqa: B018

