"""AWS Secrets Manager store beyond the contract: AWS's labels, the JSON value, foreign
AWSPENDING, IAM refusals, retries and outages, on a real moto server."""

from __future__ import annotations

import json
import secrets
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.endpoint
import pytest
from botocore.awsrequest import AWSResponse
from servers import MotoServer, free_port
from test_store_contract import aws_store, new_creds, new_rid, rotate

from providers.stores.aws_secrets_manager import (
    AwsSecretsManagerStore,
    rotation_of,
    version_token,
)
from rotator.errors import StoreAccessDenied, StoreConflict, StoreError, StoreUnavailable
from rotator.interfaces import Stage
from rotator.secrets import Secret

pytestmark = pytest.mark.server

CLIENT_ID = "svc-billing"


def raw(server: MotoServer, **keys: str) -> Any:
    """A plain boto3 client for the moto server, as a consumer or admin would use."""
    return boto3.client(
        "secretsmanager", region_name=server.region, endpoint_url=server.url,
        aws_access_key_id=keys.get("id", server.access_key_id),
        aws_secret_access_key=keys.get("secret", server.secret_access_key))


def hand_made(server: MotoServer, value: dict[str, Any]) -> str:
    """A secret created outside rotator; returns its name."""
    name = f"apps/{secrets.token_hex(6)}"
    raw(server).create_secret(Name=name, SecretString=json.dumps(value))
    return name


def labels(server: MotoServer, name: str) -> dict[str, list[str]]:
    stages = raw(server).describe_secret(SecretId=name)["VersionIdsToStages"]
    return {v: sorted(s) for v, s in stages.items() if s}


def current_json(server: MotoServer, name: str) -> dict[str, Any]:
    got = raw(server).get_secret_value(SecretId=name, VersionStage="AWSCURRENT")
    return dict(json.loads(got["SecretString"]))


@pytest.fixture
def store(moto_server: MotoServer) -> Iterator[AwsSecretsManagerStore]:
    with aws_store(moto_server) as s:
        yield s


class TestVersionTokens:
    """Rotation ids become 32-64 character version ids that name their rotation."""

    def test_engine_rotation_id(self) -> None:
        rid = "r-20261128T040543Z-a9fbdb6c03"
        token = version_token(rid)
        assert 32 <= len(token) <= 64
        assert rotation_of(token) == (rid, 0)
        assert rotation_of(version_token(rid, 7)) == (rid, 7)

    def test_short_id_is_padded(self) -> None:
        token = version_token("r-1")
        assert len(token) == 32
        assert rotation_of(token) == ("r-1", 0)

    def test_foreign_version_ids(self) -> None:
        assert rotation_of(str(uuid.uuid4())) == (None, -1)

    @pytest.mark.parametrize("rid", ["r" * 54, ".r-1", "r 1", ""])
    def test_unusable_rotation_id(self, rid: str) -> None:
        with pytest.raises(StoreError):
            version_token(rid)


