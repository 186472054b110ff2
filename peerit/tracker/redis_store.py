"""The swarm table shared by several tracker processes (on one host or many) through Redis.

Each process answers from a local view (a :class:`MemorySwarmStore` holding every entry of
every process), so the hot path stays synchronous; the changes a process makes in one reactor
turn are written to Redis by one Lua script call that changes the table and appends each
change to a stream in one atomic step, and every process applies the others' changes from
that stream (``XREAD BLOCK``: a change is in the other views within milliseconds, well inside
the one-second bound).

Layout (chihaya's, with the seeder flag as the value)::

    PREFIX s:<info hash>  hash   peer id -> "0" leecher / "1" seeder         one per swarm
    PREFIX p:<peer id>    hash   "c" -> contact (an encoded PeerInfo), "o" -> owning process,
                                 info hash -> "0"/"1" (the swarms it is in)  one per peer
    PREFIX o:<owner>      set    the peers a process owns
    PREFIX owners         set    the processes that own peers
    PREFIX alive:<owner>  string set by each process every refresh interval, expiring after
                                 three: a process that stops refreshing is dead
    PREFIX ev             stream the changes: C contact, A entry, R entry gone, P peer gone
    PREFIX q:<owner>      stream signals to one process (peerit.tracker.signals)

A peer is written only by the process that holds its session (its *owner*): the scripts
check the owner, so a session that lingers on one process after its daemon reconnected to
another cannot undo the newer session's entries. Garbage collection is one script that finds
the processes whose ``alive`` key expired and deletes the peers they still own in the same
atomic step, so it deletes only what is still stale when it runs (a peer whose daemon
reconnected elsewhere meanwhile has another owner, and stays). A process's liveness costs
one key refreshed per interval, not a timestamp per peer.

Faults: while Redis is unreachable the view keeps answering and sessions stay up; writes
are not queued (a lost write needs no replay): on every (re)connection the process writes
back every peer it owns from its view, then reloads the rest of the view from Redis and
follows the stream from the point it noted before. That also makes the table whole after a
Redis restart that lost everything, without waiting for daemons.
"""

import os
import random
import socket
from typing import Callable

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from peerit.tracker.resp import RedisError, RedisUnavailable, RedisURL, connect
from peerit.tracker.store import Contact, ISwarmStore, MemorySwarmStore
from peerit.wire import tracker as wire

log = Logger(namespace="peerit.tracker.redis")

_DELETE_PEER = """
local function delete_peer(key, peer, prefix)
  local fields = redis.call('HKEYS', key)
  for _, field in ipairs(fields) do
    if #field == 32 then redis.call('HDEL', prefix .. 's:' .. field, peer) end
  end
  redis.call('DEL', key)
end
"""

