"""Benchmark ``rotator run`` with many configured clients, against the issue's targets.

    python bench/bench_daemon.py [--clients 10000] [--idle 60] [--requests 2000] [--rounds 3]

Writes a configuration of ``--clients`` clients whose credentials live in one env file (an
unscheduled client per prefix, so nothing rotates and nothing talks to the IdP), starts the
real ``rotator run`` as a subprocess with an admin API token, and measures:

- start-up to ready: from ``exec`` until ``GET /readyz`` answers 200 (journal empty, so the
  daemon reads each client's store facts once at start);
- RSS of the daemon once ready (``/proc/<pid>/status`` ``VmRSS``);
- idle CPU: the daemon's user + system CPU time (``/proc/<pid>/stat``) over ``--idle``
  seconds with nobody calling, as a share of one core, from when every client's store facts
  are read (the first ``GET /v1/clients`` answers: the daemon reads them after ready);
- ``GET /v1/clients/{name}`` latency: p50 with one caller, then p50 and p99 with 100
  concurrent callers (asyncio on raw sockets, each caller on its own keep-alive connection
  opened before timing), ``--requests`` calls over random clients in each of ``--rounds``
  rounds (the median round's figures, and every round's p99);
- ``GET /v1/clients`` paged: every client, 1000 per page, following ``next``; the p99 page.

Each figure is printed beside its target. Not a test: it prints, and never fails. The
caller shares the machine with the daemon: it is kept lean so that the latency measures
the daemon, not the caller, and ``uptime``'s load is printed so a busy machine shows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def write_config(root: Path, clients: int, token: str, audit: str = "file") -> Path:
    root.chmod(0o700)
    for name, value in (("audit.key", secrets.token_urlsafe(32)), ("api.token", token),
                        ("admin.secret", secrets.token_urlsafe(24))):
        (root / name).write_text(value)
        (root / name).chmod(0o600)
    env_lines = []
    client_tables = []
    for i in range(clients):
        name = f"c{i:05d}"
        env_lines += [f"C{i:05d}_CLIENT_ID={name}",
                      f"C{i:05d}_CLIENT_SECRET={secrets.token_urlsafe(24)}"]
        client_tables.append(f'[clients.{name}]\nidp = "kc"\nclient_id = "{name}"\n'
                             f'stores = [{{store = "env", prefix = "C{i:05d}"}}]\n')
    (root / "creds.env").write_text("\n".join(env_lines) + "\n")
    (root / "creds.env").chmod(0o600)
    config = root / "rotator.toml"
    config.write_text("""
[rotator]
state_dir = "state"

[audit]
AUDIT_SINK
key_file = "audit.key"

[stores.env]
type = "env"
file = "creds.env"
read_environ = false

[idps.kc]
type = "keycloak"
url = "http://127.0.0.1:9"
realm = "bench"
admin_client_id = "rotator"
admin_client_secret_file = "admin.secret"

[api]
listen = "127.0.0.1:0"

[[api.tokens]]
name = "bench"
role = "read"
token_file = "api.token"

""".replace("AUDIT_SINK", 'file = "audit.jsonl"' if audit == "file" else "stdout = true")
                      + "\n".join(client_tables))
    return config


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """``pid``'s user and system CPU time, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS  # utime, stime


def settle(pid: int) -> float:
    """``pid``'s CPU time once it stops using any (the read calls' audit events written)."""
    last = cpu_seconds(pid)
    while True:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now - last < 0.02:
            return now
        last = now


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def one_client_latency(base: str, token: str, names: list[str], requests: int,
                       callers: int) -> list[float]:
    """``requests`` calls from ``callers`` concurrent callers, each on its own keep-alive
    connection opened before timing; the time of each call from its first byte sent to its
    last byte read.

    One asyncio loop on raw sockets: each call is one ``write`` and a read of a
    ``Content-Length`` answer, so the caller spends far less CPU per call than the daemon
    (100 threads of ``http.client``, or an httpx pool, spend about as much as the daemon
    does, on the same cores, and measure themselves).
    """
    try:  # the daemon's loop too, when installed: less CPU per call for the callers
        import uvloop
        loop_factory: Any = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_calls(base, token, names, requests, callers))


