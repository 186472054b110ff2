"""Sizes and rates (peerit.units): SI prefixes are powers of 1000 and binary ones powers of
1024 in every option, old spellings still read, piece lengths keep their binary meaning."""

from twisted.trial.unittest import SynchronousTestCase

from peerit import units
from peerit.ctl import offline
from peerit.errors import UsageError
from peerit.tracker import tap as tracker_tap


class SizeTests(SynchronousTestCase):
    def test_si_prefixes_are_powers_of_1000(self):
        self.assertEqual(units.parse_size("262144"), 262144)
        self.assertEqual(units.parse_size("256k"), 256_000)
        self.assertEqual(units.parse_size("256K"), 256_000)
        self.assertEqual(units.parse_size("1M"), 10**6)
        self.assertEqual(units.parse_size("1MB"), 10**6)
        self.assertEqual(units.parse_size("1.5M"), 1_500_000)
        self.assertEqual(units.parse_size("1G"), 10**9)

    def test_binary_prefixes_are_powers_of_1024(self):
        self.assertEqual(units.parse_size("256Ki"), 256 * 1024)
        self.assertEqual(units.parse_size("256kib"), 256 * 1024)
        self.assertEqual(units.parse_size("4MiB"), 4 << 20)
        self.assertEqual(units.parse_size("1Gi"), 1 << 30)

    def test_bad_sizes_are_one_usage_error(self):
        for bad in ("", "-1", "M", "1X", "0.5", "1.0000001k", "fast"):
            self.assertRaises(UsageError, units.parse_size, bad)

    def test_format_size_uses_binary_units(self):
        self.assertEqual(units.format_size(0), "0 B")
        self.assertEqual(units.format_size(1023), "1023 B")
        self.assertEqual(units.format_size(1024), "1 KiB")
        self.assertEqual(units.format_size(1536), "1.5 KiB")
        self.assertEqual(units.format_size(100 << 30), "100 GiB")
        self.assertEqual(units.format_rate(3 << 20), "3 MiB/s")


class PieceLengthTests(SynchronousTestCase):
    def test_piece_lengths_read_si_spellings_as_binary_since_they_are_powers_of_two(self):
        self.assertEqual(offline.parse_piece_length("16K"), 16384)
        self.assertEqual(offline.parse_piece_length("16Ki"), 16384)
        self.assertEqual(offline.parse_piece_length("64M"), 64 << 20)
        self.assertEqual(offline.parse_piece_length("1MiB"), 1 << 20)
        self.assertEqual(offline.parse_piece_length("262144"), 262144)

    def test_piece_lengths_out_of_range_or_not_powers_of_two_are_refused(self):
        for bad in ("8K", "128M", "100000", "0", "1.5M"):
            self.assertRaises(UsageError, offline.parse_piece_length, bad)


class RateTests(SynchronousTestCase):
    def test_rates_take_the_same_units_as_sizes_and_a_per_second_suffix(self):
        self.assertEqual([units.parse_rate(t) for t in
                          ("10M", "512k", "8Mi", "1e6", "100", "5MB/s", "2MiB/s")],
                         [10e6, 512e3, 8 * 2**20, 1e6, 100.0, 5e6, 2 * 2**20])

    def test_one_meaning_of_M_in_every_option(self):
        self.assertEqual(units.parse_size("3M"), units.parse_rate("3M"))
        self.assertEqual(tracker_tap.parse_rate("3M"), units.parse_size("3M"))
        self.assertEqual(tracker_tap.parse_rate("3Mi"), units.parse_size("3Mi"))
