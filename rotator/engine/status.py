"""The status read-model: what rotator knows about a client, and whether it is due.

Reads the stores, the journal and whether the IdP's token endpoint answers; changes
nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import structlog

from rotator.config import ClientConfig
from rotator.engine.adapters import Adapters
from rotator.engine.verification import HttpFactory
from rotator.errors import RotatorError, StoreError
from rotator.interfaces import Journal, State
from rotator.secrets import redact

log = structlog.get_logger("rotator.engine")

#: ``status`` states that need a person: a store or the IdP cannot be reached, nothing is
#: stored, or the last rotation did not leave a verified new secret.
STATUS_ERRORS = frozenset({"store_error", "idp_error", "no_credential",
                           "last_rotation_failed", "last_rotation_rolled_back"})


def client_status(client: ClientConfig, *, now: datetime, adapters: Adapters,
                  journal: Journal, http_factory: HttpFactory) -> dict[str, Any]:
    """What rotator knows about ``client``: stores, IdP, last rotation, age, state.

    Reads the stores and asks the IdP's token endpoint whether it answers; needs no
    audit key and no IdP admin secret. ``error`` is true for the states in
    :data:`STATUS_ERRORS`.
    """
    name = client.name
    stores: dict[str, Any] = {}
    current_since: datetime | None = None
    primary_since: datetime | None = None
    for target in client.targets:
        key = f"{target.store}:{target.location}"
        try:
            facts = adapters.store(target.store).facts(target.location)
            stores[key] = {"has_current": facts.has_current,
                           "current_rotation_id": facts.current_rotation_id,
                           "pending_rotation_id": facts.pending_rotation_id,
                           "has_previous": facts.has_previous}
            if target is client.primary:
                primary_since = facts.current_since
            if facts.current_since and (current_since is None
                                        or facts.current_since > current_since):
                current_since = facts.current_since
        except StoreError as exc:
            log.debug("store_unreachable", store=target.store, exc_info=True)
            stores[key] = {"error": str(exc)}
    idp_status = idp_reachability(client, adapters, http_factory)
    latest = journal.latest(name)
    success = journal.last_success(name)
    last_rotated = success.updated_at if success else current_since
    age = (now - last_rotated).total_seconds() if last_rotated else None
    open_rotation = journal.open_rotation(name)
    if any("error" in s for s in stores.values()):
        state = "store_error"
    elif not idp_status["reachable"]:
        state = "idp_error"
    elif open_rotation is not None:
        state = ("awaiting_retirement" if open_rotation.awaiting_retirement
                 else f"interrupted:{open_rotation.state}")
    elif latest is not None and latest.state in (State.FAILED, State.ROLLED_BACK):
        state = f"last_rotation_{latest.state}"
    elif not any(s.get("has_current") for s in stores.values()):
        state = "no_credential"
    elif _due(client, journal, primary_since, now):
        state = "due"
    else:
        state = "ok"
    return {
        "client": name, "client_id": client.client_id, "idp": client.idp,
        "idp_status": idp_status, "stores": stores, "state": state,
        # An open rotation whose last attempt to go on failed needs a person as well.
        "error": state in STATUS_ERRORS or bool(open_rotation is not None
                                                and not open_rotation.awaiting_retirement
                                                and open_rotation.error),
        "last_rotation": None if latest is None else {
            "id": latest.id, "state": latest.state.value, "actor": latest.actor,
            "started_at": latest.started_at.isoformat(timespec="seconds"),
            "updated_at": latest.updated_at.isoformat(timespec="seconds"),
            "retire_after": latest.retire_after.isoformat(timespec="seconds")
            if latest.retire_after else None,
            "error": latest.error,
            "steps": [{"state": state.value, "at": at.isoformat(timespec="seconds")}
                      for at, state, _detail in journal.steps(latest.id)],
        },
        "last_rotated_at": last_rotated.isoformat(timespec="seconds") if last_rotated
        else None,
        "age_seconds": None if age is None else int(age),
        "rotate_every_seconds": client.rotate_every,
    }


def _due(client: ClientConfig, journal: Journal, primary_since: datetime | None,
         now: datetime) -> bool:
    """Whether ``client`` is due by the one rule the daemon, ``rotate --due`` and the API
    share (:func:`rotator.daemon.schedule.decide`): ``rotate_every``, ``schedule`` and
    ``rotate_before_expiry`` all count."""
    # Imported here: the daemon's modules import the engine.
    from rotator.daemon.records import history_from_journal, policy_of
    from rotator.daemon.schedule import decide

    history = history_from_journal(journal, client.name, primary_since)
    return decide(client.name, policy_of(client), history, now).due


def idp_reachability(client: ClientConfig, adapters: Adapters,
                     http_factory: HttpFactory) -> dict[str, Any]:
    """Whether ``client``'s token endpoint answers; uses no credential, changes nothing.

    Any HTTP answer below 500 (a token endpoint answers a bare GET with 400 or 405)
    means the IdP is reachable.
    """
    endpoint: str | None = None
    try:
        endpoint = (client.token_endpoint
                    or adapters.idp(client.idp).default_token_endpoint())
        if not endpoint:
            return {"reachable": False, "error": "no token endpoint is configured or known"}
        with http_factory(client) as http:
            answer = http.get(endpoint)
    except (httpx.HTTPError, RotatorError) as exc:
        log.debug("idp_unreachable", idp=client.idp, exc_info=True)
        return {"reachable": False,
                "error": redact(f"token endpoint {endpoint or '?'} unreachable: "
                                f"{exc or type(exc).__name__}")}
    if answer.status_code >= 500:
        log.debug("idp_unreachable", idp=client.idp, status=answer.status_code)
        return {"reachable": False,
                "error": f"token endpoint {endpoint} answered HTTP {answer.status_code}"}
    return {"reachable": True}
