"""The README's first command: a real rotation against local OpenBao and Keycloak.

Starts OpenBao (dev mode) and Keycloak 26 on 127.0.0.1 and free ports, creates a realm with
rotator's admin client (a service account with realm-management roles) and a
``secret-rotation`` client policy, creates the client ``payments-worker``, stores its present
secret in OpenBao and an env file, writes ``demo/rotator.toml``, and then runs the real
``rotator`` command line: config check, status, rotate, verify, retire. The audit trail is
printed at the end. Every secret is generated at run time and none is printed.

    python scripts/demo.py [--dir demo] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import hvac

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


def _rotator(*args: str, config: Path) -> int:
    argv = [str(Path(sys.executable).parent / "rotator"), *args, "-c", str(config)]
    print("$ rotator " + " ".join([*args, "-c", str(config.relative_to(ROOT))]), flush=True)
    return subprocess.run(argv, check=False).returncode


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

        _step(f"audit trail ({(work / 'audit.jsonl').relative_to(ROOT)}), one event per line")
        for line in (work / "audit.jsonl").read_text().splitlines():
            event = json.loads(line)
            fields = {k: event[k] for k in ("step", "store", "outcome", "duration_ms",
                                            "new_fingerprint") if k in event}
            print(f"{event['@timestamp']} {event['event']:<28} {json.dumps(fields)}")
        stored = vault.secrets.kv.v2.read_secret_version(
            path=f"apps/{CLIENT}", mount_point="secret", raise_on_deleted_version=True)
        leaked = secret in (work / "audit.jsonl").read_text() or stored["data"]["data"][
            "client_secret"] in (work / "audit.jsonl").read_text()
        print(f"\nsecret values in the audit log: {'YES (bug!)' if leaked else 'none'}")
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
