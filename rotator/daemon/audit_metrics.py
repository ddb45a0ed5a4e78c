"""Prometheus metrics of the remote audit sinks' spools, read at scrape time::

    rotator_audit_spool_bytes{sink}                 gauge: bytes not yet delivered
    rotator_audit_spool_limit_bytes{sink}           gauge: the spool's bound
    rotator_audit_spool_dropped_total{sink}         counter: records not queued (spool full)
    rotator_audit_delivered_total{sink}             counter: records the collector took
    rotator_audit_delivery_failures_total{sink}     counter: batches sent again later

Alert on ``rotator_audit_spool_bytes / rotator_audit_spool_limit_bytes > 0.8`` (the spool
logs ``audit_spool_nearing_bound`` at that point too) and on any dropped record.

And of the audit chain's checkpoints in the journal (:mod:`rotator.audit.checkpoints`)::

    rotator_audit_checkpoints_total{log}            counter: checkpoints recorded
    rotator_audit_checkpoint_failures_total{log}    counter: checkpoints the journal refused
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rotator.audit.checkpoints import OPEN_RECORDERS
from rotator.audit.spool import OPEN_SPOOLS


class AuditSinkGauges(Collector):
    """Reads every open spool's state when Prometheus scrapes."""

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        pending, limit, dropped, delivered, failures = families = self._families()
        for spool in list(OPEN_SPOOLS):
            name = [spool.name]  # a configured name: letters, digits, '.', '_', '-'
            pending.add_metric(name, spool.spool_bytes())
            limit.add_metric(name, spool.policy.max_bytes)
            dropped.add_metric(name, spool.dropped)
            delivered.add_metric(name, spool.delivered)
            failures.add_metric(name, spool.failures)
        return families

    @staticmethod
    def _families() -> list[GaugeMetricFamily | CounterMetricFamily]:
        return [
            GaugeMetricFamily("rotator_audit_spool_bytes",
                              "Bytes of audit records spooled for a remote sink, not yet "
                              "delivered", labels=["sink"]),
            GaugeMetricFamily("rotator_audit_spool_limit_bytes",
                              "The bound of a remote sink's spool", labels=["sink"]),
            CounterMetricFamily("rotator_audit_spool_dropped",
                                "Audit records not spooled for a remote sink: its spool was "
                                "full (they are in the local audit log)", labels=["sink"]),
            CounterMetricFamily("rotator_audit_delivered",
                                "Audit records a remote sink's collector took",
                                labels=["sink"]),
            CounterMetricFamily("rotator_audit_delivery_failures",
                                "Batches a remote sink's collector did not take (sent again)",
                                labels=["sink"]),
        ]


class AuditCheckpointCounters(Collector):
    """Reads every checkpoint recorder's counts when Prometheus scrapes."""

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        written, failures = families = self._families()
        for recorder in list(OPEN_RECORDERS):
            written.add_metric([recorder.log], recorder.written)
            failures.add_metric([recorder.log], recorder.failures)
        return families

    @staticmethod
    def _families() -> list[CounterMetricFamily]:
        return [
            CounterMetricFamily("rotator_audit_checkpoints",
                                "Audit chain checkpoints recorded in the journal",
                                labels=["log"]),
            CounterMetricFamily("rotator_audit_checkpoint_failures",
                                "Audit chain checkpoints the journal could not record (the "
                                "local log keeps every record)", labels=["log"]),
        ]
