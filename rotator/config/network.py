"""Checks on the URLs rotator calls and the address its admin API listens on."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from rotator.config.schema import _INSECURE_OK


def _is_url_key(key: str) -> bool:
    return key == "url" or key.endswith("_url")


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback  # 127.0.0.0/8, ::1
    except ValueError:
        return False


def url_problem(url: str, allow_insecure_http: bool = False) -> str | None:
    """Why ``url`` may not be used, or None.

    Credentials travel to every URL rotator calls, so a URL must be ``https://`` unless
    its host is this machine (127.0.0.0/8, ::1, localhost) or ``allow_insecure_http`` is set.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if any(ord(c) <= 0x20 or 0x7f <= ord(c) <= 0x9f for c in url):
        return "must not contain spaces or control characters"
    if parts.scheme not in ("http", "https") or not host:
        return "must be an https:// URL with a host"
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(host):
        return (f"http:// to {host} would send credentials in cleartext: use https://, or "
                f"set {_INSECURE_OK} = true in this table if you mean it")
    return None


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` to (host, port); raises ValueError with the reason."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected host:port, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port_text!r}")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback interface."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_refusal(host: str, tls: bool, insecure_http: bool) -> str | None:
    """Why listening on ``host`` is refused, or None: plain HTTP only on loopback."""
    if tls or insecure_http or is_loopback(host):
        return None
    return (f"listening on {host} without TLS would send bearer tokens in clear text; "
            f"set cert_file and key_file, or insecure_http = true to allow it")
