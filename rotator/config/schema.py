"""The settings each table of the configuration accepts, and the limits on them."""

from __future__ import annotations

import re

from rotator.settings import Setting

AUTH_METHODS = ("client_secret_basic", "client_secret_post")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


#: Adapter settings holding a URL: ``url`` and every ``*_url``. Where a table has one, it also
#: accepts ``allow_insecure_http``.
_INSECURE_OK = "allow_insecure_http"
_ALLOW_INSECURE = Setting(_INSECURE_OK, "bool", default=False,
                          help="accept http:// to a host other than this machine")


_ROTATOR_SETTINGS = (
    Setting("state_dir", "path", default=None,
            help="directory for the rotation journal and locks"),
)
_AUDIT_SETTINGS = (
    Setting("file", "path", help="JSON-lines audit log"),
    Setting("stdout", "bool", default=False),
    Setting("format", default="json", choices=("json", "ocsf", "cef"),
            help="json (ECS), ocsf or cef"),
    Setting("key", secret=True, required=True, help="audit HMAC key"),
)
_AUDIT_SINK_SETTINGS = (
    Setting("type", required=True, choices=("file", "syslog", "http"),
            help="file, syslog or http"),
    Setting("path", "path", required=True, help="the sink's log file"),
    Setting("format", default=None, choices=("json", "ocsf", "cef"),
            help="defaults to [audit] format"),
)
#: Settings every remote sink (syslog, http) has: its name, format and spool.
_AUDIT_REMOTE_SETTINGS = (
    Setting("type", required=True, choices=("file", "syslog", "http")),
    Setting("name", required=True, help="names the sink's spool in state_dir/audit-spool"),
    Setting("format", default=None, choices=("json", "ocsf", "cef"),
            help="defaults to [audit] format"),
    Setting("ca_file", "path", help="trust this CA for the collector (PEM)"),
    Setting("cert_file", "path", help="client certificate (PEM)"),
    Setting("key_file", "path", help="client certificate's key (PEM)"),
    Setting("timeout", "duration", default=10.0),
    Setting("spool_max_bytes", "int", default=256 * 1024 * 1024),
    Setting("batch_size", "int", default=100),
    Setting("retry_max", "duration", default=60.0, help="longest wait between retries"),
)
_AUDIT_SYSLOG_SETTINGS = (
    *_AUDIT_REMOTE_SETTINGS,
    Setting("address", required=True, help="host:port of the syslog collector"),
    Setting("transport", default="tls", choices=("tls", "tcp", "udp")),
    Setting("allow_cleartext", "bool", default=False,
            help="accept tcp or udp to a host other than this machine"),
    Setting("server_name", help="the name the collector's certificate must carry"),
    Setting("facility", default="authpriv",
            choices=("kern", "user", "daemon", "auth", "syslog", "authpriv",
                     *(f"local{n}" for n in range(8)))),
    Setting("app_name", default="rotator"),
    Setting("hostname"),
    Setting("sd_id", default="rotator@32473", help="structured data id: name@enterprise"),
)
_AUDIT_HTTP_SETTINGS = (
    *_AUDIT_REMOTE_SETTINGS,
    Setting("url", required=True, help="HEC endpoint or webhook URL"),
    Setting("api", default="hec", choices=("hec", "webhook")),
    Setting("token", secret=True, help="HEC token (Splunk) or webhook bearer token"),
    _ALLOW_INSECURE,
    Setting("index"),
    Setting("source", default="rotator"),
    Setting("sourcetype"),
    Setting("host"),
)
#: When a client's old secret is retired: after its grace period, or once no consumer uses it.
RETIRE_MODES = ("after_grace", "when_unused")
_CLIENT_SETTINGS = (
    Setting("idp", required=True, help="name of an [idps.*] table"),
    Setting("client_id", required=True),
    Setting("token_endpoint", help="defaults to the IdP's token endpoint"),
    Setting("auth_method", default="client_secret_basic", choices=AUTH_METHODS),
    Setting("scopes", "list[str]", default=[]),
    Setting("audience"),
    Setting("resource"),
    Setting("grace_period", "duration", default=86400.0),
    Setting("rotate_every", "duration", default=None),
    Setting("verify_attempts", "int", default=5),
    Setting("verify_timeout", "duration", default=10.0),
    Setting("tls_verify", "bool", default=True),
    Setting("ca_file", "path"),
    _ALLOW_INSECURE,
    # Scheduling by the daemon (rotator run) and rotate --due; see rotator.daemon.schedule.
    Setting("schedule", help="cron expression, optionally followed by a time zone"),
    Setting("window", help="when rotations may start, e.g. 'Mon-Fri 09:00-17:00 Europe/Berlin'"),
    Setting("jitter", "duration", default=0.0),
    Setting("backoff", "duration", default=3600.0),
    Setting("backoff_max", "duration", default=32 * 3600.0),
    Setting("rotate_before_expiry", "duration", default=None,
            help="rotate this long before the current secret expires (IdPs whose secrets "
                 "expire, e.g. Entra ID)"),
    Setting("max_age", "duration", default=None,
            help="alert when the current secret is older than this ([alerts])"),
    # Retire when unused (rotator.consumers): grace_period is then the upper bound.
    Setting("retire", default="after_grace", choices=RETIRE_MODES,
            help="after_grace, or when_unused: once every consumer reports the new secret"),
    Setting("min_grace", "duration", default=0.0,
            help="with retire = when_unused: never retire sooner than this"),
    Setting("consumers_seen_within", "duration", default=3600.0,
            help="with retire = when_unused: consumers that reported within this long count"),
)
#: Client keys a [defaults] table may set for every client that does not set them itself.
_DEFAULTABLE = ("grace_period", "rotate_every", "schedule", "window", "jitter", "backoff",
                "backoff_max", "rotate_before_expiry", "max_age")
