"""Hooks after promote and retire, and alerts: consumers and operators hear about rotations.

- :mod:`rotator.hooks.config`: the ``hooks`` and ``[alerts]`` tables, checked;
- :mod:`rotator.hooks.kinds`: one attempt of a ``command``, ``http`` or ``systemd`` hook;
- :mod:`rotator.hooks.runner`: each hook once per rotation and stage (the journal records
  the runs), retries with backoff, and the retirement gate of ``required`` hooks;
- :mod:`rotator.hooks.alerts`: conditions, their webhook, their durable state.

``docs/hooks.md`` is the user's guide.
"""

from __future__ import annotations

# Only the configuration types here: rotator.config imports this package, and the runner
# imports the audit log, which imports rotator itself.
from rotator.hooks.config import AlertConfig, HookConfig

__all__ = ["AlertConfig", "HookConfig"]
