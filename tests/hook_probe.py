"""A command hook for the tests: appends its whole environment to a file as one JSON line.

    python hook_probe.py OUT [READY]

With READY it fails (exit 3) while the file READY does not exist.
"""

from __future__ import annotations

import json
import os
import sys

with open(sys.argv[1], "a", encoding="utf-8") as out:
    out.write(json.dumps(dict(os.environ)) + "\n")
if len(sys.argv) > 2 and not os.path.exists(sys.argv[2]):
    print("the service is not ready yet")
    sys.exit(3)