async def _calls(base: str, token: str, names: list[str], requests: int,
                 callers: int) -> list[float]:
    host, port = base.removeprefix("http://").split(":")
    per_caller = max(1, requests // callers)
    timings: list[float] = []
    start = asyncio.Event()
    opened = 0
    all_open = asyncio.Event()

    async def call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   path: str, auth: bool = True) -> int:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n".encode()
                     + (f"Authorization: Bearer {token}\r\n".encode() if auth else b"")
                     + b"\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        await reader.readexactly(int(length.group(1)) if length else 0)
        return status

    async def caller() -> None:
        nonlocal opened
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            await call(reader, writer, "/healthz", auth=False)  # not timed
            opened += 1
            if opened == callers:
                all_open.set()
            await start.wait()
            for _ in range(per_caller):
                name = random.choice(names)  # noqa: S311 - which client, not a secret
                started = time.perf_counter()
                status = await call(reader, writer, f"/v1/clients/{name}")
                timings.append(time.perf_counter() - started)
                if status != 200:
                    raise RuntimeError(f"GET /v1/clients/{name}: HTTP {status}")
        finally:
            writer.close()

    tasks = [asyncio.create_task(caller()) for _ in range(callers)]
    waiting = asyncio.create_task(all_open.wait())
    await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
    start.set()
    await asyncio.gather(*tasks)
    waiting.cancel()
    return timings


def paged(base: str, token: str) -> tuple[int, list[float]]:
    seen = 0
    timings = []
    with httpx.Client(base_url=base, timeout=60,
                      headers={"Authorization": f"Bearer {token}"}) as api:
        url: str | None = "/v1/clients?limit=1000"
        while url:
            started = time.perf_counter()
            page = api.get(url).json()
            timings.append(time.perf_counter() - started)
            seen += len(page["items"])
            url = page["next"]
    return seen, timings


