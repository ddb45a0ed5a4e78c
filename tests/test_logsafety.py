"""Tests for rotator.logsafety: stdlib logging at DEBUG never carries a secret."""

from __future__ import annotations

import io
import json
import logging
import secrets
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from servers import MotoServer

from rotator.logsafety import CAPPED_LOGGERS, RedactingFilter, install_log_safety
from rotator.secrets import Secret


@pytest.fixture
def debug_log() -> Iterator[io.StringIO]:
    """Root logging at DEBUG into a buffer, as basicConfig(level=DEBUG) sets it up;
    logging's global state is put back afterwards."""
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    saved = (root.level, logging.getLogRecordFactory(),
             {name: logging.getLogger(name).level for name in CAPPED_LOGGERS})
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        logging.setLogRecordFactory(saved[1])
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)


def _put_secret(moto_server: MotoServer, value: Secret) -> None:
    client = boto3.Session(
        aws_access_key_id=moto_server.access_key_id,
        aws_secret_access_key=moto_server.secret_access_key,
    ).client("secretsmanager", region_name=moto_server.region, endpoint_url=moto_server.url)
    name = f"rotator/test/{secrets.token_hex(4)}"
    client.create_secret(Name=name, SecretString="{}")
    client.put_secret_value(SecretId=name, SecretString=json.dumps(
        {"client_id": "svc", "client_secret": value.reveal()}))
    client.close()


@pytest.mark.server
class TestBotocoreDebugLogging:
    """With root logging at DEBUG, a PutSecretValue through boto3 logs no secret value."""

    def test_put_secret_value_logs_no_secret(
        self, debug_log: io.StringIO, moto_server: MotoServer
    ) -> None:
        install_log_safety()
        value = Secret(secrets.token_urlsafe(32) + ' "quoted" +/ x')
        _put_secret(moto_server, value)
        assert value.reveal()[:12] not in debug_log.getvalue()

    def test_botocore_set_to_debug_after_install_is_redacted(
        self, debug_log: io.StringIO, moto_server: MotoServer
    ) -> None:
        install_log_safety()
        logging.getLogger("botocore").setLevel(logging.DEBUG)  # someone insists
        value = Secret(secrets.token_urlsafe(32) + ' "quoted" +/ x')
        _put_secret(moto_server, value)
        text = debug_log.getvalue()
        assert "PutSecretValue" in text  # the parameter dump is there, masked
        assert value.reveal()[:12] not in text
        assert "**********" in text

    def test_noisy_loggers_are_capped_at_info(self, debug_log: io.StringIO) -> None:
        logging.getLogger("hvac").setLevel(logging.ERROR)
        install_log_safety()
        install_log_safety()
        for name in CAPPED_LOGGERS:
            assert logging.getLogger(name).getEffectiveLevel() >= logging.INFO, name
        assert logging.getLogger("hvac").level == logging.ERROR  # a stricter level stays


class TestEveryRecordIsRedacted:
    """Any logger's record, its arguments and its traceback come out with secrets masked."""

    def test_message_args_and_traceback(self, debug_log: io.StringIO) -> None:
        install_log_safety()
        value = Secret(secrets.token_urlsafe(32))
        log = logging.getLogger("some.library")
        log.debug("sending %s", {"client_secret": value.reveal()})
        try:
            raise ValueError(f"bad secret {value.reveal()}")
        except ValueError:
            log.exception("failed")
        text = debug_log.getvalue()
        assert value.reveal() not in text
        assert text.count("**********") == 2

    def test_filter_on_a_handler(self) -> None:
        value = Secret(secrets.token_urlsafe(32))
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "got %s", (value.reveal(),),
                                   None)
        assert RedactingFilter().filter(record)
        assert record.getMessage() == "got **********"


class TestQuietByDefault:
    """Under the default WARNING root, the capped libraries create no INFO records at all."""

    def test_no_record_for_an_httpx_request(self) -> None:
        root = logging.getLogger()
        saved = (root.level, {name: logging.getLogger(name).level for name in CAPPED_LOGGERS})
        made: list[logging.LogRecord] = []
        factory = logging.getLogRecordFactory()

        def counting(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = factory(*args, **kwargs)
            made.append(record)
            return record

        try:
            root.setLevel(logging.WARNING)
            for name in CAPPED_LOGGERS:
                logging.getLogger(name).setLevel(logging.NOTSET)
            install_log_safety()
            logging.setLogRecordFactory(counting)
            with httpx.Client(transport=httpx.MockTransport(
                    lambda request: httpx.Response(200))) as client:
                client.get("http://idp.test/")
            assert [r for r in made if r.name.startswith(("httpx", "httpcore"))] == []
        finally:
            logging.setLogRecordFactory(factory)
            root.setLevel(saved[0])
            for name, level in saved[1].items():
                logging.getLogger(name).setLevel(level)