# The changes of one reactor turn, in order, in one atomic step. ARGV: owner, max stream
# length, prefix, then the operations, each a letter and its fields:
#   U peer contact fresh n (info hash, seeder) x n   put the peer (a new session when
#       fresh = "1": an older session's entries elsewhere go; else written back with its
#       entries). -> 1, or -2 when another process owns the peer and this is not fresh
#   A peer info-hash seeder       add or update an entry -> 1 new, 2 changed, 0 unchanged,
#       -1 no such peer (expired meanwhile), -2 not the owner
#   R peer info-hash              remove an entry -> 1, 0 not there, -2 not the owner
#   P peer                        remove the peer and its entries -> 1, 0 not the owner
# Returns the results in the order of the operations.
BATCH = _DELETE_PEER + """
local owner, maxlen, prefix = ARGV[1], ARGV[2], ARGV[3]
local events, owned = prefix .. 'ev', prefix .. 'o:' .. owner
local results = {}
local function event(...)
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', ...)
end
local function set_entry(key, peer, h, s)
  if redis.call('HGET', key, h) == s then return false end
  redis.call('HSET', key, h, s)
  redis.call('HSET', prefix .. 's:' .. h, peer, s)
  event('k', 'A', 'p', peer, 'h', h, 's', s, 'o', owner)
  return true
end
local i = 4
while i <= #ARGV do
  local op, peer = ARGV[i], ARGV[i + 1]
  local key = prefix .. 'p:' .. peer
  local result
  if op == 'U' then
    local contact, fresh, n = ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
    local prev_c, prev_o = unpack(redis.call('HMGET', key, 'c', 'o'))
    if prev_o and prev_o ~= owner and fresh ~= '1' then
      result = -2
    else
      if prev_o and prev_o ~= owner then
        delete_peer(key, peer, prefix)
        redis.call('SREM', prefix .. 'o:' .. prev_o, peer)
        prev_c = false
      end
      redis.call('HSET', key, 'c', contact, 'o', owner)
      redis.call('SADD', owned, peer)
      redis.call('SADD', prefix .. 'owners', owner)
      if prev_c ~= contact then event('k', 'C', 'p', peer, 'c', contact, 'o', owner) end
      for j = i + 5, i + 4 + 2 * n, 2 do set_entry(key, peer, ARGV[j], ARGV[j + 1]) end
      result = 1
    end
    i = i + 5 + 2 * n
  elseif op == 'A' then
    local o = redis.call('HGET', key, 'o')
    if not o then result = -1
    elseif o ~= owner then result = -2
    else
      local was = redis.call('HGET', key, ARGV[i + 2])
      if set_entry(key, peer, ARGV[i + 2], ARGV[i + 3]) then
        if was then result = 2 else result = 1 end
      else
        result = 0
      end
    end
    i = i + 4
  elseif op == 'R' then
    if redis.call('HGET', key, 'o') ~= owner then result = -2
    elseif redis.call('HDEL', key, ARGV[i + 2]) == 0 then result = 0
    else
      redis.call('HDEL', prefix .. 's:' .. ARGV[i + 2], peer)
      event('k', 'R', 'p', peer, 'h', ARGV[i + 2], 'o', owner)
      result = 1
    end
    i = i + 3
  elseif op == 'P' then
    if redis.call('HGET', key, 'o') ~= owner then result = 0
    else
      delete_peer(key, peer, prefix)
      redis.call('SREM', owned, peer)
      event('k', 'P', 'p', peer, 'o', owner)
      result = 1
    end
    i = i + 2
  else
    return redis.error_reply('unknown operation ' .. tostring(op))
  end
  results[#results + 1] = result
end
return results
"""

# ARGV: most peers per run, max stream length, prefix. The peers of processes whose alive
# key has expired are picked and deleted in this one atomic step; a peer another process
# owns by now is left alone. Returns how many peers were deleted.
EXPIRE = _DELETE_PEER + """
local limit, maxlen, prefix = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local removed = 0
for _, owner in ipairs(redis.call('SMEMBERS', prefix .. 'owners')) do
  if removed >= limit then break end
  if redis.call('EXISTS', prefix .. 'alive:' .. owner) == 0 then
    local owned = prefix .. 'o:' .. owner
    for _, peer in ipairs(redis.call('SRANDMEMBER', owned, limit - removed)) do
      local key = prefix .. 'p:' .. peer
      if redis.call('HGET', key, 'o') == owner then
        delete_peer(key, peer, prefix)
        redis.call('XADD', prefix .. 'ev', 'MAXLEN', '~', maxlen, '*',
                   'k', 'P', 'p', peer, 'o', '')
        removed = removed + 1
      end
      redis.call('SREM', owned, peer)
    end
    if redis.call('SCARD', owned) == 0 then redis.call('SREM', prefix .. 'owners', owner) end
  end
end
return removed
"""

SCRIPTS = {"batch": BATCH, "expire": EXPIRE}

_FLAG = (b"0", b"1")
EXPIRE_BATCH = 1000
WRITE_BATCH = 1000      # operations per script call: Redis runs nothing else meanwhile
READ_BATCH = 1000
READ_BLOCK_MS = 1000
RESYNC_BATCH = 500


