"""Metric families from :mod:`peerit.metrics.counts` and from values read at scrape time."""

from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily)
from prometheus_client.registry import CollectorRegistry

from peerit.metrics.counts import Histogram, LabelledCounter, LabelledHistogram


def counter(name: str, documentation: str, counts: LabelledCounter,
            always: tuple[tuple, ...] = ()) -> CounterMetricFamily:
    """A counter family; ``always`` lists label values exported as 0 before their first
    event, so a dashboard's rate() has a series from the start."""
    family = CounterMetricFamily(name, documentation, labels=counts.labels)
    values = dict.fromkeys(always, 0)
    values.update(counts.values)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


def plain_counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def gauge(name: str, documentation: str, value: float | None = None,
          labels: tuple[str, ...] = (), values: dict | None = None) -> GaugeMetricFamily:
    if not labels:
        return GaugeMetricFamily(name, documentation, value=value)
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for key, number in sorted((values or {}).items()):
        family.add_metric(list(key), number)
    return family


def histogram(name: str, documentation: str,
              histograms: LabelledHistogram | Histogram) -> HistogramMetricFamily:
    if isinstance(histograms, Histogram):
        family = HistogramMetricFamily(name, documentation)
        family.add_metric([], histograms.cumulative(), histograms.sum)
        return family
    family = HistogramMetricFamily(name, documentation, labels=histograms.labels)
    for key, one in sorted(histograms.values.items()):
        family.add_metric(list(key), one.cumulative(), one.sum)
    return family


def registry_with(collector) -> CollectorRegistry:
    """A registry of this process's own (never the global default one), holding
    ``collector`` (an object whose ``collect()`` yields metric families)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
