"""The HTTP transport: Splunk HEC or a generic JSON webhook.

``api = "hec"`` posts a batch to ``<url>`` (``https://splunk:8088/services/collector/event``)
with ``Authorization: Splunk <token>``; the body is one HEC event object per record, one after
the other::

    {"time": 1764435129.123, "host": "…", "source": "rotator", "sourcetype": "rotator:json",
     "index": "…", "event": {…the ECS or OCSF document…, or the CEF line},
     "fields": {"rotator_id": "<chain>", "rotator_seq": 12, "rotator_sink": "splunk"}}

``api = "webhook"`` posts ``{"events": [{"id": "<chain>", "seq": 12, "time": "…",
"event": {…}}, …]}`` with ``Authorization: Bearer <token>`` when a token is set.

A 2xx answer delivers the batch; anything else (an error status, a refused connection, a
timeout) is a ``DeliveryError`` and the spool sends the batch again later. A record's id is
its ``chain`` value, the same on every attempt, by which a SIEM drops duplicates. The token is
sent only in the header; no error message, log line or metric carries it.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from rotator import _deadline
from rotator._remote import error_text
from rotator.audit.remote import describe
from rotator.audit.spool import DeliveryError, Record
from rotator.secrets import Secret


class HttpTransport:
    """Posts batches of records to a HEC endpoint or a webhook."""

    def __init__(self, url: str, *, api: str = "hec", token: Secret | None = None,
                 sink: str = "http", format: str = "json", ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None,
                 index: str | None = None, source: str = "rotator",
                 sourcetype: str | None = None, host: str | None = None,
                 timeout: float = 10.0) -> None:
        self.url, self.api, self.sink = url, api, sink
        self._token = token
        self._meta: dict[str, Any] = {"host": host or socket.gethostname(), "source": source,
                                      "sourcetype": sourcetype or f"rotator:{format}"}
        if index:
            self._meta["index"] = index
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file and key_file:
            context.load_cert_chain(cert_file, key_file)
        self._timeout = timeout
        self._client = _deadline.client(timeout, context, trust_env=False)

    @classmethod
    def from_settings(cls, sink: str, format: str, s: Mapping[str, Any]) -> HttpTransport:
        return cls(s["url"], api=s.get("api") or "hec", token=s.get("token"), sink=sink,
                   format=format, ca_file=s.get("ca_file"), cert_file=s.get("cert_file"),
                   key_file=s.get("key_file"), index=s.get("index"),
                   source=s.get("source") or "rotator", sourcetype=s.get("sourcetype"),
                   host=s.get("host"), timeout=s.get("timeout") or 10.0)

    def body(self, records: Sequence[Record]) -> bytes:
        """The request body for ``records``."""
        items = []
        for record in records:
            info = describe(record.line)
            event: Any = info.document if info.document is not None else record.line
            if self.api == "hec":
                items.append(json.dumps(
                    {"time": round(info.timestamp.timestamp(), 3), **self._meta,
                     "event": event, "fields": {"rotator_id": record.chain,
                                                "rotator_seq": record.seq,
                                                "rotator_sink": self.sink}},
                    ensure_ascii=False, separators=(",", ":")))
            else:
                items.append(json.dumps({"id": record.chain, "seq": record.seq,
                                         "time": info.timestamp.isoformat(), "event": event},
                                        ensure_ascii=False, separators=(",", ":")))
        if self.api == "hec":
            return "\n".join(items).encode("utf-8", "surrogatepass")
        return ('{"events":[' + ",".join(items) + "]}").encode("utf-8", "surrogatepass")

    def send(self, records: Sequence[Record]) -> None:
        headers = {"Content-Type": "application/json"}
        if self._token is not None:
            scheme = "Splunk" if self.api == "hec" else "Bearer"
            headers["Authorization"] = f"{scheme} {self._token.reveal()}"
        try:
            response = _deadline.post(self._client, self.url, content=self.body(records),
                                      headers=headers, deadline=self._timeout)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{self.api} {self.sink}: {type(exc).__name__}") from None
        if not response.is_success:
            raise DeliveryError(f"{self.api} {self.sink}: HTTP {response.status_code}: "
                                f"{error_text(response, ('text', 'code', 'message'))}")

    def close(self) -> None:
        self._client.close()