class TestLayout:
    """A rotation leaves AWS's own labels and tags, and every other JSON key as it was."""

    def test_labels_tags_and_other_keys(
        self, moto_server: MotoServer, store: AwsSecretsManagerStore
    ) -> None:
        before = {"client_id": CLIENT_ID, "client_secret": secrets.token_urlsafe(),
                  "db": "pg://x", "port": 5432}
        name = hand_made(moto_server, before)
        [original] = labels(moto_server, name)
        creds, rid = rotate(store, name)
        assert labels(moto_server, name) == {version_token(rid): ["AWSCURRENT"],
                                             original: ["AWSPREVIOUS"]}
        assert current_json(moto_server, name) == {
            **before, "client_secret": creds.client_secret.reveal()}
        tags = {t["Key"]: t["Value"]
                for t in raw(moto_server).describe_secret(SecretId=name)["Tags"]}
        assert tags["rotator:rotation-id"] == rid
        assert "rotator:promoted-at" in tags
        previous = store.read(name, Stage.PREVIOUS)
        assert previous is not None
        assert previous.rotation_id is None  # written by hand, not by a rotation
        assert previous.credentials.client_secret.reveal() == before["client_secret"]

    def test_pending_is_awspending(
        self, moto_server: MotoServer, store: AwsSecretsManagerStore
    ) -> None:
        name = hand_made(moto_server, {"client_id": CLIENT_ID, "client_secret": "old-1234"})
        creds, rid = new_creds(), new_rid()
        store.stage_pending(name, creds, rid)
        assert labels(moto_server, name)[version_token(rid)] == ["AWSPENDING"]
        got = raw(moto_server).get_secret_value(SecretId=name, VersionStage="AWSPENDING")
        assert json.loads(got["SecretString"])["client_secret"] == creds.client_secret.reveal()
        assert current_json(moto_server, name)["client_secret"] == "old-1234"

    def test_restage_with_another_value_writes_next_generation(
        self, moto_server: MotoServer, store: AwsSecretsManagerStore
    ) -> None:
        name, rid, second = f"apps/{secrets.token_hex(6)}", new_rid(), new_creds()
        store.stage_pending(name, new_creds(), rid)
        store.stage_pending(name, second, rid)
        store.stage_pending(name, second, rid)  # same value: nothing new
        ours = sorted(v["VersionId"] for v in raw(moto_server).list_secret_version_ids(
            SecretId=name, IncludeDeprecated=True)["Versions"] if rotation_of(v["VersionId"])[0])
        assert ours == [version_token(rid, 0), version_token(rid, 1)]
        pending = store.read(name, Stage.PENDING)
        assert pending is not None
        assert (pending.credentials, pending.rotation_id) == (second, rid)


class TestCustomKeys:
    """client_id_key and client_secret_key name the JSON keys that are read and written."""

    def test_custom_keys(self, moto_server: MotoServer) -> None:
        name = hand_made(moto_server, {"username": CLIENT_ID, "password": "old-1234",
                                       "host": "db.internal"})
        with aws_store(moto_server, client_id_key="username",
                       client_secret_key="password") as s:
            current = s.read(name)
            assert current is not None
            assert current.credentials.client_id == CLIENT_ID
            creds, _ = rotate(s, name)
        assert current_json(moto_server, name) == {
            "username": CLIENT_ID, "password": creds.client_secret.reveal(),
            "host": "db.internal"}

    def test_other_keys_mean_no_credential(self, moto_server: MotoServer) -> None:
        name = hand_made(moto_server, {"client_id": CLIENT_ID, "client_secret": "old-1234"})
        with aws_store(moto_server, client_secret_key="password") as s:
            assert s.read(name) is None


class TestForeignPending:
    """An AWSPENDING someone else left (Secrets Manager's own rotation) blocks until abandoned."""

    def _foreign(self, server: MotoServer) -> tuple[str, str, str]:
        name = hand_made(server, {"client_id": CLIENT_ID, "client_secret": "old-1234"})
        token, theirs = str(uuid.uuid4()), secrets.token_urlsafe()
        raw(server).put_secret_value(
            SecretId=name, ClientRequestToken=token, VersionStages=["AWSPENDING"],
            SecretString=json.dumps({"client_id": CLIENT_ID, "client_secret": theirs}))
        return name, token, theirs

    def test_blocks_with_clear_message(
        self, moto_server: MotoServer, store: AwsSecretsManagerStore
    ) -> None:
        name, token, theirs = self._foreign(moto_server)
        ours, rid = new_creds(), new_rid()
        with pytest.raises(StoreConflict, match=f"AWSPENDING on version {token}") as caught:
            store.stage_pending(name, ours, rid)
        message = str(caught.value)
        assert "not started by rotator" in message
        assert rid in message
        assert theirs not in message
        assert ours.client_secret.reveal() not in message
        pending = store.read(name, Stage.PENDING)
        assert pending is not None
        assert pending.rotation_id is None
        assert store.facts(name).extra["pending_version"] == token

    def test_abandon_then_rotate(
        self, moto_server: MotoServer, store: AwsSecretsManagerStore
    ) -> None:
        name, token, _ = self._foreign(moto_server)
        ours, rid = new_creds(), new_rid()
        store.stage_pending(name, ours, rid, replace_foreign=True)
        assert token not in labels(moto_server, name)
        store.promote(name, rid)
        assert current_json(moto_server, name)["client_secret"] == ours.client_secret.reveal()

    def test_pending_on_current_is_a_finished_rotation(
        self, moto_server: MotoServer, store: AwsSecretsManagerStore
    ) -> None:
        name = hand_made(moto_server, {"client_id": CLIENT_ID, "client_secret": "old-1234"})
        [current] = labels(moto_server, name)
        raw(moto_server).update_secret_version_stage(
            SecretId=name, VersionStage="AWSPENDING", MoveToVersionId=current)
        assert store.read(name, Stage.PENDING) is None
        rotate(store, name)


