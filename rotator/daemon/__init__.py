"""``rotator run``: the long-running service (scheduler, admin API, metrics, process control)."""
