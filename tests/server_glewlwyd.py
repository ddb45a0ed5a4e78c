"""A real Glewlwyd (Debian's package) for integration tests, on 127.0.0.1 and a free port.

The ``glewlwyd`` package and the library packages it needs that this machine lacks are
fetched with ``apt-get download`` and unpacked with ``dpkg -x`` (no system install) into
``<cache>/glewlwyd-<version>/`` (``$ROTATOR_TEST_CACHE`` or ``~/.cache/rotator-test/``),
once per version and under a file lock. The binary runs from there with
``LD_LIBRARY_PATH`` pointing at the unpacked libraries::

    with Glewlwyd() as glw:
        client_id = glw.create_client(secret)
        assert glw.token_status(client_id, secret) == 200

Each server gets a SQLite database made at start from the package's schema
(``init.sqlite3.sql``), with an OpenID Connect plugin instance named ``oidc`` (so the token
endpoint is ``/api/oidc/token``, client_credentials enabled, HS256 tokens signed with a key
generated per server) and a scope ``rotator`` that test clients ask for. The default schema's
admin login (``admin``/``password``) is used once, on loopback, to create an admin API key
(``admin_api_key``, sent as ``Authorization: token <key>``); the admin's password is then
replaced by a random one (``admin_password``).

``python tests/server_glewlwyd.py download`` fetches and unpacks the packages
(``scripts/setup.sh --tests`` calls it); the fixture does the same on demand.

Errors: ``ServerError`` (from ``servers``) when a package cannot be fetched or unpacked, a
library is still missing, the server exits or does not answer in time, or an admin call fails.
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import httpx
from servers import _LOCAL, ServerError, _cache_dir, _file_lock, _LocalServer

__all__ = [
    "GLEWLWYD_LIBRARIES",
    "GLEWLWYD_SCOPE",
    "GLEWLWYD_VERSION",
    "Glewlwyd",
    "glewlwyd_dist",
]

#: The upstream version of Debian bookworm's package (2.7.5-3+deb12u1 when this was written).
GLEWLWYD_VERSION = "2.7.5"
#: Library packages ``glewlwyd`` depends on, directly or not, that a bookworm machine without
#: Glewlwyd may lack; those already installed are not fetched.
GLEWLWYD_LIBRARIES: tuple[str, ...] = (
    "libconfig9", "libhoel1.4", "libiddawc1.1", "libmariadb3", "libmicrohttpd12", "liboath0",
    "liborcania2.3", "librhonabwy1.1", "libulfius2.7", "libyder2.0",
)
#: The scope every test client holds and asks for in its client_credentials requests.
GLEWLWYD_SCOPE = "rotator"

_LIBDIR = Path("usr/lib/x86_64-linux-gnu")
_BINARY = Path("usr/bin/glewlwyd")
_SCHEMA = Path("usr/share/doc/glewlwyd/database/init.sqlite3.sql.gz")
_APT_ATTEMPTS = 5


def _installed(package: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                          capture_output=True, text=True, check=False)
    return "install ok installed" in done.stdout


def _apt_download(packages: Sequence[str], into: Path) -> None:
    """``apt-get download`` into ``into``, retrying while another apt holds its lock."""
    apt = shutil.which("apt-get")
    if apt is None:
        raise ServerError("Glewlwyd is not cached and apt-get is not available to fetch it")
    for attempt in range(_APT_ATTEMPTS):
        done = subprocess.run([apt, "download", "-q", *packages], cwd=into,
                              capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return
        if "lock" not in done.stderr.lower() or attempt == _APT_ATTEMPTS - 1:
            raise ServerError(f"apt-get download {' '.join(packages)} failed "
                              f"(exit {done.returncode}):\n{done.stderr[-2000:]}")
        time.sleep(2.0 * (attempt + 1))


def _missing_libraries(root: Path) -> list[str]:
    env = {**os.environ, "LD_LIBRARY_PATH": str(root / _LIBDIR)}
    done = subprocess.run(["ldd", str(root / _BINARY)], env=env, capture_output=True,
                          text=True, check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if "not found" in line]


def _fetch_and_unpack(version: str, target: Path) -> None:
    """Download into a temporary sibling, unpack there, check, then rename into place."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        debs = staging / "debs"
        debs.mkdir()
        wanted = ["glewlwyd", *(p for p in GLEWLWYD_LIBRARIES if not _installed(p))]
        _apt_download(wanted, debs)
        root = staging / "root"
        for deb in sorted(debs.glob("*.deb")):
            done = subprocess.run(["dpkg-deb", "-x", str(deb), str(root)],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise ServerError(f"dpkg -x {deb.name} failed:\n{done.stderr[-1000:]}")
        fetched = next(debs.glob("glewlwyd_*.deb")).name
        if not fetched.startswith(f"glewlwyd_{version}-"):
            raise ServerError(f"apt offers {fetched}, not Glewlwyd {version}")
        if not (root / _BINARY).is_file() or not (root / _SCHEMA).is_file():
            raise ServerError(f"{fetched} does not contain {_BINARY} and {_SCHEMA}")
        missing = _missing_libraries(root)
        if missing:
            raise ServerError(f"Glewlwyd {version} still lacks libraries: {', '.join(missing)}")
        root.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def glewlwyd_dist(version: str = GLEWLWYD_VERSION, cache_dir: Path | None = None) -> Path:
    """Return the folder Glewlwyd's packages are unpacked in, fetching them on first use.

    Raises ServerError if they cannot be fetched or a library is still missing.
    """
    cache = cache_dir or _cache_dir()
    target = cache / f"glewlwyd-{version}"
    if (target / _BINARY).is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache / f"glewlwyd-{version}.lock"):
        if not (target / _BINARY).is_file():
            _fetch_and_unpack(version, target)
    return target


