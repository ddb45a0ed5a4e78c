#!/usr/bin/env bash
# Set up and run every check: ruff, mypy (strict on rotator/ and providers/), and the tests
# against real local OpenBao, Keycloak and moto servers. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
