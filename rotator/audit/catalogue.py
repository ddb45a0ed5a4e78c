"""Every audit event rotator writes: its name, meaning, classification and fields.

The engine, the CLI, the AWS Lambda and the daemon's admin API emit only events listed here
(a test scans their source and runs a full rotation to hold them to it); the event table in
``docs/audit.md`` is generated from :data:`CATALOGUE`. Each event carries its ECS
``event.category``/``event.type``, its OCSF class and activity, a severity, and the fields it
may carry besides the context every event may carry (:data:`CONTEXT_FIELDS`).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Bound by :func:`rotator.audit.bound` around rotations, API calls and Lambda steps.
CONTEXT_FIELDS = frozenset({"client", "idp", "actor", "rotation_id"})

#: OCSF classes used: secret lifecycle as Entity Management, admin API calls as API Activity.
ENTITY_MANAGEMENT, API_ACTIVITY = 3004, 6003
#: OCSF Entity Management activities (activity_id).
CREATE, READ, UPDATE, DELETE, ACTIVATE, OTHER = 1, 2, 3, 4, 10, 99

SEVERITIES = ("info", "warning", "error")


@dataclass(frozen=True)
class EventSpec:
    name: str
    meaning: str
    #: ECS event.category and event.type (each one allowed value, written as a list)
    category: str
    type: str
    ocsf_class: int
    ocsf_activity: int
    #: info, warning or error; a failure outcome raises info to warning
    severity: str
    fields: frozenset[str]

    def severity_for(self, outcome: object) -> str:
        if outcome == "failure" and self.severity == "info":
            return "warning"
        return self.severity


_STEP = frozenset({"step", "outcome", "duration_ms", "error"})


def _spec(name: str, meaning: str, category: str, type_: str, ocsf: tuple[int, int],
          fields: str = "", severity: str = "info") -> EventSpec:
    return EventSpec(name, meaning, category, type_, ocsf[0], ocsf[1], severity,
                     _STEP | frozenset(fields.split()))


_EVENTS = [
    _spec("rotation_started", "a rotation began and was recorded in the journal", "iam",
          "change", (ENTITY_MANAGEMENT, UPDATE), "family old_fingerprint stores"),
    _spec("rotation_resumed", "an interrupted rotation is being driven on", "iam", "change",
          (ENTITY_MANAGEMENT, UPDATE), "family"),
    _spec("rotation_interrupted", "a rotation stopped at a step; the next run resumes it",
          "iam", "change", (ENTITY_MANAGEMENT, UPDATE), severity="warning"),
    _spec("rotation_completed", "the new secret is current and the old one retired", "iam",
          "change", (ENTITY_MANAGEMENT, UPDATE)),
    _spec("rotation_promoted", "the new secret is current; the old one awaits its grace period",
          "iam", "change", (ENTITY_MANAGEMENT, UPDATE)),
    _spec("rotation_rolled_back", "the new secret was discarded; the old one stays current",
          "iam", "change", (ENTITY_MANAGEMENT, UPDATE), severity="warning"),
    _spec("rotation_failed", "a rotation ended without a new secret; the stored one works",
          "iam", "change", (ENTITY_MANAGEMENT, UPDATE), severity="error"),
    _spec("secret_created", "the IdP issued a new secret", "iam", "creation",
          (ENTITY_MANAGEMENT, CREATE), "new_fingerprint secret_ref"),
    _spec("secret_recovered", "a secret the IdP issued before a crash was found again", "iam",
          "creation", (ENTITY_MANAGEMENT, CREATE), "new_fingerprint"),
    _spec("secret_refused", "a value the IdP issued was refused before it was stored", "iam",
          "creation", (ENTITY_MANAGEMENT, CREATE), "new_fingerprint", severity="warning"),
    _spec("secret_staged", "the new secret was written to a store as pending", "iam", "change",
          (ENTITY_MANAGEMENT, UPDATE), "store new_fingerprint"),
    _spec("secret_verified", "the new secret obtained a token", "iam", "info",
          (ENTITY_MANAGEMENT, OTHER), "scopes scopes_assumed new_fingerprint"),
    _spec("secret_verification_failed", "the new secret did not obtain a token", "iam", "info",
          (ENTITY_MANAGEMENT, OTHER), "new_fingerprint", severity="warning"),
    _spec("secret_promoted", "the new secret became current in a store", "iam", "change",
          (ENTITY_MANAGEMENT, ACTIVATE), "store new_fingerprint"),
    _spec("old_secret_retired", "the IdP no longer accepts the old secret", "iam", "deletion",
          (ENTITY_MANAGEMENT, DELETE), "count new_fingerprint"),
    _spec("new_secret_discarded", "the IdP no longer accepts the discarded new secret", "iam",
          "deletion", (ENTITY_MANAGEMENT, DELETE), "count new_fingerprint secret_ref"),
    _spec("credential_verified", "a stored credential was tried against the token endpoint",
          "iam", "info", (ENTITY_MANAGEMENT, READ), "store stage"),
    _spec("rotation_step", "the AWS Lambda ran one Secrets Manager rotation step", "iam",
          "change", (ENTITY_MANAGEMENT, UPDATE), "secret_id"),
    _spec("hook_succeeded", "a hook ran after a rotation's new secret became current or its "
          "old one was retired", "iam", "info", (ENTITY_MANAGEMENT, OTHER),
          "hook kind stage attempts"),
    _spec("hook_failed", "a hook's round of attempts failed; it is retried later and alerted",
          "iam", "info", (ENTITY_MANAGEMENT, OTHER),
          "hook kind stage attempts required next_attempt_at", severity="warning"),
    _spec("alert_sent", "an alert (firing or resolved) was sent to the alert webhook", "iam",
          "info", (ENTITY_MANAGEMENT, OTHER), "condition alert_status alert_key"),
    _spec("retired_while_in_use", "an old secret was retired at the end of its grace period "
          "while consumers still reported it (retire = when_unused)", "iam", "info",
          (ENTITY_MANAGEMENT, OTHER), "consumers", severity="warning"),
    _spec("api_request", "a call to the admin API, allowed or refused", "web", "access",
          (API_ACTIVITY, OTHER), "caller auth role source_ip method route status reason"),
]

CATALOGUE: dict[str, EventSpec] = {spec.name: spec for spec in _EVENTS}


def spec_for(name: str) -> EventSpec | None:
    return CATALOGUE.get(name)


#: OCSF API Activity (6003) activity by HTTP method.
API_ACTIVITY_BY_METHOD = {"POST": CREATE, "GET": READ, "HEAD": READ, "PUT": UPDATE,
                          "PATCH": UPDATE, "DELETE": DELETE}


def markdown_table() -> str:
    """The event table of ``docs/audit.md``: ``python -m rotator.audit.catalogue``."""
    rows = ["| event | meaning | ECS category / type | OCSF class / activity | severity "
            "| fields |", "|---|---|---|---|---|---|"]
    for spec in _EVENTS:
        fields = ", ".join(f"`{f}`" for f in sorted(spec.fields))
        rows.append(f"| `{spec.name}` | {spec.meaning} | {spec.category} / {spec.type} | "
                    f"{spec.ocsf_class} / {spec.ocsf_activity} | {spec.severity} | {fields} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
