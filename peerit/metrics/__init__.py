"""Prometheus metrics for the tracker and the daemon.

``counts`` holds plain counters and histograms that the programs' logic increments (no
Prometheus import, a dict update each); ``exposition`` turns them, and state read at scrape
time, into metric families; ``endpoint`` serves ``/metrics`` over HTTP as a child service.
"""