class _Crash(BaseException):
    """The process dying: nothing in the store catches it."""


class TestPromoteCrash:
    """A promote interrupted after AWSCURRENT moved is finished by a retry."""

    @pytest.mark.parametrize("crash_at", ["tag", "pending"])
    def test_retry_finishes(self, moto_server: MotoServer, store: AwsSecretsManagerStore,
                            monkeypatch: pytest.MonkeyPatch, crash_at: str) -> None:
        name = f"apps/{secrets.token_hex(6)}"
        _, first_rid = rotate(store, name)
        second, rid = new_creds(), new_rid()
        store.stage_pending(name, second, rid)
        label = store._label

        def crashing(location: str, stage: str, **kwargs: str | None) -> None:
            if crash_at == "pending" and stage == "AWSPENDING":
                raise _Crash
            label(location, stage, **kwargs)

        def no_tags(**kwargs: Any) -> None:
            raise _Crash

        with monkeypatch.context() as m:
            m.setattr(store, "_label", crashing)
            if crash_at == "tag":
                m.setattr(store.client, "tag_resource", no_tags)
            with pytest.raises(_Crash):
                store.promote(name, rid)
        store.promote(name, rid)
        assert labels(moto_server, name) == {version_token(rid): ["AWSCURRENT"],
                                             version_token(first_rid): ["AWSPREVIOUS"]}
        current = store.read(name)
        assert current is not None
        assert (current.credentials, current.rotation_id) == (second, rid)
        assert store.facts(name).current_rotation_id == rid


POLICY_FILE = Path(__file__).parent.parent / "config" / "aws-iam-policy.json"


@dataclass
class IamMoto:
    """A moto server that enforces IAM, and an admin user's keys to set up other users."""

    server: MotoServer
    admin: dict[str, str]

    def client(self, service: str, key: dict[str, str] | None = None) -> Any:
        key = key or self.admin
        return boto3.client(service, region_name=self.server.region,
                            endpoint_url=self.server.url,
                            aws_access_key_id=key["AccessKeyId"],
                            aws_secret_access_key=key["SecretAccessKey"])

    def user(self, policy: dict[str, Any]) -> dict[str, str]:
        """A new IAM user with ``policy``; returns its access key."""
        iam, name = self.client("iam"), f"u-{secrets.token_hex(4)}"
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
        return dict(iam.create_access_key(UserName=name)["AccessKey"])

    def store(self, key: dict[str, str]) -> AwsSecretsManagerStore:
        session = boto3.Session(aws_access_key_id=key["AccessKeyId"],
                                aws_secret_access_key=key["SecretAccessKey"])
        settings = {s.key: s.default for s in AwsSecretsManagerStore.SETTINGS}
        settings.update(region=self.server.region, endpoint_url=self.server.url)
        return AwsSecretsManagerStore("aws", settings, session=session)


@pytest.fixture(scope="module")
def iam_moto() -> Iterator[IamMoto]:
    """moto enforcing IAM from its 4th request on; the first 3 make an admin user."""
    with MotoServer(auth_after=3) as server:
        iam = boto3.client("iam", region_name=server.region, endpoint_url=server.url,
                           aws_access_key_id=server.access_key_id,
                           aws_secret_access_key=server.secret_access_key)
        iam.create_user(UserName="admin")
        iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        admin = iam.create_access_key(UserName="admin")["AccessKey"]
        yield IamMoto(server, dict(admin))


