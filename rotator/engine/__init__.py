"""The rotation state machine.

A rotation follows AWS Secrets Manager's four steps, recorded in the journal after each
one so that a run killed anywhere is finished by the next run:

Overlap-capable identity providers (two secrets valid at once)::

    STARTED ─▶ [STAGED] ─▶ [CREATING] ─▶ CREATED ─▶ VERIFIED ─▶ PROMOTED ─▶ COMPLETED
                                            │ verification fails       (after the grace period:
                                            ▼                           old secret retired)
                                      ROLLING_BACK ─▶ ROLLED_BACK  (new secret deleted at the
                                                                    IdP; old one still current)

Single-secret identity providers (the old secret dies when the new one exists)::

    STARTED ─▶ [STAGED] ─▶ [CREATING] ─▶ CREATED ─▶ PROMOTED ─▶ COMPLETED (once verified)
                                                        │ verification fails
                                                        ▼
                                                      FAILED  (the new secret stays current:
                                                               it is the only one the IdP has)

``STAGED`` is used when rotator chooses the value: it is written to every store as PENDING
before the IdP hears of it, so no issued secret can be lost. ``CREATING`` is used when the
IdP generates the value: a run killed inside it asks the IdP for its current secret (where
the IdP can tell) instead of creating another. With a single-secret IdP the new value is
promoted before verification, because the old one no longer works; verification then
retries to tolerate propagation delay.

Every step is idempotent; the engine decides between the two families from
:class:`~rotator.interfaces.IdpCapabilities`, never from an adapter's name.

The package, one responsibility a module: :mod:`~rotator.engine.rotation` (the commands
and the driver), :mod:`~rotator.engine.steps` (the steps that act at the IdP and the stores),
:mod:`~rotator.engine.store_steps` (staging, promoting and reading back in every store),
:mod:`~rotator.engine.audited` (each IdP action audited, each state journaled),
:mod:`~rotator.engine.outcome` (what a command did), :mod:`~rotator.engine.verification`
(does a credential obtain a token), :mod:`~rotator.engine.status` (the status read-model) and
:mod:`~rotator.engine.adapters` (adapters started once, shared httpx clients).
"""

from __future__ import annotations

from rotator.engine.adapters import Adapters
from rotator.engine.rotation import Clock, Engine, Outcome, utcnow
from rotator.engine.status import STATUS_ERRORS
from rotator.engine.verification import HttpFactory, default_http, verify_credentials

__all__ = [
    "STATUS_ERRORS",
    "Adapters",
    "Clock",
    "Engine",
    "HttpFactory",
    "Outcome",
    "default_http",
    "utcnow",
    "verify_credentials",
]