def _oidc_parameters(issuer: str, key: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "iss": issuer,
        "jwt-type": "sha",
        "jwt-key-size": "256",
        "key": key,
        "access-token-duration": 3600,
        "refresh-token-duration": 1209600,
        "code-duration": 600,
        "refresh-token-rolling": True,
        "allow-non-oidc": True,  # client_credentials is OAuth 2.0, not OpenID Connect
        "auth-type-client-enabled": True,
        "auth-type-code-enabled": True,
        "scope": [],
        **extra,
    }


class Glewlwyd(_LocalServer):
    """Glewlwyd on SQLite with an OIDC plugin at ``/api/oidc``; admin API at ``/api``.

    ``oidc_parameters`` are merged into the plugin instance's parameters (say, to enable
    RFC 7591/7592 registration: ``register-client-allowed``,
    ``register-client-management-allowed``).
    """

    name = "glewlwyd"

    def __init__(self, *, version: str = GLEWLWYD_VERSION, cache_dir: Path | None = None,
                 port: int | None = None, startup_timeout: float = 60.0,
                 oidc_parameters: Mapping[str, Any] | None = None) -> None:
        super().__init__(port=port, startup_timeout=startup_timeout)
        self.version = version
        self._cache_dir = cache_dir
        self._signing_key = secrets.token_urlsafe(32)
        self._oidc_extra = dict(oidc_parameters or {})
        self.admin_password = secrets.token_urlsafe(24)
        self.admin_api_key = ""

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def issuer(self) -> str:
        return f"{self.api_url}/oidc"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    def _secret_values(self) -> Sequence[str]:
        return tuple(v for v in (self._signing_key, self.admin_password, self.admin_api_key) if v)

    def _write_database(self, root: Path) -> Path:
        database = self._workdir / "glewlwyd.sqlite"
        schema = gzip.decompress((root / _SCHEMA).read_bytes()).decode("utf-8")
        parameters = _oidc_parameters(self.issuer, self._signing_key, self._oidc_extra)
        with sqlite3.connect(database) as db:
            db.executescript(schema)
            db.execute("INSERT INTO g_plugin_module_instance (gpmi_module, gpmi_name, "
                       "gpmi_display_name, gpmi_parameters) VALUES ('oidc', 'oidc', "
                       "'OpenID Connect', ?)", (json.dumps(parameters),))
            db.execute("INSERT INTO g_scope (gs_name, gs_display_name, gs_description, "
                       "gs_password_required, gs_password_max_age) VALUES (?, ?, ?, 0, 0)",
                       (GLEWLWYD_SCOPE, GLEWLWYD_SCOPE, "rotator test clients"))
        db.close()
        return database

    def _write_config(self, root: Path, database: Path) -> Path:
        empty = self._workdir / "none"
        empty.mkdir(exist_ok=True)
        modules = root / "usr/lib/glewlwyd"
        config = self._workdir / "glewlwyd.conf"
        config.write_text(f"""\
port = {self.port}
bind_address = "{_LOCAL}"
external_url = "{self.url}"
api_prefix = "api"
login_url = "login.html"
static_files_path = "{empty}/"
log_mode = "console"
log_level = "INFO"
cookie_domain = "{_LOCAL}"
cookie_secure = 0
session_expiration = 3600
admin_session_authentication = "cookie,api_key"
profile_session_authentication = "cookie"
login_api_enabled = true
admin_scope = "g_admin"
profile_scope = "g_profile"
user_module_path = "{modules}/user"
user_middleware_module_path = "{empty}"
client_module_path = "{modules}/client"
user_auth_scheme_module_path = "{modules}/scheme"
plugin_module_path = "{modules}/plugin"
hash_algorithm = "SHA512"
database = {{ type = "sqlite3"; path = "{database}"; }};
""", encoding="utf-8")
        return config

    def start(self) -> Self:
        """Fetch if needed, write a database and config, start, wait, make an admin API key.

        Raises ServerError if Glewlwyd cannot be fetched, exits, is not ready in time, or the
        admin set-up fails.
        """
        root = glewlwyd_dist(self.version, self._cache_dir)
        config = self._write_config(root, self._write_database(root))
        env = {**os.environ, "LD_LIBRARY_PATH": str(root / _LIBDIR)}
        self._spawn([str(root / _BINARY), f"--config-file={config}"], env=env, cwd=self._workdir)
        self._wait_until_ok("/api/oidc/.well-known/openid-configuration")
        try:
            self._replace_admin_login()
        except BaseException:
            self.stop(keep_logs=True)
            raise
        return self

    def _replace_admin_login(self) -> None:
        """Log in as the schema's admin, create an API key, then change the admin's password."""
        with httpx.Client(base_url=self.api_url, timeout=30.0, trust_env=False) as session:
            _checked(session.post("/auth", json={"username": "admin", "password": "password"}),
                     "admin login")
            created = _checked(session.post("/key/"), "create API key")
            self.admin_api_key = str(created.json()["key"])
        with self.admin() as admin:
            user = _checked(admin.get("/user/admin"), "read admin user").json()
            body = {k: v for k, v in user.items() if k not in ("source", "last_login")}
            _checked(admin.put("/user/admin", json={**body, "password": self.admin_password}),
                     "replace admin password")

    def admin(self) -> httpx.Client:
        """An httpx client for ``{url}/api`` authenticated with the admin API key."""
        return httpx.Client(base_url=self.api_url, timeout=30.0, trust_env=False,
                            headers={"Authorization": f"token {self.admin_api_key}"})

    def create_client(self, secret: str, *, client_id: str | None = None,
                      scopes: Sequence[str] = (GLEWLWYD_SCOPE,)) -> str:
        """Create a confidential client_credentials client with ``secret``; return its id."""
        client_id = client_id or f"client-{secrets.token_hex(6)}"
        body = {"client_id": client_id, "name": client_id, "enabled": True,
                "confidential": True, "client_secret": secret, "scope": list(scopes),
                "authorization_type": ["client_credentials"],
                "token_endpoint_auth_method": ["client_secret_basic", "client_secret_post"]}
        with self.admin() as admin:
            _checked(admin.post("/client/", json=body), "create client")
        return client_id

    def token_status(self, client_id: str, secret: str, scope: str = GLEWLWYD_SCOPE) -> int:
        """The HTTP status of a client_credentials token request with ``secret`` (basic auth)."""
        with httpx.Client(timeout=30.0, trust_env=False) as http:
            return http.post(self.token_endpoint, auth=(client_id, secret),
                             data={"grant_type": "client_credentials", "scope": scope}).status_code


def _checked(response: httpx.Response, action: str) -> httpx.Response:
    if response.is_success:
        return response
    raise ServerError(f"Glewlwyd {action}: {response.request.method} "
                      f"{response.request.url.path} answered {response.status_code}")


if __name__ == "__main__":  # pragma: no cover - called by scripts/setup.sh --tests
    if sys.argv[1:] != ["download"]:
        sys.exit("usage: python tests/server_glewlwyd.py download")
    print(glewlwyd_dist())
