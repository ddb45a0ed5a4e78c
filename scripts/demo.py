"""The README's first command: a real rotation against local OpenBao and Keycloak.

Starts OpenBao (dev mode) and Keycloak 26 on 127.0.0.1 and free ports, creates a realm with
rotator's admin client (a service account with realm-management roles) and a
``secret-rotation`` client policy, creates the client ``payments-worker``, stores its present
secret in OpenBao and an env file, writes ``demo/rotator.toml``, and then runs the real
``rotator`` command line: config check, status, rotate, verify, retire. Then it starts the
daemon, ``rotator run``, with an admin API token, asks it over HTTP for the client's
condition, triggers a rotation, follows it to promotion, retires the old secret, shows the
client's ``/metrics`` lines, and stops it with SIGTERM. The audit trail is printed at the
end. Every secret is generated at run time and none is printed: the demo fails if any secret
value it has seen reached a command's output, the daemon's log, an API response or the
audit log.

    python scripts/demo.py [--dir demo] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import hvac

from rotator.audit import flatten

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from servers import ROTATION_ATTRIBUTES, Keycloak, OpenBao  # noqa: E402

REALM = "payments"
CLIENT = "payments-worker"


def _private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


#: Everything the demo printed or received: scanned for secret values at the end.
OUTPUTS: list[str] = []


def _rotator(*args: str, config: Path) -> int:
    argv = [str(Path(sys.executable).parent / "rotator"), *args, "-c", str(config)]
    print("$ rotator " + " ".join([*args, "-c", _shown(config)]), flush=True)
    result = subprocess.run(argv, check=False, capture_output=True, text=True)
    OUTPUTS.extend([result.stdout, result.stderr])
    print(result.stdout + result.stderr, end="", flush=True)
    return result.returncode


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _call(api: httpx.Client, method: str, path: str, **kwargs: object) -> httpx.Response:
    """One API call, shown as the curl command that does the same."""
    extra = "".join(f" -H '{k}: {v}'" for k, v in dict(kwargs.get("headers") or {}).items())
    print(f"$ curl -s -X {method}{extra} -H \"Authorization: Bearer $TOKEN\" "
          f"{api.base_url}{path.lstrip('/')}", flush=True)
    response = api.request(method, path, **kwargs)  # type: ignore[arg-type]
    OUTPUTS.append(response.text)
    OUTPUTS.extend(f"{k}: {v}" for k, v in response.headers.items())
    return response


def _wait(predicate: object, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.3)
    return False


def _daemon(config: Path, work: Path, kc: Keycloak, token: str) -> tuple[list[int], str]:
    """``rotator run``: the API's view of the client, a rotation over HTTP, metrics, SIGTERM.

    Returns the exit codes it saw (0 is success, HTTP answers as 0 or 1) and the log.
    """
    codes: list[int] = []
    log_path = work / "daemon.log"
    argv = [str(Path(sys.executable).parent / "rotator"), "run", "-c", str(config)]
    print(f"$ rotator run -c {_shown(config)} &    # log: {_shown(log_path)}", flush=True)
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=log_file)
    try:
        listening = _wait(lambda: "api_listening" in log_path.read_text()
                          or proc.poll() is not None, 60)
        found = re.search(r"api_listening.*?port=(\d+)", log_path.read_text())
        if not listening or not found:
            print("the daemon did not start:\n" + log_path.read_text()[-2000:])
            return [1], log_path.read_text()
        base = f"http://127.0.0.1:{found.group(1)}/"
        print(f"the daemon serves its admin API on {base} (token: demo/api.token)")
        with httpx.Client(base_url=base, timeout=30,
                          headers={"Authorization": f"Bearer {token}"}) as api:
            _step("the daemon's view of the client")
            state = _call(api, "GET", f"/v1/clients/{CLIENT}").json()
            print(json.dumps({k: state[k] for k in ("condition", "age_seconds", "next_run",
                                                    "last_rotation")}, indent=2))

            _step("trigger a rotation over the API; follow it to promotion")
            answer = _call(api, "POST", f"/v1/clients/{CLIENT}/rotations",
                           headers={"Idempotency-Key": "demo-1"})
            print(f"HTTP {answer.status_code}, Location: {answer.headers.get('location')}")
            codes.append(0 if answer.status_code == 202 else 1)
            location = answer.headers.get("location", "/v1/rotations/-")
            rotation: dict[str, object] = {}

            def finished() -> bool:
                nonlocal rotation
                rotation = api.get(location).json()
                OUTPUTS.append(json.dumps(rotation))
                return rotation.get("state") in ("promoted", "completed", "failed",
                                                 "rolled_back")

            _wait(finished)
            _call(api, "GET", location)
            steps = rotation.get("steps") or []
            print(f"state {rotation.get('state')} by {rotation.get('actor')}; steps: "
                  + ", ".join(str(step["state"]) for step in steps))  # type: ignore[index,union-attr]
            codes.append(0 if rotation.get("state") == "promoted" else 1)
            state = _call(api, "GET", f"/v1/clients/{CLIENT}").json()
            print(f"condition: {state['condition']}, old secret valid until "
                  f"{state['retire_after']}")

            _step("retire the old secret now (admin role)")
            answer = _call(api, "POST", f"/v1/clients/{CLIENT}/retirements?now=true")
            print(f"HTTP {answer.status_code}")
            _wait(lambda: api.get(f"/v1/clients/{CLIENT}").json()["condition"] == "ready")
            state = _call(api, "GET", f"/v1/clients/{CLIENT}").json()
            print(f"condition: {state['condition']}, last rotation "
                  f"{state['last_rotation']['state']}, next run {state['next_run']}")
            codes.append(0 if state["last_rotation"]["state"] == "completed" else 1)

            _step(f"/metrics lines for {CLIENT}")
            metrics = _call(api, "GET", "/metrics").text
            for line in metrics.splitlines():
                if f'client="{CLIENT}"' in line and (
                        "rotations_total" in line or " 1.0" in line or "age" in line):
                    print(line)
            codes.append(0 if f'rotator_rotations_total{{client="{CLIENT}",outcome="rotated"}}'
                         in metrics else 1)
    finally:
        _step("SIGTERM: the daemon stops its API, lets rotations reach a journal step, exits")
        proc.send_signal(signal.SIGTERM)
        codes.append(proc.wait(timeout=90))
        print(f"rotator run exited with {proc.returncode}")
    log = log_path.read_text()
    for line in log.splitlines():
        if any(event in line for event in ("daemon_started", "api_listening", "job_finished",
                                           "api_stopped", "daemon_stopped")):
            print(line)
    kc_secret = kc.admin.get(f"{REALM}/clients/{kc.client_uuid(REALM, CLIENT)}"
                             "/client-secret").json()["value"]
    OUTPUTS.append(log)
    return codes, kc_secret


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(ROOT / "demo"), help="where the demo writes")
    parser.add_argument("--keep", action="store_true",
                        help="keep the servers running until Ctrl-C")
    args = parser.parse_args()
    work = Path(args.dir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    work.chmod(0o700)

    _step("starting OpenBao and Keycloak on 127.0.0.1 (Keycloak takes ~30 s)")
    started = time.monotonic()
    with OpenBao() as bao, Keycloak() as kc:
        print(f"OpenBao {bao.url}, Keycloak {kc.url} ({time.monotonic() - started:.0f} s)")

        _step(f"Keycloak: realm {REALM!r}, admin client 'rotator', client {CLIENT!r}")
        kc.create_realm(REALM)
        admin_secret = kc.create_admin_client(REALM, "rotator")
        kc.enable_secret_rotation(REALM, rotated_expiration=3600, client_ids=[])
        _, secret = kc.create_client(REALM, CLIENT, scopes=["payments.read"],
                                     attributes=ROTATION_ATTRIBUTES)
        print("the client's secret-rotation policy keeps an old secret valid for 1 h")

        _step("storing the present secret in OpenBao and in an env file")
        vault = hvac.Client(url=bao.url, token=bao.root_token)
        vault.secrets.kv.v2.create_or_update_secret(
            path=f"apps/{CLIENT}", secret={"client_id": CLIENT, "client_secret": secret},
            mount_point="secret")
        _private(work / "payments.env",
                 f"PAYMENTS_WORKER_CLIENT_ID={CLIENT}\nPAYMENTS_WORKER_CLIENT_SECRET={secret}\n")
        _private(work / "audit.key", secrets.token_urlsafe(32))
        _private(work / "bao.token", bao.root_token)
        _private(work / "keycloak-admin.secret", admin_secret)
        api_token = secrets.token_urlsafe(32)
        _private(work / "api.token", api_token)
        config = work / "rotator.toml"
        config.write_text(f"""\
