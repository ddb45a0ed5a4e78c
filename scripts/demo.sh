#!/usr/bin/env bash
# Set up and run rotator's main job against real local servers (OpenBao, Keycloak):
# a verified rotation of a Keycloak client's secret into OpenBao and an env file.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
