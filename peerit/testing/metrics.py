"""Read a running program's ``/metrics`` page in tests and benchmarks."""

import re
import subprocess
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

METRICS_LINE = re.compile(r"serving Prometheus metrics on (http://[^ \"]+/metrics)")


def metrics_url(log_text: str) -> str:
    """The URL a program logged when its metrics service started."""
    match = METRICS_LINE.search(log_text)
    if match is None:
        raise LookupError("no 'serving Prometheus metrics' line in the log")
    return match.group(1)


def scrape(url: str, timeout: float = 10.0) -> dict:
    """``{(name, ((label, value), ...)): value}`` for every sample of the page."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        if not response.headers["Content-Type"].startswith("text/plain"):
            raise ValueError(f"{url} answered {response.headers['Content-Type']}")
        text = response.read().decode()
    return parse_samples(text)


def parse_samples(text: str) -> dict:
    """A page in the text exposition format as ``{(name, labels): value}``."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict, name: str, **labels) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and wanted <= set(sample_labels))


SCRAPER = r"""
import sys, time, urllib.request
interval, limit, urls = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
done = failed = 0
end = time.monotonic() + limit
while time.monotonic() < end:
    started = time.monotonic()
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
            done += 1
        except OSError:
            failed += 1
    print(done, failed, flush=True)
    time.sleep(max(0.0, interval - (time.monotonic() - started)))
"""


class Scraper:
    """Scrapes ``urls`` every ``interval`` seconds from a child process (so the scraping
    costs the measured programs what Prometheus would, and the caller's CPU nothing), for at
    most ``limit`` seconds; ended by PID with :meth:`stop`, which returns (scrapes, failures).
    """

    def __init__(self, urls: list[str], interval: float = 1.0, limit: float = 900.0):
        self._process = subprocess.Popen(
            [sys.executable, "-c", SCRAPER, str(interval), str(limit), *urls],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def stop(self) -> tuple[int, int]:
        self._process.terminate()
        try:
            out, _ = self._process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            out, _ = self._process.communicate()
        lines = out.split()
        return (int(lines[-2]), int(lines[-1])) if len(lines) >= 2 else (0, 0)
