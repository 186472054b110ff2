"""The one token bucket (peerit.ratelimit): refill on an injected clock, both ways of spending,
and the keyed variant's bound on memory."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from peerit.ratelimit import KeyedTokenBuckets, TokenBucket


class TokenBucketTests(SynchronousTestCase):
    def test_take_spends_the_burst_then_refuses_until_time_refills_it(self):
        clock = Clock()
        bucket = TokenBucket(clock, 10.0, 3)
        self.assertEqual([bucket.take() for _ in range(4)], [True, True, True, False])
        clock.advance(0.1)
        self.assertTrue(bucket.take())
        self.assertFalse(bucket.take())

    def test_refill_never_exceeds_the_burst(self):
        clock = Clock()
        bucket = TokenBucket(clock, 10.0, 2)
        clock.advance(100)
        self.assertEqual([bucket.take() for _ in range(3)], [True, True, False])

    def test_a_block_larger_than_the_burst_passes_only_from_a_full_bucket(self):
        clock = Clock()
        bucket = TokenBucket(clock, 100.0, 50)
        self.assertTrue(bucket.take(80), "a full bucket lets an oversized block through")
        self.assertFalse(bucket.take(80), "the overdraft must be repaid first")
        self.assertAlmostEqual(bucket.wait_time(80), 0.8)
        clock.advance(0.8)
        self.assertTrue(bucket.take(80))

    def test_consume_always_spends_and_says_how_long_to_pause(self):
        clock = Clock()
        bucket = TokenBucket(clock, 1000.0, 500)
        self.assertEqual(bucket.consume(500), 0.0)
        self.assertAlmostEqual(bucket.consume(250), 0.25)
        clock.advance(0.25)
        self.assertEqual(bucket.consume(0), 0.0)

    def test_a_given_now_is_used_instead_of_reading_the_clock(self):
        clock = Clock()
        bucket = TokenBucket(clock, 1.0, 1)
        self.assertTrue(bucket.take(1, now=0.0))
        self.assertFalse(bucket.take(1, now=0.5))
        self.assertTrue(bucket.take(1, now=1.5), "time passed per the caller, not the clock")

    def test_rate_and_burst_must_be_positive(self):
        for rate, burst in ((0, 1), (1, 0), (-1, 5)):
            self.assertRaises(ValueError, TokenBucket, Clock(), rate, burst)


class KeyedTokenBucketsTests(SynchronousTestCase):
    def test_each_key_has_its_own_bucket(self):
        buckets = KeyedTokenBuckets(Clock(), 1.0, 2)
        self.assertEqual([buckets.take("a") for _ in range(3)], [True, True, False])
        self.assertTrue(buckets.take("b"), "another source is not limited by the first")

    def test_keys_are_capped_and_the_longest_idle_is_forgotten(self):
        buckets = KeyedTokenBuckets(Clock(), 1.0, 1, max_keys=2)
        self.assertTrue(buckets.take("a"))
        self.assertTrue(buckets.take("b"))
        self.assertFalse(buckets.take("a"))  # "a" is now the most recently used
        self.assertTrue(buckets.take("c"))   # evicts "b", the longest idle
        self.assertEqual(len(buckets), 2)
        self.assertFalse(buckets.take("a"), "a recently used key keeps its empty bucket")
        self.assertTrue(buckets.take("b"), "a forgotten key starts again with a full burst")
