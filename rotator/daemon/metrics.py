"""Prometheus metrics of the daemon, in a registry of their own.

:class:`Metrics` implements :class:`~rotator.daemon.model.Observer`: the service tells it
when a rotation finishes and when it calls an IdP, which feeds the counters and the
histogram. The per-client gauges are read from :meth:`RotationService.clients` at scrape
time, so they are never stale and need no bookkeeping::

    rotator_rotations_total{client,outcome}                 counter
    rotator_rotation_duration_seconds                       histogram
    rotator_idp_requests_total{idp,outcome}                 counter
    rotator_secret_age_seconds{client}                      gauge
    rotator_next_rotation_timestamp_seconds{client}         gauge
    rotator_last_success_timestamp_seconds{client}          gauge
    rotator_client_condition{client,condition}              gauge, 1 for the current one

Labels carry configured names (clients, IdPs) and fixed words (outcomes, conditions) only:
never a secret, a fingerprint or a token. A name that is not shaped like a configured name
(a fingerprint has a colon, a live secret is masked first) is exported as ``invalid``; an
outcome outside :data:`ROTATION_OUTCOMES` / :data:`IDP_OUTCOMES` as ``other``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from rotator.daemon.audit_metrics import AuditCheckpointCounters, AuditSinkGauges
from rotator.daemon.model import ClientState, Condition
from rotator.secrets import redact

log = structlog.get_logger("rotator.metrics")

#: The shape of a configured name (``rotator.config``): no colon, so no fingerprint fits.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ROTATION_OUTCOMES = frozenset({"rotated", "retired", "rolled_back", "failed", "interrupted",
                               "blocked", "discarded", "abandoned"})
IDP_OUTCOMES = frozenset({"success", "failure", "throttled"})
#: Rotations take seconds (an IdP call, a store write, verification with retries) to minutes.
DURATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


def _label(value: str) -> str:
    return value if _NAME.match(redact(value)) else "invalid"


def _outcome(value: str, known: frozenset[str]) -> str:
    return value if value in known else "other"


class _ClientSource(Protocol):
    def clients(self) -> Sequence[ClientState]: ...


class _ClientGauges(Collector):
    """Reads each client's gauges from the service when Prometheus scrapes."""

    def __init__(self) -> None:
        self.source: _ClientSource | None = None

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        if self.source is None:
            return families
        age, next_run, last_success, condition = families
        try:
            clients = self.source.clients()
        except Exception as exc:  # a scrape must answer even if the service cannot
            log.warning("metrics_clients_unavailable", error_type=type(exc).__name__)
            return families
        for c in clients:
            name = _label(c.name)
            if c.age_seconds is not None:
                age.add_metric([name], c.age_seconds)
            if c.next_run is not None:
                next_run.add_metric([name], c.next_run.timestamp())
            if c.last_success_at is not None:
                last_success.add_metric([name], c.last_success_at.timestamp())
            for each in Condition:
                condition.add_metric([name, each.value], 1.0 if each is c.condition else 0.0)
        return families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("rotator_secret_age_seconds",
                              "Seconds since the client's current secret became current",
                              labels=["client"]),
            GaugeMetricFamily("rotator_next_rotation_timestamp_seconds",
                              "When the client's next rotation is due (Unix time)",
                              labels=["client"]),
            GaugeMetricFamily("rotator_last_success_timestamp_seconds",
                              "When the client's last rotation succeeded (Unix time)",
                              labels=["client"]),
            GaugeMetricFamily("rotator_client_condition",
                              "1 for the client's current condition, 0 for the others",
                              labels=["client", "condition"]),
        ]


class Metrics:
    """The daemon's metrics; an :class:`~rotator.daemon.model.Observer` that never raises."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._rotations = Counter("rotator_rotations", "Rotations finished, by outcome",
                                  ["client", "outcome"], registry=self.registry)
        self._duration = Histogram("rotator_rotation_duration_seconds",
                                   "How long rotations took, start to finish",
                                   buckets=DURATION_BUCKETS, registry=self.registry)
        self._idp_requests = Counter("rotator_idp_requests",
                                     "Admin API calls to identity providers, by outcome",
                                     ["idp", "outcome"], registry=self.registry)
        self._gauges = _ClientGauges()
        self.registry.register(self._gauges)
        self.registry.register(AuditSinkGauges())
        self.registry.register(AuditCheckpointCounters())

    def bind(self, service: _ClientSource) -> None:
        """Read the per-client gauges from ``service`` at each scrape."""
        self._gauges.source = service

    def rotation_finished(self, client: str, outcome: str, seconds: float) -> None:
        try:
            self._rotations.labels(_label(client), _outcome(outcome, ROTATION_OUTCOMES)).inc()
            if seconds >= 0:
                self._duration.observe(seconds)
        except Exception:
            log.warning("metrics_update_failed", exc_info=True)

    def idp_request(self, idp: str, outcome: str) -> None:
        try:
            self._idp_requests.labels(_label(idp), _outcome(outcome, IDP_OUTCOMES)).inc()
        except Exception:
            log.warning("metrics_update_failed", exc_info=True)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
