"""The Redis client's parts that need no Redis: the RESP reply parser and command encoding,
Redis URLs, and the tracker options that choose the store and the workers (no sockets)."""

import os
import tempfile

from twisted.application.service import MultiService
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from peerit.tracker import tap
from peerit.tracker.resp import (
    RedisConnection, RedisError, RedisUnavailable, ReplyParser, encode_command,
    parse_redis_url)
from peerit.tracker.workers import ParentWatch, worker_argv

REPLIES = (b"+OK\r\n-ERR wrong\r\n:42\r\n$5\r\nab\r\nc\r\n$-1\r\n*-1\r\n"
           b"*2\r\n*2\r\n$1\r\na\r\n:1\r\n*0\r\n$0\r\n\r\n")
PARSED = [b"OK", "error", 42, b"ab\r\nc", None, None, [[b"a", 1], []], b""]


class ReplyParserTests(SynchronousTestCase):
    def check(self, replies):
        self.assertEqual([("error" if isinstance(r, RedisError) else r) for r in replies],
                         PARSED)

    def test_every_reply_type_in_one_read(self):
        self.check(ReplyParser().feed(REPLIES))

    def test_replies_split_at_every_byte_come_out_the_same(self):
        parser, replies = ReplyParser(), []
        for i in range(len(REPLIES)):
            replies += parser.feed(REPLIES[i:i + 1])
        self.check(replies)

    def test_a_reply_over_the_cap_is_refused_before_it_is_buffered(self):
        with self.assertRaises(ValueError):
            ReplyParser(max_bytes=100).feed(b"$1000000\r\n")
        with self.assertRaises(ValueError):
            ReplyParser(max_bytes=8).feed(b"+" + b"x" * 20)

    def test_commands_are_binary_safe_arrays_of_bulk_strings(self):
        self.assertEqual(encode_command(("SET", b"k\r\n", 5, 1.5)),
                         b"*4\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$1\r\n5\r\n$3\r\n1.5\r\n")


class ConnectionTests(SynchronousTestCase):
    def connected(self):
        clock = Clock()
        connection = RedisConnection(clock, reply_timeout=5)
        transport = StringTransport()
        connection.makeConnection(transport)
        return clock, connection, transport

    def test_pipelined_answers_go_to_their_commands_in_order(self):
        _, connection, transport = self.connected()
        first, second = connection.command("GET", "a"), connection.command("BAD")
        self.assertEqual(transport.value(), encode_command(("GET", "a")) +
                         encode_command(("BAD",)))
        results = []
        first.addCallback(results.append)
        second.addErrback(lambda f: results.append(f.check(RedisError)))
        connection.dataReceived(b"$1\r\nx\r\n-ERR unknown\r\n")
        self.assertEqual(results, [b"x", RedisError])

    def test_redis_silent_past_the_reply_timeout_drops_the_connection(self):
        clock, connection, transport = self.connected()
        d = connection.command("PING")
        clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(transport.disconnected or transport.disconnecting)
        connection.connectionLost(None)
        self.failureResultOf(d, RedisUnavailable)
        self.failureResultOf(connection.command("PING"), RedisUnavailable)


class RedisURLTests(SynchronousTestCase):
    def test_forms(self):
        url = parse_redis_url("redis://10.0.0.5:6380/2")
        self.assertEqual((url.scheme, url.host, url.port, url.db), ("redis", "10.0.0.5", 6380, 2))
        self.assertEqual(url.endpoint(5), "tcp:host=10.0.0.5:port=6380:timeout=5")
        self.assertEqual(parse_redis_url("redis://r").port, 6379)
        tls = parse_redis_url("rediss://r.example:6390/0?ca=/etc/ca")
        self.assertEqual(tls.endpoint(3),
                         "tls:host=r.example:port=6390:timeout=3:trustRoots=/etc/ca")
        unix = parse_redis_url("unix:///run/redis/redis.sock?db=3")
        self.assertEqual((unix.path, unix.db), ("/run/redis/redis.sock", 3))
        self.assertEqual(unix.endpoint(5), "unix:path=/run/redis/redis.sock:timeout=5")

    def test_bad_urls_and_passwords_in_urls_are_refused_with_a_reason(self):
        for bad, reason in (("http://x", "expected"), ("redis://", "no host"),
                            ("redis://h/x", "number"), ("unix://rel", "ABSOLUTE"),
                            ("redis://:secret@h/0", "--redis-password-file"),
                            ("redis://user:secret@h/0", "--redis-password-file")):
            with self.assertRaises(ValueError) as caught:
                parse_redis_url(bad)
            self.assertIn(reason, str(caught.exception))
            self.assertNotIn("secret", str(caught.exception))


