"""Prometheus metrics of the producer, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ProducerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("bisect_http_requests_total", "HTTP requests",
                                ["method", "route", "status"], registry=self.registry)
        self.request_seconds = Histogram(
            "bisect_http_request_seconds", "HTTP request latency", ["route"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry)
        self.tasks = Gauge("bisect_tasks", "Tasks by status (read at scrape time)", ["status"],
                           registry=self.registry)
        self.tasks_created = Counter("bisect_tasks_created_total", "Tasks created", ["source"],
                                     registry=self.registry)
        self.claims = Counter("bisect_claims_total", "Tasks handed to consumers",
                              registry=self.registry)
        self.lease_expired = Counter("bisect_lease_expired_total",
                                     "Leases that expired (requeued or failed)",
                                     registry=self.registry)
        self.discovery_cycles = Counter("bisect_discovery_cycles_total",
                                        "Discovery cycles by result", ["result"],
                                        registry=self.registry)
        self.discovery_jobs = Counter("bisect_discovery_failed_jobs_total",
                                      "Failed jobs read by discovery", registry=self.registry)
        self.discovery_skipped = Counter("bisect_discovery_skipped_jobs_total",
                                         "Failed jobs that can never become a task, by reason",
                                         ["reason"], registry=self.registry)
        self.discovery_seconds = Histogram("bisect_discovery_cycle_seconds",
                                           "Duration of a discovery cycle",
                                           registry=self.registry)
        self.discovery_lag = Gauge("bisect_discovery_lag_jobs",
                                   "Newest job id minus the discovery cursor",
                                   registry=self.registry)
        # The HTTP edge (issue 15): what the caps and deadlines turned away.
        self.slow_connections_closed = Counter(
            "bisect_http_slow_connections_closed_total",
            "Connections closed for sending no complete request head in time",
            registry=self.registry)
        self.long_polls = Gauge("bisect_long_polls_waiting",
                                "Claims waiting for work (read at scrape time)",
                                registry=self.registry)
        self.discovery_cursor = Gauge("bisect_discovery_cursor",
                                      "Highest job id below which every job is handled",
                                      registry=self.registry)
