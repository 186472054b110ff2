"""RedisSwarmStore against a real redis-server (started per test on a free loopback port, no
persistence, stopped by PID). Each test runs its own reactor until its coroutine ends."""

import time

import pytest
from twisted.internet import defer, task
from twisted.internet.epollreactor import EPollReactor

from peerit.testing.redis import RedisServer, redis_server_path
from peerit.tracker.redis_store import RedisSwarmStore, encode_contact
from peerit.tracker.resp import parse_redis_url
from peerit.tracker.store import Contact

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(redis_server_path() is None, reason="redis-server is not installed "
                       "(bin/setup --test installs it)"),
]

SWARM, OTHER = b"S" * 32, b"T" * 32


def contact(n: int) -> Contact:
    return Contact(bytes([n]) * 32, 6881, 6882, f"198.51.100.{n}", ("192.168.1.5",))


def run(test, timeout: float = 30.0):
    """Run ``await test(reactor)`` on a reactor of its own; re-raise what it raised."""
    reactor = EPollReactor()
    outcome = []

    async def main():
        try:
            outcome.append(await test(reactor))
        except BaseException as e:
            outcome.append(e)
        finally:
            reactor.stop()
    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(main()))
    reactor.callLater(timeout, reactor.stop)
    reactor.run(installSignalHandlers=False)
    if not outcome:
        raise TimeoutError(f"the test did not finish in {timeout}s")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


