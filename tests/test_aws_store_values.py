"""AWS Secrets Manager store: values rotator cannot rotate are refused with a clear error, and
promotion never undoes a write made after staging; on a real moto server."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest
from servers import MotoServer
from test_aws_store import CLIENT_ID, current_json, hand_made, labels, raw
from test_store_contract import aws_store, new_creds, new_rid

from providers.stores.aws_secrets_manager import AwsSecretsManagerStore
from rotator.errors import StoreConflict, StoreError
from rotator.interfaces import Stage

pytestmark = pytest.mark.server


@pytest.fixture
def store(moto_server: MotoServer) -> Iterator[AwsSecretsManagerStore]:
    with aws_store(moto_server) as s:
        yield s


def binary_secret(server: MotoServer) -> tuple[str, str]:
    """A secret whose only version holds SecretBinary; returns its name and version id."""
    name = f"apps/{secrets.token_hex(6)}"
    made = raw(server).create_secret(Name=name, SecretBinary=secrets.token_bytes(24))
    return name, str(made["VersionId"])


class TestBinaryValue:
    """A SecretBinary value is refused with an error naming the secret, the version and why."""

    def test_read_names_secret_version_and_binary(self, moto_server: MotoServer,
                                                  store: AwsSecretsManagerStore) -> None:
        name, version = binary_secret(moto_server)
        with pytest.raises(StoreError, match="binary") as caught:
            store.read(name)
        assert name in str(caught.value)
        assert version in str(caught.value)

    def test_stage_leaves_it_alone(self, moto_server: MotoServer,
                                   store: AwsSecretsManagerStore) -> None:
        name, version = binary_secret(moto_server)
        before = labels(moto_server, name)
        with pytest.raises(StoreError, match="binary"):
            store.stage_pending(name, new_creds(), new_rid())
        assert labels(moto_server, name) == before
        got = raw(moto_server).get_secret_value(SecretId=name, VersionStage="AWSCURRENT")
        assert got["VersionId"] == version and "SecretBinary" in got


class TestNotAnObject:
    """A value that is not a JSON object is refused with an error naming secret and version."""

    @pytest.mark.parametrize("text", ["not json", "[1, 2]", '"a string"'])
    def test_names_secret_and_version(self, moto_server: MotoServer,
                                      store: AwsSecretsManagerStore, text: str) -> None:
        name = f"apps/{secrets.token_hex(6)}"
        version = raw(moto_server).create_secret(Name=name, SecretString=text)["VersionId"]
        with pytest.raises(StoreError, match="not a JSON object") as caught:
            store.read(name, Stage.CURRENT)
        assert name in str(caught.value)
        assert version in str(caught.value)


def console_edit(server: MotoServer, name: str, **changes: str) -> None:
    """What a console edit does: a new AWSCURRENT version with some keys changed."""
    value = {**current_json(server, name), **changes}
    raw(server).put_secret_value(SecretId=name, SecretString=json.dumps(value))


class TestEditBetweenStageAndPromote:
    """Promotion keeps keys someone changed after staging, or refuses another client's id."""

    def test_edited_key_survives_promote(self, moto_server: MotoServer,
                                         store: AwsSecretsManagerStore) -> None:
        name = hand_made(moto_server, {"client_id": CLIENT_ID, "client_secret": "old-1234",
                                       "host": "db-1.internal"})
        creds, rid = new_creds(), new_rid()
        store.stage_pending(name, creds, rid)
        console_edit(moto_server, name, host="db-2.internal")
        store.promote(name, rid)
        assert current_json(moto_server, name) == {
            "client_id": CLIENT_ID, "client_secret": creds.client_secret.reveal(),
            "host": "db-2.internal"}
        assert store.read(name, Stage.PENDING) is None
        assert "AWSPENDING" not in str(labels(moto_server, name))
        previous = raw(moto_server).get_secret_value(SecretId=name, VersionStage="AWSPREVIOUS")
        assert json.loads(previous["SecretString"])["host"] == "db-2.internal"
        store.promote(name, rid)  # repeated: nothing changes
        assert current_json(moto_server, name)["host"] == "db-2.internal"

    def test_changed_client_id_refused(self, moto_server: MotoServer,
                                       store: AwsSecretsManagerStore) -> None:
        name = hand_made(moto_server, {"client_id": CLIENT_ID, "client_secret": "old-1234"})
        rid = new_rid()
        store.stage_pending(name, new_creds(), rid)
        console_edit(moto_server, name, client_id="svc-other")
        before = labels(moto_server, name)
        with pytest.raises(StoreConflict, match="client_id"):
            store.promote(name, rid)
        assert labels(moto_server, name) == before
        assert current_json(moto_server, name)["client_id"] == "svc-other"