class StoreOptionTests(SynchronousTestCase):
    def parse(self, *args):
        options = tap.Options()
        options.parseOptions(["--data-dir", tempfile.mkdtemp(), *args])
        return options

    def test_memory_is_the_default(self):
        options = self.parse()
        self.assertEqual((options["store"], options.redis_url, options["workers"]),
                         ("memory", None, 1))

    def test_the_password_comes_from_the_first_line_of_a_file(self):
        fd, path = tempfile.mkstemp()
        os.write(fd, b"s3cret\nignored\n")
        os.close(fd)
        options = self.parse("--store", "redis://127.0.0.1/1", "--redis-password-file", path)
        self.assertEqual((options.redis_password, options.redis_url.db), (b"s3cret", 1))
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--store", "redis://h/0", "--redis-password-file", path + ".missing")
        self.assertIn("No such file", str(caught.exception))

    def test_several_workers_need_a_shared_store(self):
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--workers", "2")
        self.assertIn("--store redis://", str(caught.exception))
        self.parse("--workers", "2", "--store", "redis://127.0.0.1/0")

    def test_each_worker_gets_the_parents_options_its_ports_and_its_own_relay(self):
        options = self.parse("--workers", "3", "--store", "redis://127.0.0.1/0",
                             "--listen", "tcp:59000:interface=10.0.0.1", "--max-peers", "80")
        self.assertEqual(tap.worker_endpoint("tcp:59001:interface=10.0.0.1", 2),
                         "tcp:59003:interface=10.0.0.1")
        self.assertEqual(tap.worker_endpoint("tcp:0", 2), "tcp:0")
        argv = worker_argv(options, 2, 59000, ("10.0.0.1", 3478, 3479), "tcp:59003")
        tail = argv[argv.index("peerit-tracker") + 1:]
        self.assertIn("--max-peers=80", tail)
        self.assertIn("--store=redis://127.0.0.1/0", tail)
        self.assertEqual(tail[-5:], ["--listen=tcp:59000:interface=10.0.0.1",
                                     "--stun=udp:3478:interface=10.0.0.1",
                                     "--stun-alt-port=3479", "--relay=tcp:59003",
                                     "--worker=2"])
        self.assertFalse([a for a in tail if a.startswith("--workers")])
        reparsed = self.parse(*tail)
        self.assertEqual((reparsed["worker"], reparsed["max-peers"]), (2, 80))

    def test_workers_inherit_the_hosts_relay_address(self):
        """Every worker of a host advertises the one --relay-host for relays to other hosts."""
        options = self.parse("--workers", "2", "--store", "redis://127.0.0.1/0",
                             "--relay-host", "198.51.100.7")
        tail = worker_argv(options, 1, 59000, None, "tcp:59002")
        tail = tail[tail.index("peerit-tracker") + 1:]
        self.assertIn("--relay-host=198.51.100.7", tail)
        self.assertEqual(self.parse(*tail).relay_host, "198.51.100.7")

    def test_each_worker_serves_its_own_metrics_on_the_port_plus_its_index(self):
        options = self.parse("--workers", "2", "--store", "redis://127.0.0.1/0",
                             "--metrics", "tcp:9100", "--metrics-allow", "10.0.0.0/24")
        metrics = tap.worker_endpoint(options.metrics_endpoint, 1)
        self.assertEqual(metrics, "tcp:9101:interface=127.0.0.1")
        argv = worker_argv(options, 1, 59000, None, None, metrics)
        tail = argv[argv.index("peerit-tracker") + 1:]
        self.assertEqual([a for a in tail if a.startswith("--metrics")],
                         ["--metrics=tcp:9101:interface=127.0.0.1",
                          "--metrics-allow=10.0.0.0/24"])
        reparsed = self.parse(*tail)
        self.assertEqual(reparsed.metrics_endpoint, "tcp:9101:interface=127.0.0.1")


class ParentWatchTests(SynchronousTestCase):
    def test_a_worker_stops_once_its_parent_is_gone(self):
        reactor = MemoryReactorClock()
        parents = [100]
        top = MultiService()
        ParentWatch(reactor, interval=1.0, getppid=lambda: parents[0]).setServiceParent(top)
        top.startService()
        reactor.advance(5)
        self.assertFalse(reactor.hasStopped)
        parents[0] = 1          # re-parented to init: the parent died
        reactor.advance(1)
        self.assertTrue(reactor.hasStopped)