async def until(reactor, condition, timeout: float = 5.0, what: str = "condition"):
    """Wait (bounded) for ``condition()``; returns how long it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        await task.deferLater(reactor, 0.01, lambda: None)
    return time.monotonic() - start


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def stores(reactor, redis, *owners, **kwargs):
    made = [RedisSwarmStore(reactor, parse_redis_url(redis.url), owner, **kwargs)
            for owner in owners]
    for store in made:
        store.start()
    return made


async def started(reactor, *made):
    await until(reactor, lambda: all(s.ready for s in made), what="stores ready")


def test_an_entry_made_by_one_process_is_in_anothers_peer_lists_within_a_second(redis):
    async def test(reactor):
        a, b = stores(reactor, redis, b"A", b"B")
        joined = []
        b.on_new_entry = lambda info_hash, peer_id: joined.append((info_hash, peer_id))
        await started(reactor, a, b)
        a.put_contact(contact(1), 100.0)
        a.announce(SWARM, contact(1).peer_id, True, 100.0)
        took = await until(reactor, lambda: b.role(SWARM, contact(1).peer_id) is True)
        assert took < 1.0
        assert joined == [(SWARM, contact(1).peer_id)]
        assert b.sample(SWARM, 10, b"x" * 32, True) == \
            [a.encoded_peer_info(SWARM, contact(1).peer_id)]
        assert b.owner_of(contact(1).peer_id) == b"A"
        # Redis holds it as chihaya lays it out: a hash per swarm, one per peer.
        assert redis.command("HGET", b"peerit:s:" + SWARM, contact(1).peer_id) == b"1"
        assert redis.command("HGET", b"peerit:p:" + contact(1).peer_id, "c") == \
            encode_contact(contact(1))
        a.announce(SWARM, contact(1).peer_id, False, 101.0)     # now a leecher
        a.announce(OTHER, contact(1).peer_id, False, 101.0)
        a.remove(SWARM, contact(1).peer_id)
        await until(reactor, lambda: b.role(SWARM, contact(1).peer_id) is None
                    and b.role(OTHER, contact(1).peer_id) is False)
        a.remove_peer(contact(1).peer_id)
        await until(reactor, lambda: b.stats()["peers"] == 0)
        assert redis.command("DBSIZE") == 1       # only the change stream is left
        a.stop(), b.stop()
    run(test)


def test_a_newer_session_elsewhere_supersedes_and_the_old_one_cannot_undo_it(redis):
    async def test(reactor):
        a, b = stores(reactor, redis, b"A", b"B")
        superseded = []
        a.on_superseded = superseded.append
        await started(reactor, a, b)
        peer = contact(1).peer_id
        a.put_contact(contact(1), 100.0)
        a.announce(SWARM, peer, False, 100.0)
        await until(reactor, lambda: b.role(SWARM, peer) is False)
        b.put_contact(contact(1), 105.0)          # the daemon reconnected to B
        b.announce(OTHER, peer, True, 105.0)
        await until(reactor, lambda: superseded == [peer], what="A told")
        a.remove_peer(peer)                       # A's old session closes late
        await until(reactor, lambda: a.role(OTHER, peer) is True)
        assert redis.command("HGET", b"peerit:p:" + peer, "o") == b"B"
        assert redis.command("HGET", b"peerit:s:" + OTHER, peer) == b"1"
        assert redis.command("HGET", b"peerit:s:" + SWARM, peer) is None, \
            "the old session's entries went with it"
        assert a.role(SWARM, peer) is None and b.role(SWARM, peer) is None
        a.stop(), b.stop()
    run(test)


def test_expiry_deletes_only_peers_still_stale_when_it_runs(redis):
    async def test(reactor):
        a, b = stores(reactor, redis, b"A", b"B")
        await started(reactor, a, b)
        for n, seen in ((1, 100.0), (2, 200.0), (3, 100.0)):
            a.put_contact(contact(n), seen)
            a.announce(SWARM, contact(n).peer_id, False, seen)
        await until(reactor, lambda: b.stats()["entries"] == 3)
        # 3 is refreshed (as its owner's refresh does) before the expiry runs.
        redis.command("ZADD", b"peerit:seen", "XX", "GT", 300, contact(3).peer_id)
        removed = await b.collect_garbage(150.0)
        assert removed == 1
        events = redis.command("XRANGE", b"peerit:ev", "-", "+")
        expired = [dict(zip(f[::2], f[1::2]))[b"p"] for _, f in events
                   if dict(zip(f[::2], f[1::2])).get(b"k") == b"P"]
        assert expired == [contact(1).peer_id]
        assert b.role(SWARM, contact(2).peer_id) is False
        assert b.role(SWARM, contact(3).peer_id) is False
        # 1's session is alive on A (its owner did not refresh it, as after an outage): A
        # writes it back at once, and B has it again.
        await until(reactor, lambda: redis.command("HGET", b"peerit:s:" + SWARM,
                                                   contact(1).peer_id) == b"0")
        await until(reactor, lambda: b.role(SWARM, contact(1).peer_id) is False)
        assert a.role(SWARM, contact(1).peer_id) is False
        # A peer of a process that died (nobody refreshes it, nobody writes it back) goes
        # from Redis and from every view.
        a.stop()
        await b.collect_garbage(250.0)
        await until(reactor, lambda: b.role(SWARM, contact(2).peer_id) is None)
        assert redis.command("HEXISTS", b"peerit:p:" + contact(2).peer_id, "c") == 0
        assert b.role(SWARM, contact(3).peer_id) is False
        b.stop()
    run(test)


def test_a_redis_restart_that_lost_everything_is_whole_again(redis):
    async def test(reactor):
        a, b = stores(reactor, redis, b"A", b"B")
        await started(reactor, a, b)
        a.put_contact(contact(1), 100.0)
        a.announce(SWARM, contact(1).peer_id, True, 100.0)
        b.put_contact(contact(2), 100.0)
        b.announce(SWARM, contact(2).peer_id, False, 100.0)
        await until(reactor, lambda: a.stats()["entries"] == b.stats()["entries"] == 2)
        redis.stop()
        await until(reactor, lambda: not a.ready and not b.ready, what="outage seen")
        # Both keep answering from their views meanwhile; a change made now is kept.
        assert a.sample(SWARM, 10, b"x" * 32, True) and b.role(SWARM, contact(1).peer_id)
        a.announce(OTHER, contact(1).peer_id, False, 101.0)
        redis.start()
        await until(reactor, lambda: a.ready and b.ready, timeout=10, what="reconnected")
        await until(reactor, lambda: redis.command("HLEN", b"peerit:s:" + SWARM) == 2
                    and redis.command("HGET", b"peerit:s:" + OTHER, contact(1).peer_id)
                    == b"0", what="table written back")
        await until(reactor, lambda: b.role(OTHER, contact(1).peer_id) is False)
        assert a.syncs == b.syncs == 2
        a.stop(), b.stop()
    run(test)


def test_a_process_that_fell_behind_a_trimmed_stream_reloads(redis):
    """B stops reading while A makes more changes (1640) than the stream keeps (1000): B
    notices that more were trimmed than it had read, and reloads the table."""
    async def test(reactor):
        a, b = stores(reactor, redis, b"A", b"B", stream_length=1000, reply_timeout=30)
        await started(reactor, a, b)
        b._reader.transport.pauseProducing()
        for n in range(1, 41):
            a.put_contact(contact(n), 100.0)
            for h in range(40):
                a.announce(bytes([h]) * 32, contact(n).peer_id, False, 100.0)
        await until(reactor, lambda: redis.command("ZCARD", b"peerit:seen") == 40)
        await until(reactor, lambda: redis.command("XLEN", b"peerit:ev") < 1640,
                    what="stream trimmed")
        b._reader.transport.resumeProducing()
        await until(reactor, lambda: b.syncs == 2, timeout=10, what="B reloaded")
        await until(reactor, lambda: b.stats()["entries"] == 1600)
        a.stop(), b.stop()
    run(test)