def encode_contact(contact: Contact) -> bytes:
    return wire.encode_peer_info(contact.peer_info(False))


def decode_contact(data: bytes) -> Contact:
    info = wire.PEER_INFO.parse(data)
    return Contact(bytes(info.peer_id), info.tcp_port, info.udp_port, info.public_address,
                   tuple(info.lan_addresses))


def _pairs(flat: list) -> dict:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


@implementer(ISwarmStore)
class RedisSwarmStore:
    """The swarm table in Redis, answered from a local view.

    ``owner`` names this process (unique per run: a restarted process is a new owner).
    Hooks the tracker sets: ``on_new_entry(info_hash, peer_id)`` when another process adds
    an entry (to push PeerJoined to members here), ``on_superseded(peer_id)`` when a peer
    whose session is here opened a newer one elsewhere, ``on_signal(fields)`` for each
    message to this process (``peerit.tracker.signals``).
    """

    def __init__(self, clock, url: RedisURL, owner: bytes, password: bytes | None = None, *,
                 prefix: bytes = b"peerit:", refresh_interval: float = 15.0,
                 stream_length: int = 200_000, reply_timeout: float = 5.0,
                 rng: random.Random | None = None, connect=connect):
        if stream_length < READ_BATCH:
            # A process behind by more than the stream keeps must then read a full batch,
            # which is when it checks for a gap.
            raise ValueError(f"stream_length must be at least {READ_BATCH}")
        self.clock = clock
        self.url = url
        self.owner = owner
        self.password = password
        self.prefix = prefix
        self.refresh_interval = refresh_interval
        self.stream_length = stream_length
        self.reply_timeout = reply_timeout
        self.view = MemorySwarmStore(rng)
        self._rng = rng or random.Random()
        self._connect = connect
        self._owned: set[bytes] = set()           # peers whose session is in this process
        self._owners: dict[bytes, bytes] = {}     # every known peer -> its owner
        self._shas: dict[str, bytes] = {}
        self._batch: list[tuple] = []
        self._flush_call = None
        self.connection = None                    # commands
        self._reader = None                       # XREAD BLOCK on its own connection
        self.ready = False
        self.running = False
        self.syncs = 0
        self._events_key = prefix + b"ev"
        self._queue_key = prefix + b"q:" + owner
        self._alive_key = prefix + b"alive:" + owner
        self._refresher = None
        self._loop = None
        self.on_new_entry: Callable[[bytes, bytes], None] = lambda info_hash, peer_id: None
        self.on_superseded: Callable[[bytes], None] = lambda peer_id: None
        self.on_signal: Callable[[dict], None] = lambda fields: None

    # -- lifetime ----------------------------------------------------------------------------

    def start(self) -> None:
        self.running = True
        self._loop = defer.Deferred.fromCoroutine(self._maintain())
        self._loop.addErrback(lambda f: log.failure("Redis store loop failed", f))
        self._refresher = task.LoopingCall(self._refresh)
        self._refresher.clock = self.clock
        self._refresher.start(self.refresh_interval, now=False)

    def stop(self) -> None:
        self.running = False
        if self._refresher is not None and self._refresher.running:
            self._refresher.stop()
        for connection in (self.connection, self._reader):
            if connection is not None:
                connection.close()

    async def _maintain(self) -> None:
        """Connect, synchronise, follow the stream; on any loss, back off and do it again."""
        delay, failures = 0.5, 0
        while self.running:
            try:
                self.connection = await self._connect(self.clock, self.url, self.password,
                                                      self.reply_timeout)
                self._reader = await self._connect(self.clock, self.url, self.password,
                                                   self.reply_timeout)
                # Either one lost ends both: writes and the stream must resume together.
                for one, other in ((self.connection, self._reader),
                                   (self._reader, self.connection)):
                    one.lost.addCallback(lambda _, other=other: other.close())
                await self._synchronise()
                if failures:
                    log.info("Redis at {url} is back; table synchronised", url=self.url.display)
                delay, failures = 0.5, 0
                await self._follow()
            except (RedisUnavailable, RedisError, defer.FirstError) as e:
                if isinstance(e, defer.FirstError):
                    e = e.subFailure.value
                if failures == 0 and self.running:
                    log.warn("Redis at {url} unavailable ({error}); serving from this "
                             "process's view, reconnecting", url=self.url.display, error=e)
                failures += 1
            except Exception:
                # Not Redis going away (a bug, or something in Redis this code cannot read):
                # say so, and start over from a fresh connection and a reload.
                log.failure("Redis store: synchronisation failed; reconnecting")
                failures += 1
            finally:
                self.ready = False
                # Unsent changes are in the view: the next synchronisation writes them back.
                self._batch = []
                if self._flush_call is not None and self._flush_call.active():
                    self._flush_call.cancel()
                self._flush_call = None
                for connection in (self.connection, self._reader):
                    if connection is not None:
                        connection.close()
                self.connection = self._reader = None
            if self.running:
                await task.deferLater(self.clock, delay * (0.75 + self._rng.random() / 2),
                                      lambda: None)
                delay = min(delay * 2, 30.0)

    async def _synchronise(self) -> None:
        connection = self.connection
        for name, source in SCRIPTS.items():
            self._shas[name] = await connection.command("SCRIPT", "LOAD", source)
        # Where to follow the streams from: noted first, so nothing written while the table
        # is reloaded is missed (changes seen twice are harmless: applying one is idempotent).
        events_from, events_added = await self._stream_position(self._events_key)
        queue_from, _ = await self._stream_position(self._queue_key)
        await self._say_alive()
        for peer_id in list(self._owned):
            self._write_back(peer_id)
        await self._reload()
        self._events_from, self._queue_from = events_from, queue_from
        # Changes this process has consumed (read, or before where it started reading): a
        # trim past this count means some it had not read are gone.
        self._events_consumed = events_added
        self.ready = True
        self.syncs += 1

    async def _stream_position(self, key: bytes) -> tuple[bytes, int]:
        """The stream's last id and how many entries were ever added to it."""
        try:
            info = _pairs(await self.connection.command("XINFO", "STREAM", key))
        except RedisError:
            return b"0-0", 0    # no such stream yet
        return info[b"last-generated-id"], info[b"entries-added"]

    async def _reload(self) -> None:
        """Replace every peer this process does not own with what Redis holds."""
        found: dict[bytes, tuple[Contact, bytes, dict]] = {}
        cursor = b"0"
        pattern = self.prefix + b"p:*"
        start = len(self.prefix) + 2
        while True:
            cursor, keys = await self.connection.command("SCAN", cursor, "MATCH", pattern,
                                                         "COUNT", RESYNC_BATCH)
            keys = [k for k in keys if len(k) == start + 32 and k[start:] not in self._owned]
            records = await defer.gatherResults(
                [self.connection.command("HGETALL", key) for key in keys], consumeErrors=True)
            for key, flat in zip(keys, records):
                fields = _pairs(flat)
                if b"c" not in fields or b"o" not in fields:
                    continue
                swarms = {f: v == b"1" for f, v in fields.items() if len(f) == 32}
                found[key[start:]] = (decode_contact(fields[b"c"]), fields[b"o"], swarms)
            if cursor == b"0":
                break
        now = self.clock.seconds()
        for peer_id in [p for p in self._owners if p not in self._owned and p not in found]:
            self._forget(peer_id)
        for peer_id, (contact, owner, swarms) in found.items():
            if peer_id in self._owned:
                continue
            self._forget(peer_id)
            self.view.put_contact(contact, now)
            self._owners[peer_id] = owner
            for info_hash, seeder in swarms.items():
                self.view.announce(info_hash, peer_id, seeder, now)

    async def _follow(self) -> None:
        """Apply the stream of changes and this process's signals until the connection ends."""
        reader = self._reader
        while self.running and reader is self._reader:
            reply = await reader.command(
                "XREAD", "COUNT", READ_BATCH, "BLOCK", READ_BLOCK_MS, "STREAMS",
                self._events_key, self._queue_key, self._events_from, self._queue_from)
            for key, entries in reply or ():
                if not entries:
                    continue
                if key == self._events_key:
                    self._events_from = entries[-1][0]
                    consumed = self._events_consumed
                    self._events_consumed += len(entries)
                    # A full batch: this process is behind, perhaps by more than the stream
                    # keeps.
                    if len(entries) == READ_BATCH and await self._fell_behind(consumed):
                        return
                    for _, flat in entries:
                        self._apply(_pairs(flat))
                else:
                    self._queue_from = entries[-1][0]
                    for _, flat in entries:
                        self.on_signal(_pairs(flat))

    async def _fell_behind(self, consumed: int) -> bool:
        """True (and a reload is due) when the stream was trimmed past the ``consumed``
        changes this process had read: some it had not read are gone. (Entries leave the
        stream only by trimming, oldest first.)"""
        info = _pairs(await self.connection.command("XINFO", "STREAM", self._events_key))
        if info[b"entries-added"] - info[b"length"] > consumed:
            log.warn("fell behind the Redis change stream; reloading the table")
            self.connection.close()
            return True
        return False

    # -- applying other processes' changes ----------------------------------------------------

    def _apply(self, event: dict) -> None:
        owner = event.get(b"o", b"")
        if owner == self.owner:
            return
        kind, peer_id = event.get(b"k"), event.get(b"p")
        view = self.view
        if kind == b"P":
            if peer_id in self._owned:
                # Collected in Redis while its session is alive here (this process could not
                # say it was alive for three intervals): write it back.
                self._write_back(peer_id)
            elif self._owners.get(peer_id) == owner or not owner:
                self._forget(peer_id)
            return
        if peer_id in self._owned:
            if kind == b"C":
                # The daemon opened a newer session on another process.
                self.on_superseded(peer_id)
                self._owned.discard(peer_id)
            else:
                return
        now = self.clock.seconds()
        if kind == b"C":
            if self._owners.get(peer_id) != owner:
                self.view.remove_peer(peer_id)
            view.put_contact(decode_contact(event[b"c"]), now)
            self._owners[peer_id] = owner
        elif kind == b"A":
            if self._owners.get(peer_id) != owner:
                return      # an entry of a session that is no longer the peer's
            info_hash = event[b"h"]
            if view.announce(info_hash, peer_id, event[b"s"] == b"1", now):
                self.on_new_entry(info_hash, peer_id)
        elif kind == b"R":
            if self._owners.get(peer_id) == owner:
                view.remove(event[b"h"], peer_id)

    def _forget(self, peer_id: bytes) -> None:
        self.view.remove_peer(peer_id)
        self._owners.pop(peer_id, None)

    # -- writing -----------------------------------------------------------------------------

    def _queue(self, *operation) -> None:
        """A change for Redis: sent with the others of this reactor turn in one script call
        (one round trip and one atomic step for a whole read's announces)."""
        if self.connection is None or "batch" not in self._shas:
            return      # written back on reconnection
        self._batch.append(operation)
        if len(self._batch) >= WRITE_BATCH:
            self._flush()
        elif self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        operations, self._batch = self._batch, []
        if not operations or self.connection is None:
            return
        args = []
        for operation in operations:
            args += operation
        d = self._script("batch", [], [self.owner, self.stream_length, self.prefix, *args])
        if d is not None:
            d.addCallback(self._written, operations)

    def _written(self, results, operations) -> None:
        for operation, result in zip(operations, results or ()):
            kind, peer_id = operation[0], operation[1]
            if peer_id not in self._owned:
                continue
            if kind == b"A" and result == -1:
                # Expired in Redis while its session is alive here: write it back whole.
                self._write_back(peer_id)
            elif kind == b"U" and result == -2:
                # Another process took the peer over while this one could not hear it.
                self._owned.discard(peer_id)
                self.on_superseded(peer_id)

    def _script(self, name: str, keys: list, args: list) -> defer.Deferred | None:
        connection = self.connection
        if connection is None or name not in self._shas:
            return None     # written back on reconnection
        d = connection.command("EVALSHA", self._shas[name], len(keys), *keys, *args)
        d.addErrback(self._write_failed, name)
        return d

    def _write_failed(self, failure, name):
        if failure.check(RedisUnavailable):
            return None     # the reconnection writes everything back
        log.failure("Redis {script} failed", failure, script=name)
        return None

    def _write_back(self, peer_id: bytes, fresh: bool = False) -> None:
        contact = self.view.contact(peer_id)
        if contact is None:
            return
        pairs = []
        if not fresh:
            for info_hash, seeder in self.view.swarms_of(peer_id).items():
                pairs += (info_hash, _FLAG[seeder])
        self._queue(b"U", peer_id, encode_contact(contact), _FLAG[fresh], len(pairs) // 2,
                    *pairs)

    def _say_alive(self) -> defer.Deferred:
        """This process is alive for three refresh intervals."""
        ttl = int(self.refresh_interval * 3 * 1000)
        return self.connection.command("SET", self._alive_key, b"1", "PX", ttl)

    def _refresh(self) -> None:
        if self.connection is not None and self.ready:
            self._say_alive().addErrback(self._write_failed, "alive")

    def collect_garbage(self) -> defer.Deferred | None:
        """Delete, in Redis, the peers of processes that stopped saying they are alive (at
        most one batch)."""
        if not self.ready:
            return None
        return self._script("expire", [], [EXPIRE_BATCH, self.stream_length, self.prefix])

    # -- signals -----------------------------------------------------------------------------

    def owner_of(self, peer_id: bytes) -> bytes | None:
        return self._owners.get(peer_id)

    def send_signal(self, owner: bytes, fields: dict) -> bool:
        """Append a message to another process's queue; False while Redis is unreachable.
        At most once: the sender retries, the receiver ignores repeats."""
        connection = self.connection
        if connection is None or not self.ready:
            return False
        args = []
        for key, value in fields.items():
            args += (key, value)
        queue = self.prefix + b"q:" + owner
        connection.command("XADD", queue, "MAXLEN", "~", 10_000, "*", *args).addErrback(
            self._write_failed, "signal")
        # A queue whose reader is gone (a process that died) goes away by itself.
        connection.command("EXPIRE", queue, 300).addErrback(self._write_failed, "signal")
        return True

    # -- ISwarmStore -------------------------------------------------------------------------

    def put_contact(self, contact: Contact, now: float) -> None:
        peer_id = contact.peer_id
        if peer_id not in self._owned:
            # A session here for a peer whose entries (in the view) are another process's
            # older session's: they go (in Redis too, in the script); this one replays its own.
            self.view.remove_peer(peer_id)
        self.view.put_contact(contact, now)
        self._owned.add(peer_id)
        self._owners[peer_id] = self.owner
        self._write_back(peer_id, fresh=True)

    def touch(self, peer_id: bytes, now: float) -> None:
        self.view.touch(peer_id, now)

    def announce(self, info_hash: bytes, peer_id: bytes, seeder: bool, now: float) -> bool:
        view = self.view
        was = view.role(info_hash, peer_id)
        new = view.announce(info_hash, peer_id, seeder, now)
        if was is not bool(seeder):
            self._queue(b"A", peer_id, info_hash, _FLAG[bool(seeder)])
        return new

    def remove(self, info_hash: bytes, peer_id: bytes) -> bool:
        if not self.view.remove(info_hash, peer_id):
            return False
        self._queue(b"R", peer_id, info_hash)
        return True

    def remove_peer(self, peer_id: bytes) -> list[bytes]:
        if peer_id not in self._owned:
            # A session here that another process's newer session replaced: the view holds
            # that one's entries now, and they are not this process's to drop.
            return []
        swarms = self.view.remove_peer(peer_id)
        self._owned.discard(peer_id)
        self._owners.pop(peer_id, None)
        self._queue(b"P", peer_id)
        return swarms

    def swarm_count(self, peer_id: bytes) -> int:
        return self.view.swarm_count(peer_id)

    def role(self, info_hash: bytes, peer_id: bytes) -> bool | None:
        return self.view.role(info_hash, peer_id)

    def sample(self, info_hash: bytes, count: int, asker: bytes,
               prefer_seeders: bool) -> list[bytes]:
        return self.view.sample(info_hash, count, asker, prefer_seeders)

    def members(self, info_hash: bytes, count: int, exclude: bytes) -> list[bytes]:
        return self.view.members(info_hash, count, exclude)

    def peer_info(self, info_hash: bytes, peer_id: bytes) -> wire.PeerInfo | None:
        return self.view.peer_info(info_hash, peer_id)

    def encoded_peer_info(self, info_hash: bytes, peer_id: bytes) -> bytes | None:
        return self.view.encoded_peer_info(info_hash, peer_id)

    def expire(self, cutoff: float) -> list[bytes]:
        """Owned peers silent since ``cutoff`` leave (as in memory); in Redis, the peers of
        processes that died go."""
        stale = [p for p in self._owned if self.view.last_seen(p) < cutoff]
        for peer_id in stale:
            self.remove_peer(peer_id)
        self.collect_garbage()
        return stale

    def stats(self) -> dict:
        return {**self.view.stats(), "owned": len(self._owned), "redis": self.ready}

    def census(self, size_bounds: tuple[int, ...]) -> dict:
        """The whole table's figures (the view holds every process's entries): every worker
        reports the same, hence ``max`` across workers in docs/observability.md."""
        return self.view.census(size_bounds)


