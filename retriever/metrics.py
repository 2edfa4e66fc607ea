"""Prometheus metrics of one server."""

from __future__ import annotations


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        lat_buckets = (
            0.002,
            0.005,
            0.01,
            0.015,
            0.02,
            0.025,
            0.035,
            0.05,
            0.075,
            0.1,
            0.25,
            0.5,
            1.0,
        )
        self.requests = Counter(
            "rasst_requests", "Chunks and clips answered", ["rpc", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "rasst_chunk_latency_seconds",
            "Server time per chunk or clip",
            ["rpc"],
            buckets=lat_buckets,
            registry=self.registry,
        )
        self.queue_latency = Histogram(
            "rasst_queue_latency_seconds",
            "Wait for the encoder worker",
            buckets=lat_buckets,
            registry=self.registry,
        )
        self.batch = Histogram(
            "rasst_batch_windows",
            "Windows per encoder batch",
            buckets=(1, 32, 64, 128, 256, 512, 1024, 2048, 4096),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "rasst_queue_depth", "Requests waiting for the encoder", registry=self.registry
        )
        self.sessions = Gauge(
            "rasst_active_sessions", "Open StreamRetrieve sessions", registry=self.registry
        )
        self.dropped = Counter(
            "rasst_dropped_chunks", "Chunks dropped past their deadline", registry=self.registry
        )
        self.glossary_entries = Gauge(
            "rasst_glossary_entries", "Entries per glossary", ["glossary"], registry=self.registry
        )
        self.glossary_version = Gauge(
            "rasst_glossary_version",
            "Live version per glossary",
            ["glossary"],
            registry=self.registry,
        )


def label_values(metric) -> set:
    """The first label of every child a labelled metric holds."""
    return {labels[0] for labels in getattr(metric, "_metrics", {})}
