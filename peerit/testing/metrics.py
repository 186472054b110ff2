"""Read a running program's ``/metrics`` page in tests and benchmarks."""

import re
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