#: Keys an IdP's ``CLIENT_SETTINGS`` may not reuse.
_CORE_CLIENT_KEYS = frozenset({k for s in _CLIENT_SETTINGS for k in s.accepted_keys()}
                              | {"stores", "hooks"})
_DEFAULTS_SETTINGS = tuple(s for s in _CLIENT_SETTINGS if s.key in _DEFAULTABLE)
_DAEMON_SETTINGS = (
    Setting("workers", "int", default=4, help="rotations run at once, across all IdPs"),
    Setting("idp_concurrency", "int", default=2, help="rotations run at once per IdP"),
    Setting("catch_up", "duration", default=900.0,
            help="spread clients that fell due while the daemon was down over this long"),
    Setting("shutdown_timeout", "duration", default=30.0),
    Setting("lease", "duration", default=60.0,
            help="with a shared journal: how long a job's claim on its client outlives a "
                 "daemon that stopped renewing it"),
)

_JOURNAL_SETTINGS = (
    Setting("url", secret=True,
            help="PostgreSQL URL of a journal shared by several daemons (postgresql://...)"),
    Setting("allow_weak_tls", "bool", default=False,
            help="accept an sslmode that does not check the server's certificate"),
)

#: The admin API's roles, weakest first: each may do what the ones before it may.
API_ROLES = ("read", "rotate", "admin")
#: A role outside that order: it may only report which secret a consumer uses.
CONSUMER_ROLE = "consumer"
DEFAULT_API_LISTEN = "127.0.0.1:8900"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
#: A bearer token shorter than this is refused: it could be guessed.
MIN_API_TOKEN_LENGTH = 16
_API_SETTINGS = (
    Setting("listen", default=DEFAULT_API_LISTEN, help="host:port the admin API listens on"),
    Setting("cert_file", "path", help="TLS certificate chain (PEM)"),
    Setting("key_file", "path", help="TLS private key (PEM)"),
    Setting("insecure_http", "bool", default=False,
            help="allow plain HTTP on an address other than loopback"),
)
_API_TOKEN_SETTINGS = (
    Setting("name", required=True, help="who the token belongs to; lands in the audit log"),
    Setting("role", required=True, choices=(*API_ROLES, CONSUMER_ROLE)),
    Setting("token", secret=True, help="API bearer token"),
    Setting("token_sha256", help="hex SHA-256 of the token, instead of the token"),
)
_API_JWT_SETTINGS = (
    Setting("jwks_uri", required=True, help="the issuer's JSON Web Key Set"),
    Setting("issuer", required=True, help="the tokens' iss claim"),
    Setting("audience", required=True, help="the tokens' aud claim"),
    Setting("read_scope", default="rotator:read"),
    Setting("rotate_scope", default="rotator:rotate"),
    Setting("admin_scope", default="rotator:admin"),
    Setting("consumer_scope", default="rotator:consumer",
            help="grants only reporting which secret a consumer uses"),
    Setting("ca_file", "path", help="trust this CA for the JWKS endpoint"),
)


#: The shortest audit key accepted, in bytes: an HMAC-SHA256 key as long as its output.
MIN_AUDIT_KEY_BYTES = 32
