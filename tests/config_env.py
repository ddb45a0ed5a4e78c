"""The smallest configuration rotator loads without a server, for tests that add tables to it.

An env store, a Keycloak that is never called and one client. Its secrets come from the
environment: ``AUDIT_KEY`` (the audit key) and ``KC`` (Keycloak's admin client secret).
"""

from __future__ import annotations

MINIMAL_CONFIG = """
[audit]
file = "audit.jsonl"
key_env = "AUDIT_KEY"

[stores.local]
type = "env"
file = "creds.env"
read_environ = false

[idps.kc]
type = "keycloak"
url = "https://sso.test"
realm = "r"
admin_client_id = "rotator"
admin_client_secret_env = "KC"

[clients.app]
idp = "kc"
client_id = "app-client"
stores = [{store = "local", prefix = "APP"}]
"""
