"""Hostile answers to the outgoing calls tests/test_hostile_idp.py does not cover: a
consumer's token request and its report to the daemon, the admin API's JWKS fetch, the
Cognito adapter and the AWS Secrets Manager store (both boto3), and the Vault store (hvac).

A server on 127.0.0.1 answers one byte at a time (of its headers or its body), with a 256 MB
body, or never. Each call gives up within its total timeout (counted in what the server
managed to send, not in seconds), reads at most a bounded prefix, fails with its own error in
one line, and names no secret.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import Callable, Iterator

import boto3
import pytest
from hostile_http import HostileServer, check_cut_off, made_servers
from structlog.testing import capture_logs

from providers.idps.cognito import CognitoIdp
from providers.stores.aws_secrets_manager import AwsSecretsManagerStore
from providers.stores.vault import VaultStore
from rotator.client import CachePolicy, TokenClient
from rotator.client.asyncio import AsyncTokenClient
from rotator.client_report import ConsumerReporter
from rotator.daemon.auth import JwksCache, JwksUnavailable
from rotator.errors import IdpUnavailable, StoreUnavailable, TokenEndpointUnavailable
from rotator.interfaces import Credentials
from rotator.secrets import Secret
from rotator.token import TokenRequest

TIMEOUT = 0.5
#: A slow server sends one piece every PACE seconds, LIMIT pieces in all (100 s): a caller
#: that keeps its total timeout leaves after about TIMEOUT / PACE of them.
PACE, LIMIT = 0.05, 2000
MODES = ("slow_body", "slow_headers", "huge", "silent")


class _Server(HostileServer):
    """tests/hostile_http.py's server, with one more mode: ``silent`` reads the request and
    never answers; it lets go only when the caller closes the connection."""

    def _silent(self, conn: socket.socket, request: bytes) -> None:
        while conn.recv(65536):
            pass


@pytest.fixture
def hostile() -> Iterator[Callable[[str], HostileServer]]:
    with made_servers(_Server, pace=PACE, limit=LIMIT) as make:
        yield make


def _check(server: HostileServer, message: str, *secrets_sent: str) -> None:
    check_cut_off(server, message, secrets_sent, limit=LIMIT)


class TestTokenClientAgainstHostileEndpoint:
    """A token client's own http client (sync and asyncio) gives a token request its timeout
    in all and reads at most 1 MiB of the answer: a slow, oversized or silent token endpoint
    fails the fetch with TokenEndpointUnavailable, naming neither secret."""

    @staticmethod
    def _parts(server: HostileServer) -> tuple[TokenRequest, Credentials, str]:
        secret = secrets.token_urlsafe(24)
        request = TokenRequest(f"http://127.0.0.1:{server.port}/token")
        return request, Credentials("svc", Secret(secret)), secret

    @staticmethod
    def _expect(server: HostileServer, message: str, secret: str) -> None:
        _check(server, message, secret)
        assert ("larger than" if server.mode == "huge" else "timed out") in message

    @pytest.mark.parametrize("mode", MODES)
    def test_threads(self, mode: str, hostile: Callable[[str], HostileServer]) -> None:
        server = hostile(mode)
        request, creds, secret = self._parts(server)
        client = TokenClient(request, creds, policy=CachePolicy(max_attempts=1),
                             timeout=TIMEOUT)
        try:
            with pytest.raises(TokenEndpointUnavailable) as caught:
                client.token()
        finally:
            client.close()
        self._expect(server, str(caught.value), secret)

    @pytest.mark.parametrize("mode", MODES)
    def test_asyncio(self, mode: str, hostile: Callable[[str], HostileServer]) -> None:
        server = hostile(mode)
        request, creds, secret = self._parts(server)

        async def fetch() -> str:
            client = AsyncTokenClient(request, creds, policy=CachePolicy(max_attempts=1),
                                      timeout=TIMEOUT)
            try:
                with pytest.raises(TokenEndpointUnavailable) as caught:
                    await client.token()
            finally:
                await client.aclose()
            return str(caught.value)

        self._expect(server, asyncio.run(fetch()), secret)


class TestConsumerReportAgainstHostileDaemon:
    """A consumer's report to a slow, oversized or silent daemon fails within its timeout,
    logged once without the token, and never raises into the token fetch."""

    @pytest.mark.parametrize("mode", MODES)
    def test_mode(self, mode: str, hostile: Callable[[str], HostileServer]) -> None:
        server = hostile(mode)
        token = secrets.token_urlsafe(24)
        reporter = ConsumerReporter(f"http://127.0.0.1:{server.port}", "svc", Secret(token),
                                    secrets.token_bytes(32), instance="web-1",
                                    timeout=TIMEOUT)
        try:
            with capture_logs() as logs:
                assert reporter.report(Secret(secrets.token_urlsafe(32))) is False
        finally:
            reporter.close()
        assert (reporter.sent, reporter.failed) == (0, 1)
        [event] = [e for e in logs if e["event"] == "consumer_report_failed"]
        error = str(event["error"])
        _check(server, error, token)
        # a huge answer's status arrives at once (200, not 204); the others never finish
        assert ("DeadlinePassed" in error) == (mode != "huge")


class TestJwksFetchAgainstHostileIssuer:
    """The admin API's fetch of the issuer's keys from a slow, oversized or silent server
    ends within its timeout as JwksUnavailable (a retryable 503, not a stuck worker)."""

    @pytest.mark.parametrize("mode", MODES)
    def test_mode(self, mode: str, hostile: Callable[[str], HostileServer]) -> None:
        server = hostile(mode)
        cache = JwksCache(f"http://127.0.0.1:{server.port}/certs", timeout=TIMEOUT)
        try:
            with pytest.raises(JwksUnavailable) as caught:
                cache.key("k1")
        finally:
            cache.close()
        message = str(caught.value)
        _check(server, message)
        assert cache.fetches == 1
        assert ("larger than" if mode == "huge" else "within") in message


class TestCognitoAgainstHostileEndpoint:
    """A Cognito call (boto3) to a slow, oversized or silent endpoint ends, retries included,
    within max_attempts times its timeout as IdpUnavailable naming no AWS secret key."""

    @pytest.mark.parametrize("mode", MODES)
    def test_mode(self, mode: str, hostile: Callable[[str], HostileServer]) -> None:
        server = hostile(mode)
        secret_key = secrets.token_urlsafe(30)
        idp = CognitoIdp("cognito", {
            "region": "eu-west-1", "user_pool_id": "eu-west-1_AbC123",
            "endpoint_url": f"http://127.0.0.1:{server.port}", "tls_verify": True,
            "ca_file": None, "timeout": TIMEOUT, "max_attempts": 2, "propagation_delay": 0.0,
        }, session=boto3.Session(aws_access_key_id="AKIDROTATORTEST",
                                 aws_secret_access_key=secret_key))
        idp.start()
        try:
            with pytest.raises(IdpUnavailable) as caught:
                idp.capabilities("svc")
        finally:
            idp.close()
        message = str(caught.value)
        _check(server, message, secret_key)
        assert len(server.requests) == 2  # botocore retried once, each attempt bounded
        assert ("larger than" if mode == "huge" else "within") in message


class TestSecretsManagerAgainstHostileEndpoint:
    """A Secrets Manager read from a slow, oversized or silent endpoint ends, botocore's
    retries included, within max_attempts times its timeout as StoreUnavailable naming no
    AWS secret key (botocore alone bounds each socket read, not a call, and reads whole)."""

    @pytest.mark.parametrize("mode", MODES)
    def test_mode(self, mode: str, hostile: Callable[[str], HostileServer]) -> None:
        server = hostile(mode)
        secret_key = secrets.token_urlsafe(30)
        store = AwsSecretsManagerStore("aws", {
            "region": "eu-west-1", "endpoint_url": f"http://127.0.0.1:{server.port}",
            "timeout": TIMEOUT, "max_attempts": 2,
        }, session=boto3.Session(aws_access_key_id="AKIDROTATORTEST",
                                 aws_secret_access_key=secret_key, region_name="eu-west-1"))
        store.start()
        try:
            with pytest.raises(StoreUnavailable) as caught:
                store.read("apps/billing", "current")
        finally:
            store.close()
        message = str(caught.value)
        _check(server, message, secret_key)
        assert len(server.requests) == 2  # botocore retried once, each attempt bounded
        assert ("larger than" if mode == "huge" else "timed out") in message


class TestVaultAgainstHostileServer:
    """The Vault store's requests (hvac over requests) read an answer's body within the
    store's timeout and at most 1 MiB of it: a Vault (or whatever answers on its address)
    that drips its body, sends 256 MB or never answers fails the call as StoreUnavailable,
    naming no token. (Headers dripped one line at a time are bounded per read only.)"""

    @pytest.mark.parametrize("mode", ["slow_body", "huge", "silent"])
    def test_mode(self, mode: str, hostile: Callable[[str], HostileServer]) -> None:
        server = hostile(mode)
        token = secrets.token_urlsafe(24)
        store = VaultStore("vault", {
            "url": f"http://127.0.0.1:{server.port}", "mount": "secret", "auth": "token",
            "token": Secret(token), "tls_verify": True, "timeout": TIMEOUT,
        })
        with pytest.raises(StoreUnavailable) as caught:
            store.start()  # its token lookup is the first request
        store.close()
        message = str(caught.value)
        _check(server, message, token)
        assert len(server.requests) == 1
        expected = {"huge": "larger than", "slow_body": "not read within", "silent": "within"}
        assert expected[mode] in message
