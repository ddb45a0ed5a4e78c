"""Tests for rotator.daemon.metrics: the Observer counters, the scrape-time client gauges,
and that no label carries a secret, a fingerprint or a token."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_double import InMemoryRotationService, sample_clients

from rotator.daemon.metrics import Metrics
from rotator.daemon.model import Condition, Observer
from rotator.secrets import Secret

FINGERPRINT = "hmac-sha256:" + "cd34" * 8


def _scrape(metrics: Metrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


class TestObserver:
    """Rotation outcomes, durations and IdP calls land in counters and the histogram."""

    def test_is_an_observer(self) -> None:
        observer: Observer = Metrics()
        observer.rotation_finished("a", "rotated", 1.0)

    def test_counts(self) -> None:
        metrics = Metrics()
        for outcome, seconds in [("rotated", 3.0), ("rotated", 12.0), ("failed", 0.2)]:
            metrics.rotation_finished("app", outcome, seconds)
        for outcome in ("success", "success", "throttled"):
            metrics.idp_request("kc", outcome)
        scraped = _scrape(metrics)
        assert sorted((s[0]["outcome"], s[1]) for s in scraped["rotator_rotations_total"]) == [
            ("failed", 1.0), ("rotated", 2.0)]
        assert scraped["rotator_rotation_duration_seconds_count"] == [({}, 3.0)]
        assert scraped["rotator_rotation_duration_seconds_sum"] == [({}, 15.2)]
        buckets = dict((s[0]["le"], s[1])
                       for s in scraped["rotator_rotation_duration_seconds_bucket"])
        assert (buckets["0.5"], buckets["5.0"], buckets["+Inf"]) == (1.0, 2.0, 3.0)
        assert sorted((s[0]["outcome"], s[1]) for s in scraped["rotator_idp_requests_total"]) \
            == [("success", 2.0), ("throttled", 1.0)]

    @pytest.mark.parametrize("bad", ["has space", "x" * 200, "", "a\nb", 'q"uote'])
    def test_odd_label_values_are_replaced_not_exported(self, bad: str) -> None:
        metrics = Metrics()
        metrics.rotation_finished(bad, bad, 1.0)
        metrics.idp_request(bad, "success")
        scraped = _scrape(metrics)
        assert scraped["rotator_rotations_total"][0][0] == {"client": "invalid",
                                                            "outcome": "other"}


class TestClientGauges:
    """Per-client gauges are read from the service at scrape time, one condition set to 1."""

    def test_gauges_follow_the_service(self) -> None:
        now = datetime.now(UTC)
        service = InMemoryRotationService(sample_clients(6, fingerprint=FINGERPRINT, now=now))
        metrics = Metrics()
        metrics.bind(service)
        scraped = _scrape(metrics)
        ages = {s[0]["client"]: s[1] for s in scraped["rotator_secret_age_seconds"]}
        assert ages == {c.name: c.age_seconds for c in service.clients()}
        assert len(scraped["rotator_next_rotation_timestamp_seconds"]) == 6
        last = {s[0]["client"]: s[1] for s in scraped["rotator_last_success_timestamp_seconds"]}
        assert last["client-000"] == pytest.approx(now.timestamp())
        conditions = scraped["rotator_client_condition"]
        assert len(conditions) == 6 * len(Condition)
        current = {(s[0]["client"], s[0]["condition"]) for s in conditions if s[1] == 1.0}
        assert current == {(c.name, c.condition.value) for c in service.clients()}

        service.set_condition("client-000", Condition.BLOCKED)
        current = {(s[0]["client"], s[0]["condition"])
                   for s in _scrape(metrics)["rotator_client_condition"] if s[1] == 1.0}
        assert ("client-000", "blocked") in current

    def test_a_failing_service_still_answers_the_scrape(self) -> None:
        service = InMemoryRotationService(sample_clients(2, fingerprint=FINGERPRINT))
        service.crash = RuntimeError("journal gone")
        metrics = Metrics()
        metrics.bind(service)
        metrics.rotation_finished("client-000", "rotated", 1.0)
        scraped = _scrape(metrics)
        assert "rotator_secret_age_seconds" not in scraped
        assert scraped["rotator_rotations_total"]


class TestNoSecretInLabels:
    """No label value is a secret, a fingerprint or a token, whatever the service holds."""

    def test_label_scan(self) -> None:
        secret = Secret(secrets.token_urlsafe(32))
        token = secrets.token_urlsafe(24)
        service = InMemoryRotationService(
            sample_clients(8, fingerprint=FINGERPRINT, secret=secret))
        metrics = Metrics()
        metrics.bind(service)
        metrics.rotation_finished("client-001", secret.reveal(), 2.0)
        metrics.idp_request(FINGERPRINT, token)
        body, _ = metrics.render()
        text = body.decode()
        for needle in (secret.reveal(), FINGERPRINT, token):
            assert needle not in text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                for value in sample.labels.values():
                    assert value not in (secret.reveal(), FINGERPRINT, token)
