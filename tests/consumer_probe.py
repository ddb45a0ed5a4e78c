"""A consumer process for the retire-when-unused test: a rotator.client TokenClient driven by
lines on stdin, one JSON answer per line on stdout.

``refresh``  forget the cached token and get a new one (one token refresh: re-reads CURRENT
             from the store, then reports to the daemon)
``call``     get a token (from the cache when it is fresh)
``quit``     stop

Reporting is configured by the ROTATOR_REPORT_* environment (rotator.client_report).
Usage: consumer_probe.py CONFIG CLIENT STORE
"""

from __future__ import annotations

import json
import sys

from rotator.client import TokenClient
from rotator.errors import RotatorError


def main() -> None:
    config, client_name, store = sys.argv[1:4]
    client = TokenClient.from_config(config, client_name, store=store)
    reporter = client._reporter
    token = None
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        ok, error = True, None
        try:
            if command == "refresh" and token is not None:
                client.invalidate(token)
            token = client.token()
        except RotatorError as exc:
            ok, error = False, type(exc).__name__
        print(json.dumps({"ok": ok, "error": error,
                          "sent": reporter.sent if reporter else None,
                          "failed": reporter.failed if reporter else None}), flush=True)
    client.close()


if __name__ == "__main__":
    main()