# Written by scripts/demo.py: secrets live in the *_file files beside it, mode 0600.
[rotator]
state_dir = "state"

[audit]
file = "audit.jsonl"
key_file = "audit.key"

[stores.openbao]
type = "vault"
url = "{bao.url}"
token_file = "bao.token"

[stores.payments-env]
type = "env"
file = "payments.env"
read_environ = false

[idps.keycloak]
type = "keycloak"
url = "{kc.url}"
realm = "{REALM}"
admin_client_id = "rotator"
admin_client_secret_file = "keycloak-admin.secret"

[clients.{CLIENT}]
idp = "keycloak"
client_id = "{CLIENT}"
scopes = ["payments.read"]
grace_period = "1h"
rotate_every = "30d"
stores = [
    {{ store = "openbao", path = "apps/{CLIENT}" }},
    {{ store = "payments-env", prefix = "PAYMENTS_WORKER" }},
]

# The daemon's admin API (docs/api.md): loopback, a free port, one admin token.
[api]
listen = "127.0.0.1:0"

[[api.tokens]]
name = "demo"
role = "admin"
token_file = "api.token"
""")
        codes = []
        _step("rotator config check")
        codes.append(_rotator("config", "check", config=config))
        _step("rotator status (before)")
        codes.append(_rotator("status", "--all", config=config))
        _step("rotator rotate --dry-run")
        codes.append(_rotator("rotate", CLIENT, "--dry-run", config=config))
        _step("rotator rotate: create at Keycloak, stage, verify, promote")
        codes.append(_rotator("rotate", CLIENT, config=config))
        _step("rotator verify: does the stored current secret obtain a token?")
        codes.append(_rotator("verify", CLIENT, config=config))
        old_works = kc.token(REALM, CLIENT, secret).status_code == 200
        print(f"the old secret still obtains a token during the grace period: {old_works}")
        _step("rotator retire --now: end the grace period, revoke the old secret")
        codes.append(_rotator("retire", CLIENT, "--now", config=config))
        old_works = kc.token(REALM, CLIENT, secret).status_code == 200
        print(f"the old secret still obtains a token after retirement: {old_works}")
        _step("rotator status (after)")
        codes.append(_rotator("status", "--all", config=config))

        _step("rotator run: the daemon, its admin API and metrics")
        daemon_codes, kc_secret = _daemon(config, work, kc, api_token)
        codes += daemon_codes

        _step(f"audit trail ({(work / 'audit.jsonl').relative_to(ROOT)}), one event per line")
        reads = 0
        for line in (work / "audit.jsonl").read_text().splitlines():
            event = flatten(json.loads(line))  # the ECS record's flat view
            if event["event"] == "api_request" and event.get("method") == "GET":
                reads += 1  # the demo polls: one event per call, summed up below
                continue
            fields = {k: event[k] for k in ("step", "store", "outcome", "actor", "method",
                                            "route", "status", "new_fingerprint")
                      if event.get(k) is not None}
            print(f"{event['@timestamp']} {event['event']:<28} {json.dumps(fields)}")
        print(f"... and {reads} api_request events for GET calls (caller, route, status)")
        seen = {secret, admin_secret, bao.root_token, api_token, kc_secret,
                (work / "audit.key").read_text()}
        versions = vault.secrets.kv.v2.read_secret_metadata(
            path=f"apps/{CLIENT}", mount_point="secret")["data"]["versions"]
        for version in versions:
            stored = vault.secrets.kv.v2.read_secret_version(
                path=f"apps/{CLIENT}", version=int(version), mount_point="secret",
                raise_on_deleted_version=True)
            seen.add(stored["data"]["data"]["client_secret"])
        texts = [*OUTPUTS, (work / "audit.jsonl").read_text()]
        leaked = any(value in text for value in seen if len(value) >= 8 for text in texts)
        print(f"\n{len(seen)} secret values (client secrets, tokens, keys) looked for in every "
              f"command's output, API response, daemon log line and audit event: "
              f"{'FOUND (bug!)' if leaked else 'none found'}")
        vault.adapter.close()
        if args.keep:
            print(f"\nservers keep running (OpenBao {bao.url}, Keycloak {kc.url}); Ctrl-C stops")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    ok = all(code == 0 for code in codes) and not old_works and not leaked
    print("\ndemo " + ("succeeded" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