def row(what: str, value: str, target: str, met: bool | None) -> None:
    verdict = "" if met is None else ("met" if met else "NOT met")
    print(f"{what:<44} {value:>14}   target {target:<12} {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--idle", type=float, default=60.0,
                        help="seconds to measure idle CPU over (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=2000,
                        help="GET /v1/clients/{name} calls (default: %(default)s)")
    parser.add_argument("--callers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of --requests calls; each figure is their median")
    parser.add_argument("--audit", choices=("file", "stdout"), default="file",
                        help="where audit events go: a file synced per line (the default), "
                             "or the daemon's stdout")
    args = parser.parse_args()
    token = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="rotator-bench-") as tmp:
        root = Path(tmp)
        config = write_config(root, args.clients, token, args.audit)
        log_path = root / "daemon.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        code = "import sys; from rotator.cli import main; sys.argv[0] = 'rotator'; main()"
        with log_path.open("w") as log:
            started = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-c", code, "run", "-c", str(config)],
                                    stdout=log, stderr=log, env=env, cwd=root)
        try:
            base = None
            while proc.poll() is None:
                if base is None:
                    found = re.search(r"api_listening.*?port=(\d+)", log_path.read_text())
                    if found:
                        base = f"http://127.0.0.1:{found.group(1)}"
                if base is not None:
                    try:
                        ready = httpx.get(f"{base}/readyz", timeout=5,
                                          headers={"Authorization": f"Bearer {token}"})
                        if ready.status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                time.sleep(0.02)
            startup = time.perf_counter() - started
            if proc.poll() is not None or base is None:
                print("the daemon did not start:\n" + log_path.read_text()[-3000:])
                return 1
            print(f"rotator run with {args.clients} clients (env-file store), audit to "
                  f"{args.audit}, "
                  f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load "
                  f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
            row("start-up to ready", f"{startup:.2f} s", "< 3 s", startup < 3)
            row("  of which the daemon's CPU time", f"{cpu_seconds(proc.pid):.2f} s", "", None)
            rss = rss_mb(proc.pid)
            row("RSS once ready", f"{rss:.0f} MB", "< 150 MB", rss < 150)
            # The daemon is ready before it has read every client's store facts (read in
            # the background, docs/api.md); the client list waits for them. Idle is measured
            # from there, so that it measures a daemon with nothing left to do.
            httpx.get(f"{base}/v1/clients?limit=1", timeout=120,
                      headers={"Authorization": f"Bearer {token}"}).raise_for_status()
            loaded = time.perf_counter() - started
            row("  every client's store facts read", f"{loaded:.2f} s", "", None)
            before = cpu_seconds(proc.pid)
            time.sleep(args.idle)
            idle = (cpu_seconds(proc.pid) - before) / args.idle * 100
            row(f"idle CPU over {args.idle:g} s", f"{idle:.2f} %", "< 1 %", idle < 1)
            names = [f"c{i:05d}" for i in range(args.clients)]
            rounds: list[tuple[float, float, float, float, float, float, float]] = []
            try:
                for _ in range(args.rounds):
                    cpu_before, wall_before = cpu_seconds(proc.pid), time.perf_counter()
                    system_before = cpu_split(proc.pid)[1]
                    own_before = os.times()
                    timings = one_client_latency(base, token, names, args.requests,
                                                 args.callers)
                    wall = time.perf_counter() - wall_before
                    per_call = (cpu_seconds(proc.pid) - cpu_before) / len(timings) * 1000
                    system_per_call = (cpu_split(proc.pid)[1] - system_before
                                       ) / len(timings) * 1000
                    own = os.times()
                    own_per_call = (own.user + own.system - own_before.user
                                    - own_before.system) / len(timings) * 1000
                    settled = (settle(proc.pid) - cpu_before) / len(timings) * 1000
                    rounds.append((statistics.median(timings) * 1000,
                                   percentile(timings, 0.99) * 1000, len(timings) / wall,
                                   per_call, system_per_call, settled, own_per_call))
                alone = one_client_latency(base, token, names, min(args.requests, 300), 1)
            except (OSError, asyncio.IncompleteReadError, RuntimeError) as exc:
                print(f"GET /v1/clients/{{name}} failed: {exc!r}; daemon alive: "
                      f"{proc.poll() is None}\n" + log_path.read_text()[-3000:])
                return 1
            # Each figure is the median over the rounds (the rounds' p99s printed too): one
            # round's p99 is its slowest 1 %, which a neighbour's burst on a shared machine
            # can make.
            p50, p99, rate, per_call, system_per_call, settled, own_per_call = (
                statistics.median(r[i] for r in rounds) for i in range(7))
            row(f"GET /v1/clients/{{name}} p50, {args.callers} callers", f"{p50:.1f} ms",
                "", None)
            row(f"GET /v1/clients/{{name}} p99, {args.callers} callers", f"{p99:.1f} ms",
                "< 50 ms", p99 < 50)
            row(f"  p99 of each round of {args.requests} calls",
                " / ".join(f"{r[1]:.1f}" for r in rounds), "", None)
            row(f"  calls answered per second, {args.callers} callers", f"{rate:.0f}", "",
                None)
            row("  the daemon's CPU time per call", f"{per_call:.2f} ms", "", None)
            row("    of which in the kernel (system time)", f"{system_per_call:.2f} ms", "",
                None)
            row("    and until every audit event is written", f"{settled:.2f} ms", "", None)
            row("  the callers' CPU time per call", f"{own_per_call:.2f} ms", "", None)
            row("GET /v1/clients/{name} p50, one caller",
                f"{statistics.median(alone) * 1000:.1f} ms", "", None)
            seen, pages = paged(base, token)
            row(f"GET /v1/clients, {len(pages)} pages of 1000: clients", str(seen),
                str(args.clients), seen == args.clients)
            row("GET /v1/clients page of 1000, p99", f"{percentile(pages, 0.99) * 1000:.0f} ms",
                "", None)
            rss = rss_mb(proc.pid)
            row("RSS after the calls", f"{rss:.0f} MB", "< 150 MB", rss < 150)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
