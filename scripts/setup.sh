#!/usr/bin/env bash
# Set up a development environment: system tools the test servers need, and .venv with
# rotator and every extra. Safe to run again; downloads are cached (~/.cache/pip, and
# ~/.cache/rotator-test/m2 for Keycloak: see tests/servers.py).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
command -v unzip >/dev/null 2>&1 || need_apt+=(unzip)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]} (for the local Keycloak)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'

# Ory Hydra for the IdP tests (scripts/test.sh passes --tests; the demo does not need it):
# built once from the Go module proxy and cached (see tests/servers.py, hydra_binary), so
# the build (minutes on a fresh machine) is not counted inside a test's timeout.
# PostgreSQL 15 for the journal tests (tests/server_postgres.py runs initdb and pg_ctl from
# the Debian package as an unprivileged user). apt may be busy with another run: retry.
if [ "${1:-}" = "--tests" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "setup: installing postgresql (for the journal tests)"
    for attempt in 1 2 3 4 5 6; do
        if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                -o DPkg::Lock::Timeout=120 postgresql; then
            break
        fi
        [ "$attempt" = 6 ] && { echo "setup: cannot install postgresql" >&2; exit 1; }
        sleep 10
    done
fi

if [ "${1:-}" != "--tests" ]; then
    :
elif command -v go >/dev/null 2>&1; then
    .venv/bin/python tests/servers.py hydra-build >/dev/null
else
    echo "setup: go is not installed; the Hydra tests build Hydra on first use and need go"
fi

# Glewlwyd for the IdP tests: Debian's packages fetched with apt-get download and unpacked
# into ~/.cache/rotator-test/glewlwyd-<version>/ (no system install; tests/server_glewlwyd.py).
if [ "${1:-}" = "--tests" ]; then
    .venv/bin/python tests/server_glewlwyd.py download >/dev/null
fi

# rsyslog for the syslog sink's tests: apt-get download + dpkg -x into
# ~/.cache/rotator-test/rsyslog-<version>/ (tests/server_rsyslog.py), nothing installed.
if [ "${1:-}" = "--tests" ]; then
    .venv/bin/python tests/server_rsyslog.py fetch >/dev/null
fi

# node oidc-provider for the RFC 7592 tests: npm package cached by version (tests/server_oidc_provider.py).
if [ "${1:-}" = "--tests" ]; then
    if command -v npm >/dev/null 2>&1; then
        .venv/bin/python tests/server_oidc_provider.py install >/dev/null
    else
        echo "setup: npm is not installed; the RFC 7592 tests on oidc-provider need it"
    fi
fi