class TestAccessDenied:
    """Without an IAM permission the error names the secretsmanager: action that is missing."""

    def test_missing_put_permission(self, iam_moto: IamMoto) -> None:
        key = iam_moto.user({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Resource": "*",
            "Action": ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret",
                       "secretsmanager:ListSecretVersionIds"]}]})
        name = f"apps/{secrets.token_hex(6)}"
        iam_moto.client("secretsmanager").create_secret(Name=name, SecretString=json.dumps(
            {"client_id": CLIENT_ID, "client_secret": "old-1234"}))
        creds = new_creds()
        with iam_moto.store(key) as s:
            assert s.read(name) is not None
            s.check_writable(name)
            with pytest.raises(StoreAccessDenied,
                               match="needs secretsmanager:PutSecretValue") as caught:
                s.stage_pending(name, creds, new_rid())
        assert creds.client_secret.reveal() not in str(caught.value)
        assert key["SecretAccessKey"] not in str(caught.value)

    def test_unknown_keys(self, iam_moto: IamMoto) -> None:
        key = {"AccessKeyId": "AKIA" + secrets.token_hex(8).upper(),
               "SecretAccessKey": secrets.token_urlsafe(30)}
        with iam_moto.store(key) as s, pytest.raises(StoreAccessDenied, match="access denied"):
            s.read("apps/anything")


class TestDocumentedPolicy:
    """config/aws-iam-policy.json allows every Secrets Manager action a rotation takes.

    moto checks actions and conditions but evaluates Secrets Manager requests against the
    resource ``*``, so the ARNs are widened here: this proves the action list, not the
    ``oauth/*`` scoping.
    """

    def test_rotation_under_the_policy(self, iam_moto: IamMoto) -> None:
        policy = json.loads(POLICY_FILE.read_text())
        for statement in policy["Statement"]:
            statement["Resource"] = "*"
        key = iam_moto.user(policy)
        with iam_moto.store(key) as s:
            name = f"oauth/{secrets.token_hex(6)}"
            s.check_writable(name)
            rotate(s, name)  # creates the secret
            rotate(s, name)
            creds, rid = rotate(s, name)
            s.stage_pending(name, new_creds(), new_rid())
            s.discard_pending(name, rid)
            s.drop_previous(name, rid)
            current = s.read(name)
            assert current is not None
            assert (current.credentials, current.rotation_id) == (creds, rid)
            assert s.facts(name).current_rotation_id == rid

    def test_policy_lists_only_what_the_store_calls(self) -> None:
        policy = json.loads(POLICY_FILE.read_text())
        actions = {a for st in policy["Statement"] for a in (
            st["Action"] if isinstance(st["Action"], list) else [st["Action"]])}
        assert {a for a in actions if a.startswith("secretsmanager:")} == {
            "secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue",
            "secretsmanager:ListSecretVersionIds", "secretsmanager:PutSecretValue",
            "secretsmanager:UpdateSecretVersionStage", "secretsmanager:TagResource",
            "secretsmanager:CreateSecret"}
        assert not any("*" in a for a in actions)


class _Body:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