class RedisStoreService(service.Service):
    """Runs a :class:`RedisSwarmStore` for ``tracker`` (hooks set, started, stopped)."""

    name = "peerit-tracker-redis"

    def __init__(self, store: RedisSwarmStore, tracker):
        self.store = store
        store.on_new_entry = tracker.peer_joined
        store.on_superseded = lambda peer_id: _supersede(tracker, peer_id)

    def startService(self):
        super().startService()
        self.store.start()
        log.info("swarm table in Redis at {url} as {owner}", url=self.store.url.display,
                 owner=self.store.owner.decode())

    def stopService(self):
        super().stopService()
        self.store.stop()


def _supersede(tracker, peer_id: bytes) -> None:
    session = tracker.session_of(peer_id)
    if session is not None:
        session.fail("superseded", "a newer session for this peer id opened on another "
                     "tracker process")


def new_owner(label: str, host: str | None = None, relay_host: str = "") -> bytes:
    """A name for this process in Redis: ``HOST/LABEL-RANDOM`` (6 random bytes: a restart is
    a new owner), where HOST is the machine's name, followed by ``@ADDRESS`` when the process
    knows the address its relay is reached at (the host part tells whether two sessions can
    meet at one relay: see :func:`one_relay_host`)."""
    host = host or socket.gethostname()
    if relay_host:
        host = f"{host}@{relay_host}"
    return f"{host}/{label}-{os.urandom(6).hex()}".encode()


def host_of(owner: bytes) -> bytes:
    return owner.rpartition(b"/")[0]


def one_relay_host(owner: bytes, other: bytes) -> bool:
    """True when a daemon whose session is on ``other`` reaches ``owner``'s relay at its own
    tracker's host: both processes are on one machine and do not advertise two different
    relay addresses (a process advertising none is reached where its daemons reach it)."""
    machine, _, relay = host_of(owner).partition(b"@")
    other_machine, _, other_relay = host_of(other).partition(b"@")
    return machine == other_machine and (relay == other_relay or not relay or not other_relay)
