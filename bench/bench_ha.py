"""Benchmark several daemons on one PostgreSQL journal: 3 ``rotator run`` against 1.

    python bench/bench_ha.py [CLIENTS]      # default 200; the issue's target is 1,000

N clients of a real Ory Hydra (one env file each) fall due at once; the benchmark starts
one daemon, waits until every client's rotation is completed in the journal, then does the
same with three daemons on fresh clients and a fresh journal schema, on a real PostgreSQL 15
(``tests/server_postgres.py``). Each daemon has ``[daemon] workers = 4``. It prints the time
until all are rotated and the PostgreSQL statements per rotation (counted in each daemon
process, ``tests/ha_runner.py``: every ``execute``, not the ``BEGIN``/``COMMIT`` of a
multi-statement transaction; see ``docs/ha.md`` for measured figures), each beside its
target: 3 daemons faster than 1, never slower than 1.1x. Hydra, not Keycloak: see
``tests/test_ha_processes.py``. On a shared two-core machine the daemons, Hydra and
PostgreSQL compete for the same cores, so the gain of three daemons is bounded by the CPU,
not by rotator. Not a test: it never fails.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from server_postgres import Postgres  # noqa: E402
from servers import Hydra  # noqa: E402
from test_ha_processes import Fleet, wait_for  # noqa: E402


def run(hydra: Hydra, pg: Postgres, clients: int, daemons: int) -> tuple[float, float]:
    """Seconds until all ``clients`` are rotated by ``daemons`` daemons; statements per
    rotation."""
    with tempfile.TemporaryDirectory(prefix="bench-ha-") as tmp:
        root = Path(tmp)
        url = pg.create_schema(f"bench_{secrets.token_hex(4)}")
        fleet = Fleet.create(hydra, root, url, clients)
        names = list(fleet.clients)
        counts = [root / f"count-{i}" for i in range(daemons)]
        started = time.monotonic()
        try:
            for i in range(daemons):
                fleet.start(f"d{i}", lease="10s", workers=4, count=counts[i])
            wait_for(lambda: fleet.settled(names), timeout=3600, what="all rotated")
            elapsed = time.monotonic() - started
        finally:
            fleet.stop_all()
        statements = sum(int(c.read_text()) for c in counts if c.exists())
        return elapsed, statements / clients


def main() -> None:
    clients = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with Postgres() as pg, Hydra() as hydra:
        one, one_rt = run(hydra, pg, clients, 1)
        three, three_rt = run(hydra, pg, clients, 3)
    print(f"{clients} clients due at once, Hydra + env files, PostgreSQL journal")
    print(f"1 daemon : {one:7.1f} s until all rotated, {one_rt:5.1f} statements/rotation")
    print(f"3 daemons: {three:7.1f} s until all rotated, {three_rt:5.1f} statements/rotation")
    ratio = three / one
    verdict = "faster" if ratio < 1 else ("within 1.1x" if ratio <= 1.1 else "SLOWER")
    print(f"3 daemons / 1 daemon = {ratio:.2f} (target: < 1, never above 1.1): {verdict}")


if __name__ == "__main__":
    main()
