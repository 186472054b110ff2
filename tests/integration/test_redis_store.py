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
        # Left: the change stream, each process's alive key, and A in the owners (until a
        # collection finds it dead with nothing).
        assert sorted(redis.command("KEYS", "*")) == [b"peerit:alive:A", b"peerit:alive:B",
                                                      b"peerit:ev", b"peerit:owners"]
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


def test_expiry_deletes_only_the_peers_of_dead_processes_it_still_finds_there(redis):
    """A process that stops saying it is alive loses its peers, from Redis and from every
    view; a live process's peers stay, and so does a peer that reconnected elsewhere before
    the collection ran (it has another owner by then)."""
    async def test(reactor):
        a, b = stores(reactor, redis, b"A", b"B", refresh_interval=0.2)
        await started(reactor, a, b)
        for n, store in ((1, a), (2, a), (3, b)):
            store.put_contact(contact(n), 100.0)
            store.announce(SWARM, contact(n).peer_id, False, 100.0)
        await until(reactor, lambda: a.stats()["entries"] == b.stats()["entries"] == 3)
        assert await b.collect_garbage() == 0, "everyone is alive"
        a.stop()                    # A dies: its alive key runs out in 0.6 s
        b.put_contact(contact(1), 101.0)     # 1's daemon reconnects to B meanwhile
        b.announce(SWARM, contact(1).peer_id, True, 101.0)
        await until(reactor, lambda: redis.command("EXISTS", b"peerit:alive:A") == 0)
        assert await b.collect_garbage() == 1
        await until(reactor, lambda: b.role(SWARM, contact(2).peer_id) is None)
        assert redis.command("EXISTS", b"peerit:p:" + contact(2).peer_id) == 0
        assert redis.command("HGET", b"peerit:s:" + SWARM, contact(1).peer_id) == b"1"
        assert b.role(SWARM, contact(1).peer_id) is True
        assert b.role(SWARM, contact(3).peer_id) is False
        assert redis.command("SMEMBERS", b"peerit:owners") == [b"B"]
        b.stop()
    run(test)


def test_a_live_process_whose_peers_were_collected_writes_them_back(redis):
    """A process that could not say it was alive in time (a stall, Redis out of reach) but
    still holds the sessions: when it sees its peers collected, it writes them back."""
    async def test(reactor):
        a, b = stores(reactor, redis, b"A", b"B")
        await started(reactor, a, b)
        a.put_contact(contact(1), 100.0)
        a.announce(SWARM, contact(1).peer_id, False, 100.0)
        await until(reactor, lambda: b.role(SWARM, contact(1).peer_id) is False)
        redis.command("DEL", b"peerit:alive:A")
        assert await b.collect_garbage() == 1
        await until(reactor, lambda: redis.command("HGET", b"peerit:s:" + SWARM,
                                                   contact(1).peer_id) == b"0")
        await until(reactor, lambda: b.role(SWARM, contact(1).peer_id) is False)
        assert a.role(SWARM, contact(1).peer_id) is False
        a.stop(), b.stop()
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
        await until(reactor, lambda: redis.command("SCARD", b"peerit:o:A") == 40)
        await until(reactor, lambda: redis.command("XLEN", b"peerit:ev") < 1640,
                    what="stream trimmed")
        b._reader.transport.resumeProducing()
        await until(reactor, lambda: b.syncs == 2, timeout=10, what="B reloaded")
        await until(reactor, lambda: b.stats()["entries"] == 1600)
        a.stop(), b.stop()
    run(test)
