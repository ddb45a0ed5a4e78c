"""Wires :class:`rotator.consumers.ConsumerGate` into an engine: the stored current secret,
the audit event and the alert when the upper bound retires a secret still in use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rotator.consumers import ConsumerGate, ConsumerRegistry, ConsumerReport
from rotator.hooks.alerts import Condition
from rotator.interfaces import Rotation, Stage
from rotator.secrets import Secret

if TYPE_CHECKING:
    from rotator.engine.rotation import Engine


def consumer_gate(engine: Engine) -> ConsumerGate:
    """The ``retire = "when_unused"`` gate of ``engine`` (a no-op for other clients)."""
    registry = ConsumerRegistry(engine.config.state_dir)

    def current(client: Any) -> Secret | None:
        stored = engine._read(client, Stage.CURRENT)
        return stored.credentials.client_secret if stored is not None else None

    def retired_in_use(client: Any, rotation: Rotation,
                       old: Sequence[ConsumerReport]) -> None:
        if registry.note(client.name, "alerted", rotation.id) == rotation.id:
            return  # told once per rotation, even if the retirement is tried again
        consumers = [r.instance for r in old]
        engine.audit.event("retired_while_in_use", step="retire", outcome="failure",
                           rotation_id=rotation.id, client=client.name, consumers=consumers)
        if engine.alerter is not None:
            engine.alerter.fire(Condition(
                f"retired_while_in_use:{client.name}", "retired_while_in_use", client.name,
                f"the old secret of {client.name} was retired at the end of its grace period "
                f"while {len(consumers)} consumer(s) still used it: {', '.join(consumers)}",
                {"rotation_id": rotation.id, "consumers": consumers,
                 "fingerprints": sorted({r.fingerprint for r in old})}))

    return ConsumerGate(registry, engine.journal, current, clock=engine.clock,
                        retired_in_use=retired_in_use)