class TestRetries:
    """Throttling is retried by botocore's standard mode with jittered exponential backoff."""

    def _throttle(self, store: AwsSecretsManagerStore, times: int, code: str) -> list[int]:
        calls = [0]

        def before_send(request: Any, **_: Any) -> AWSResponse | None:
            calls[0] += 1
            if calls[0] > times:
                return None  # let the request through to moto
            body = json.dumps({"__type": code, "message": "Rate exceeded"}).encode()
            return AWSResponse(request.url, 400, {"x-amzn-ErrorType": code}, _Body(body))

        store.client.meta.events.register("before-send.secrets-manager.GetSecretValue",
                                          before_send)
        return calls

    @pytest.mark.parametrize("code", ["ThrottlingException", "TooManyRequestsException"])
    def test_throttled_then_served(self, moto_server: MotoServer,
                                   monkeypatch: pytest.MonkeyPatch, code: str) -> None:
        sleeps: list[float] = []
        monkeypatch.setattr(botocore.endpoint.time, "sleep", sleeps.append)
        name = hand_made(moto_server, {"client_id": CLIENT_ID, "client_secret": "old-1234"})
        with aws_store(moto_server) as s:
            calls = self._throttle(s, 2, code)
            current = s.read(name)
        assert current is not None
        assert calls[0] == 3
        assert len(sleeps) == 2
        assert 0 <= sleeps[0] <= 1
        assert 0 <= sleeps[1] <= 2

    def test_throttled_past_attempts(self, moto_server: MotoServer,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(botocore.endpoint.time, "sleep", lambda _: None)
        with aws_store(moto_server, max_attempts=3) as s:
            calls = self._throttle(s, 99, "ThrottlingException")
            with pytest.raises(StoreUnavailable, match="GetSecretValue failed after retries"):
                s.read("apps/anything")
        assert calls[0] == 3


class TestUnavailable:
    """An endpoint that refuses or never answers raises StoreUnavailable."""

    def test_refused(self, moto_server: MotoServer) -> None:
        with aws_store(moto_server, endpoint_url=f"http://127.0.0.1:{free_port()}",
                       max_attempts=1) as s, pytest.raises(StoreUnavailable, match="unreachable"):
            s.read("apps/anything")

    def test_no_answer(self, moto_server: MotoServer) -> None:
        with socket.socket() as silent:  # accepts connections, never answers
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            url = f"http://127.0.0.1:{silent.getsockname()[1]}"
            with aws_store(moto_server, endpoint_url=url, timeout=0.5, max_attempts=1) as s, \
                    pytest.raises(StoreUnavailable, match=r"timed out: no answer within 0\.5s"):
                s.facts("apps/anything")

    def test_no_credentials(self, moto_server: MotoServer,
                            monkeypatch: pytest.MonkeyPatch) -> None:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        settings = {s.key: s.default for s in AwsSecretsManagerStore.SETTINGS}
        settings.update(region=moto_server.region, endpoint_url=moto_server.url)
        with pytest.raises(StoreAccessDenied, match="no AWS credentials"):
            AwsSecretsManagerStore("aws", settings).start()


class TestSecretWrapping:
    """Values read come back as Secret, never as plain text in a repr."""

    def test_repr_hides_value(self, moto_server: MotoServer,
                              store: AwsSecretsManagerStore) -> None:
        name = hand_made(moto_server, {"client_id": CLIENT_ID, "client_secret": "old-12345678"})
        current = store.read(name)
        assert current is not None
        assert isinstance(current.credentials.client_secret, Secret)
        assert "old-12345678" not in repr(current)


class TestErrorText:
    """A refused request names the parameter, never the value it carried."""

    def test_invalid_request_hides_values(self, store: AwsSecretsManagerStore) -> None:
        value = "v-" + secrets.token_hex(6)
        with pytest.raises(StoreError, match="ClientRequestToken") as caught, \
                store.errors("apps/x"):
            store.client.put_secret_value(SecretId="apps/x", ClientRequestToken=value,
                                          SecretString=value)
        assert value not in str(caught.value)
        assert "valid min length: 32" in str(caught.value)


class TestMotoServer:
    """The moto launcher serves on 127.0.0.1, keeps its keys out of logs and cleans up."""

    def test_lifecycle(self) -> None:
        server = MotoServer(startup_timeout=30)
        with server:
            assert server.url.startswith("http://127.0.0.1:")
            name = hand_made(server, {"client_id": CLIENT_ID, "client_secret": "x" * 12})
            assert raw(server).describe_secret(SecretId=name)["Name"] == name
            assert server.secret_access_key not in server.log_tail()
            workdir = server.log_path.parent
        assert not workdir.exists()
        assert server.aws_env()["AWS_ACCESS_KEY_ID"] == server.access_key_id
