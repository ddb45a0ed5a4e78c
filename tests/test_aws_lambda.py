"""The Secrets Manager rotation function, step by step as Secrets Manager calls it, against a
real moto server and a real Keycloak: repeated, out-of-order and interrupted steps."""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from rotation_env import KeycloakRealm
from servers import ROTATION_ATTRIBUTES, MotoServer

from providers import aws_lambda
from providers.idps.keycloak import KeycloakIdp
from rotator.errors import InvalidClient, RotationError

pytestmark = pytest.mark.server

STEPS = ["createSecret", "setSecret", "testSecret", "finishSecret"]


@dataclass
class Rig:
    """One Keycloak client whose secret lives in a moto secret marked for rotation."""

    kc: KeycloakRealm
    moto: MotoServer
    client_id: str
    name: str
    arn: str
    old: str
    seen: set[str] = field(default_factory=set)

    def aws(self) -> Any:
        return boto3.client("secretsmanager", region_name=self.moto.region,
                            endpoint_url=self.moto.url,
                            aws_access_key_id=self.moto.access_key_id,
                            aws_secret_access_key=self.moto.secret_access_key)

    def register(self, token: str) -> bool:
        """What RotateSecret does before calling createSecret: label a version of ``token``
        AWSPENDING, unless another rotation's AWSPENDING is there (then RotateSecret fails).

        moto registers no empty version without invoking a Lambda, so the version holds
        ``{}``: no credential yet, which createSecret treats as an empty version."""
        labels = self.labels()
        if token in labels or any("AWSPENDING" in s and "AWSCURRENT" not in s
                                  for s in labels.values()):
            return False
        self.aws().put_secret_value(SecretId=self.name, ClientRequestToken=token,
                                    SecretString="{}", VersionStages=["AWSPENDING"])
        return True

    def age_promotion(self) -> None:
        """Let the grace period of the last promotion pass (its tag, two days earlier)."""
        self.aws().tag_resource(SecretId=self.name, Tags=[
            {"Key": "rotator:promoted-at", "Value": "2000-01-01T00:00:00+00:00"}])

    def step(self, step: str, token: str, *, register: bool = True, **extra: str) -> None:
        """Invoke the handler with the event Secrets Manager sends for ``step``; before
        createSecret, register ``token`` as RotateSecret would."""
        if step == "createSecret" and register:
            self.register(token)
        event = {"SecretId": self.arn, "ClientRequestToken": token, "Step": step, **extra}
        try:
            aws_lambda.handler(event, None)
        finally:
            self.remember()

    def rotate(self, token: str | None = None) -> str:
        token = token or str(uuid.uuid4())
        for step in STEPS:
            self.step(step, token)
        return token

    def value(self, stage: str) -> str | None:
        aws = self.aws()
        try:
            got = aws.get_secret_value(SecretId=self.name, VersionStage=stage)
        except aws.exceptions.ResourceNotFoundException:
            return None
        secret = json.loads(got["SecretString"]).get("client_secret")
        return None if secret is None else str(secret)

    def labels(self) -> dict[str, list[str]]:
        stages = self.aws().describe_secret(SecretId=self.name)["VersionIdsToStages"]
        return {v: sorted(s) for v, s in stages.items() if s}

    def kc_current(self) -> str:
        uuid_ = self.kc.keycloak.client_uuid(self.kc.realm, self.client_id)
        value = self.kc.keycloak.admin.get(
            f"{self.kc.realm}/clients/{uuid_}/client-secret").json()["value"]
        self.seen.add(value)
        return str(value)

    def kc_rotated(self) -> str | None:
        uuid_ = self.kc.keycloak.client_uuid(self.kc.realm, self.client_id)
        response = self.kc.keycloak.admin.get(
            f"{self.kc.realm}/clients/{uuid_}/client-secret/rotated")
        return None if response.status_code == 404 else str(response.json()["value"])

    def kc_regenerate(self) -> str:
        """What a createSecret that died after asking Keycloak left behind."""
        uuid_ = self.kc.keycloak.client_uuid(self.kc.realm, self.client_id)
        value = str(self.kc.keycloak.admin.post(
            f"{self.kc.realm}/clients/{uuid_}/client-secret").json()["value"])
        self.seen.add(value)
        return value

    def works(self, secret: str | None) -> bool:
        if not secret:
            return False
        return self.kc.keycloak.token(self.kc.realm, self.client_id, secret).status_code == 200

    def remember(self) -> None:
        for stage in ("AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"):
            value = self.value(stage)
            if value:
                self.seen.add(value)


def make_rig(kc: KeycloakRealm, moto: MotoServer, root: Path, monkeypatch: pytest.MonkeyPatch,
             *, overlap: bool = True, grace: str = "1h", rotation: bool = True) -> Rig:
    client_id = f"svc-{secrets.token_hex(4)}"
    _, old = kc.keycloak.create_client(
        kc.realm, client_id, attributes=dict(ROTATION_ATTRIBUTES) if overlap else None)
    rig = Rig(kc, moto, client_id, f"apps/{client_id}", "", old)
    value = {"client_id": client_id, "client_secret": old, "note": "kept"}
    rig.arn = rig.aws().create_secret(Name=rig.name, SecretString=json.dumps(value))["ARN"]
    if rotation:  # moto without a Lambda: marks the secret for rotation, value unchanged
        rig.aws().rotate_secret(SecretId=rig.name, RotateImmediately=False,
                                RotationRules={"AutomaticallyAfterDays": 30})
    audit_key = secrets.token_urlsafe(32)
    rig.seen |= {old, kc.admin_secret, audit_key, moto.secret_access_key}
    for name, text in (("audit.key", audit_key), ("admin.secret", kc.admin_secret)):
        (root / name).write_text(text)
        (root / name).chmod(0o600)
    (root / "rotator.toml").write_text(f"""
[audit]
stdout = true
key_file = "audit.key"

[stores.aws]
type = "aws_secrets_manager"
region = "{moto.region}"
endpoint_url = "{moto.url}"
timeout = "5s"

[idps.kc]
type = "keycloak"
url = "{kc.keycloak.url}"
realm = "{kc.realm}"
admin_client_id = "{kc.admin_client_id}"
admin_client_secret_file = "admin.secret"

[clients.svc]
idp = "kc"
client_id = "{client_id}"
grace_period = "{grace}"
verify_attempts = 3
stores = [{{store = "aws", secret_id = "{rig.name}"}}]
""")
    monkeypatch.setenv("ROTATOR_CONFIG", str(root / "rotator.toml"))
    for key, value_ in moto.aws_env().items():
        monkeypatch.setenv(key, value_)
    return rig


@pytest.fixture
def rig_for(kc_realm: KeycloakRealm, moto_server: MotoServer, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """Makes rigs; afterwards, no secret any rig saw appears in the handler's output."""
    rigs: list[Rig] = []

    def make(**kwargs: Any) -> Rig:
        root = tmp_path / str(len(rigs))
        root.mkdir()
        rigs.append(make_rig(kc_realm, moto_server, root, monkeypatch, **kwargs))
        return rigs[-1]

    yield make
    output = capsys.readouterr()
    text = output.out + output.err
    assert [s[:4] for rig in rigs for s in rig.seen if len(s) >= 8 and s in text] == []


class TestRotation:
    """The four steps make the IdP's new secret AWSCURRENT and keep the old one AWSPREVIOUS."""

    def test_four_steps(self, rig_for: Any) -> None:
        rig = rig_for()
        token = rig.rotate()
        new = rig.value("AWSCURRENT")
        assert new != rig.old
        assert new == rig.kc_current()
        assert rig.works(new)
        assert rig.value("AWSPREVIOUS") == rig.old
        assert rig.works(rig.old), "the old secret is kept for the grace period"
        assert rig.labels()[token] == ["AWSCURRENT"]
        assert rig.value("AWSPENDING") is None
        got = rig.aws().get_secret_value(SecretId=rig.name, VersionStage="AWSCURRENT")
        assert json.loads(got["SecretString"])["note"] == "kept"

    def test_rotation_token_is_accepted(self, rig_for: Any) -> None:
        rig = rig_for()
        token = str(uuid.uuid4())
        for step in STEPS:
            rig.step(step, token, RotationToken=str(uuid.uuid4()))
        assert rig.value("AWSCURRENT") == rig.kc_current()


class TestRepeatedSteps:
    """Every step may run again: the IdP makes one secret and the result is the same."""

    def test_each_step_twice(self, rig_for: Any) -> None:
        rig = rig_for()
        token = str(uuid.uuid4())
        for step in STEPS:
            rig.step(step, token)
            rig.step(step, token)
        rig.step("createSecret", token)
        new = rig.value("AWSCURRENT")
        assert new == rig.kc_current()
        assert rig.kc_rotated() == rig.old, "createSecret made a second secret"
        assert rig.works(rig.old)
        assert rig.labels()[token] == ["AWSCURRENT"]


class TestInterruptedCreate:
    """A createSecret that died after the IdP made the secret adopts it on its retry."""

    def test_adopts_the_idp_secret(self, rig_for: Any) -> None:
        rig = rig_for()
        made = rig.kc_regenerate()
        rig.rotate()
        assert rig.value("AWSCURRENT") == made == rig.kc_current()
        assert rig.kc_rotated() == rig.old
        assert rig.works(rig.old)


class TestOutOfOrder:
    """Steps for a token createSecret did not stage are refused and change nothing."""

    @pytest.mark.parametrize("step", STEPS[1:])
    def test_before_create(self, rig_for: Any, step: str) -> None:
        rig = rig_for()
        before = rig.labels()
        with pytest.raises(RotationError, match="neither AWSPENDING nor AWSCURRENT"):
            rig.step(step, str(uuid.uuid4()))
        assert rig.labels() == before
        assert rig.kc_current() == rig.old

    def test_second_rotation_while_one_is_pending(self, rig_for: Any) -> None:
        rig = rig_for()
        first = str(uuid.uuid4())
        rig.step("createSecret", first)
        second = str(uuid.uuid4())
        assert not rig.register(second), "RotateSecret refuses while one is pending"
        with pytest.raises(RotationError, match="did not register"):
            rig.step("createSecret", second)
        for step in STEPS[1:]:
            rig.step(step, first)
        assert rig.value("AWSCURRENT") == rig.kc_current()

    def test_stale_token_after_next_rotation(self, rig_for: Any) -> None:
        rig = rig_for()
        first = rig.rotate()
        rig.age_promotion()
        rig.rotate()
        current = rig.value("AWSCURRENT")
        for step in STEPS:  # its version is AWSPREVIOUS now
            with pytest.raises(RotationError, match="AWSPENDING"):
                rig.step(step, first)
        assert rig.value("AWSCURRENT") == current

    def test_finish_again_changes_nothing(self, rig_for: Any) -> None:
        rig = rig_for()
        token = rig.rotate()
        before = (rig.labels(), rig.value("AWSCURRENT"))
        rig.step("finishSecret", token)
        rig.step("testSecret", token)
        assert (rig.labels(), rig.value("AWSCURRENT")) == before


class TestRetirement:
    """Old secrets are retired by the next rotation's createSecret, or at once with grace 0."""

    def test_next_rotation_retires(self, rig_for: Any) -> None:
        rig = rig_for()
        rig.rotate()
        first = rig.value("AWSCURRENT")
        assert rig.works(rig.old)
        rig.age_promotion()
        token = str(uuid.uuid4())
        rig.step("createSecret", token)
        assert not rig.works(rig.old)
        assert rig.works(first)
        for step in STEPS[1:]:
            rig.step(step, token)
        assert rig.value("AWSPREVIOUS") == first
        assert rig.works(first)

    def test_grace_zero_retires_at_finish(self, rig_for: Any) -> None:
        rig = rig_for(grace="0s")
        rig.rotate()
        assert not rig.works(rig.old)
        assert rig.kc_rotated() is None
        assert rig.value("AWSPREVIOUS") is None
        assert rig.works(rig.value("AWSCURRENT"))


class TestSingleSecret:
    """Without overlap the old secret dies in createSecret, so the new one is current at once."""

    def test_promoted_in_create(self, rig_for: Any) -> None:
        rig = rig_for(overlap=False)
        token = str(uuid.uuid4())
        rig.step("createSecret", token)
        assert rig.value("AWSCURRENT") == rig.kc_current()
        assert not rig.works(rig.old)
        for step in STEPS[1:]:
            rig.step(step, token)
        assert rig.works(rig.value("AWSCURRENT"))
        assert rig.labels()[token] == ["AWSCURRENT"]


class TestFailedTest:
    """A failed testSecret with an overlap IdP restores the old secret and discards the new."""

    def test_rolled_back(self, rig_for: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        rig = rig_for()
        token = str(uuid.uuid4())
        rig.step("createSecret", token)
        rig.step("setSecret", token)
        new = rig.value("AWSPENDING")

        def refused(*args: object, **kwargs: object) -> None:
            raise InvalidClient("the token endpoint refused the new secret")

        with monkeypatch.context() as m:
            m.setattr(aws_lambda, "verify_credentials", refused)
            with pytest.raises(InvalidClient):
                rig.step("testSecret", token)
        assert rig.kc_current() == rig.old
        assert rig.kc_rotated() in (None, rig.old)
        assert rig.works(rig.old)
        assert not rig.works(new)
        assert rig.value("AWSCURRENT") == rig.old
        assert token not in rig.labels()
        with pytest.raises(RotationError, match="neither AWSPENDING nor AWSCURRENT"):
            rig.step("testSecret", token)  # Secrets Manager retrying the failed step
        rig.rotate()  # the next rotation is not refused
        assert rig.works(rig.value("AWSCURRENT"))
        assert rig.works(rig.old)


class TestUnregisteredToken:
    """A token Secrets Manager did not register is refused by every step, changing nothing."""

    @pytest.mark.parametrize("step", STEPS)
    def test_refused(self, rig_for: Any, step: str) -> None:
        rig = rig_for()
        before = rig.labels()
        with pytest.raises(RotationError, match="did not register"):
            rig.step(step, str(uuid.uuid4()), register=False)
        assert rig.labels() == before
        assert rig.kc_current() == rig.old


class TestGracePeriod:
    """createSecret refuses while the last promotion's grace period lasts; afterwards it rotates."""

    def test_refused_within_grace(self, rig_for: Any) -> None:
        rig = rig_for()
        rig.rotate()
        first = rig.value("AWSCURRENT")
        token = str(uuid.uuid4())
        with pytest.raises(RotationError, match="grace period"):
            rig.step("createSecret", token)
        assert rig.works(rig.old), "the previous secret keeps its grace period"
        assert rig.kc_current() == first
        assert token not in rig.labels(), "no rotation is left in progress"
        rig.age_promotion()
        rig.rotate()
        assert not rig.works(rig.old)
        assert rig.works(first)


class TestConfigSecrets:
    """ROTATOR_SECRETS_ID loads the audit key and IdP admin secret from Secrets Manager once."""

    def test_loaded_from_secrets_manager(self, rig_for: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
        rig = rig_for()
        config = Path(aws_lambda.os.environ["ROTATOR_CONFIG"])
        audit_key = secrets.token_urlsafe(32)
        rig.seen.add(audit_key)
        text = config.read_text().replace('key_file = "audit.key"', 'key_env = "AUDIT_KEY"')
        config.write_text(text.replace('admin_client_secret_file = "admin.secret"',
                                       'admin_client_secret_env = "KC_ADMIN"'))
        for name in ("audit.key", "admin.secret"):
            (config.parent / name).unlink()
        held = {"AUDIT_KEY": audit_key, "KC_ADMIN": rig.kc.admin_secret}
        name = f"rotator/config-{secrets.token_hex(4)}"
        rig.aws().create_secret(Name=name, SecretString=json.dumps(held))
        monkeypatch.setattr(aws_lambda, "_CONFIG_SECRETS", {})
        monkeypatch.setenv("ROTATOR_SECRETS_ID", name)
        monkeypatch.setenv("AWS_ENDPOINT_URL", rig.moto.url)
        monkeypatch.delenv("AUDIT_KEY", raising=False)
        monkeypatch.delenv("KC_ADMIN", raising=False)
        token = str(uuid.uuid4())
        rig.step("createSecret", token)
        rig.aws().put_secret_value(SecretId=name, SecretString="{}")  # read once: kept
        for step in STEPS[1:]:
            rig.step(step, token)
        assert rig.value("AWSCURRENT") == rig.kc_current() != rig.old

    def test_not_strings_refused(self, rig_for: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        rig = rig_for()
        name = f"rotator/config-{secrets.token_hex(4)}"
        rig.aws().create_secret(Name=name, SecretString=json.dumps({"AUDIT_KEY": 1}))
        monkeypatch.setattr(aws_lambda, "_CONFIG_SECRETS", {})
        monkeypatch.setenv("ROTATOR_SECRETS_ID", name)
        monkeypatch.setenv("AWS_ENDPOINT_URL", rig.moto.url)
        with pytest.raises(RotationError, match="AUDIT_KEY"):
            rig.step("createSecret", str(uuid.uuid4()))
        assert rig.kc_current() == rig.old


class TestConcurrentCreate:
    """Concurrent createSecret invocations for one token make at most one IdP secret."""

    def test_one_idp_secret(self, rig_for: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        rig = rig_for()
        token = str(uuid.uuid4())
        assert rig.register(token)
        creates: list[str] = []
        met = threading.Barrier(2)  # both invocations have read the labels
        asking = threading.Barrier(2)  # both are about to ask the IdP
        create, current, find = (KeycloakIdp.create_secret, KeycloakIdp.current_secret,
                                 aws_lambda._rotation)

        def wait(barrier: threading.Barrier) -> None:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=60)

        def found(*args: Any) -> Any:
            rotation = find(*args)
            wait(met)
            return rotation

        def read_current(self: KeycloakIdp, client_id: str) -> Any:
            wait(asking)
            return current(self, client_id)

        def counted(self: KeycloakIdp, *args: Any) -> Any:
            creates.append(threading.current_thread().name)
            return create(self, *args)

        errors: list[BaseException] = []

        def invoke() -> None:
            try:
                aws_lambda.handler({"SecretId": rig.arn, "ClientRequestToken": token,
                                    "Step": "createSecret"})
            except Exception as exc:
                errors.append(exc)
            finally:
                asking.abort()  # the other one need not wait for this one any more

        with monkeypatch.context() as m:
            m.setattr(aws_lambda, "_rotation", found)
            m.setattr(KeycloakIdp, "current_secret", read_current)
            m.setattr(KeycloakIdp, "create_secret", counted)
            threads = [threading.Thread(target=invoke, name=f"invocation-{i}")
                       for i in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        rig.remember()
        assert len(creates) == 1, f"{len(creates)} IdP secrets for one token"
        assert all(isinstance(e, RotationError) and "another invocation" in str(e)
                   for e in errors)
        assert rig.works(rig.value("AWSCURRENT")), "AWSCURRENT keeps working"
        assert rig.value("AWSPENDING") == rig.kc_current()
        for step in STEPS[1:]:
            rig.step(step, token)
        assert rig.value("AWSCURRENT") == rig.kc_current()
        assert rig.works(rig.old)


class TestSingleSecretPrevious:
    """With a single-secret IdP finishSecret stops offering the dead old secret as AWSPREVIOUS."""

    @pytest.mark.parametrize("grace", ["0s", "1h"])
    def test_previous_dropped(self, rig_for: Any, grace: str) -> None:
        rig = rig_for(overlap=False, grace=grace)
        token = rig.rotate()
        assert not rig.works(rig.old)
        assert rig.value("AWSPREVIOUS") is None
        assert rig.labels()[token] == ["AWSCURRENT"]
        assert rig.works(rig.value("AWSCURRENT"))


class _Crash(BaseException):
    """The function being killed: nothing in the handler catches it."""


class TestSingleSecretRetry:
    """A createSecret killed after staging promotes the staged secret on its retry."""

    def test_retry_promotes(self, rig_for: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        rig = rig_for(overlap=False)
        token = str(uuid.uuid4())

        def killed(r: object) -> None:
            raise _Crash

        with monkeypatch.context() as m:
            m.setattr(aws_lambda, "_promote", killed)
            with pytest.raises(_Crash):
                rig.step("createSecret", token)
        assert rig.value("AWSPENDING") == rig.kc_current()
        assert rig.value("AWSCURRENT") == rig.old
        rig.step("createSecret", token)
        assert rig.value("AWSCURRENT") == rig.kc_current()
        assert rig.labels()[token] == ["AWSCURRENT"]


class TestRefusals:
    """Secrets not marked for rotation, unknown secrets and bad values are refused."""

    def test_rotation_not_enabled(self, rig_for: Any) -> None:
        rig = rig_for(rotation=False)
        with pytest.raises(RotationError, match="not enabled for rotation"):
            rig.step("createSecret", str(uuid.uuid4()))
        assert rig.kc_current() == rig.old

    def test_unknown_secret(self, rig_for: Any) -> None:
        rig = rig_for()
        other = rig.aws().create_secret(Name=f"apps/{secrets.token_hex(6)}",
                                        SecretString="{}")["ARN"]
        rig.arn = other
        with pytest.raises(RotationError, match="no configured client"):
            rig.step("createSecret", str(uuid.uuid4()))

    def test_not_a_rotation_event(self, rig_for: Any) -> None:
        rig = rig_for()
        with pytest.raises(RotationError, match="not a Secrets Manager rotation event"):
            rig.step("deleteSecret", str(uuid.uuid4()))

    def test_finish_before_test_verifies(self, rig_for: Any) -> None:
        rig = rig_for()
        token, wrong = str(uuid.uuid4()), secrets.token_urlsafe(24)
        rig.seen.add(wrong)
        rig.aws().put_secret_value(
            SecretId=rig.name, ClientRequestToken=token, VersionStages=["AWSPENDING"],
            SecretString=json.dumps({"client_id": rig.client_id, "client_secret": wrong}))
        with pytest.raises(InvalidClient):
            rig.step("finishSecret", token)
        assert rig.value("AWSCURRENT") == rig.old
        assert token not in rig.labels(), "the failed version keeps no label"
        assert rig.kc_current() == rig.old

    def test_wrong_pending_value_fails_test(self, rig_for: Any) -> None:
        rig = rig_for()
        token, wrong = str(uuid.uuid4()), secrets.token_urlsafe(24)
        rig.seen.add(wrong)
        rig.aws().put_secret_value(
            SecretId=rig.name, ClientRequestToken=token, VersionStages=["AWSPENDING"],
            SecretString=json.dumps({"client_id": rig.client_id, "client_secret": wrong}))
        rig.step("createSecret", token)  # a value is there already: nothing to create
        with pytest.raises(InvalidClient):
            rig.step("testSecret", token)
        assert rig.value("AWSCURRENT") == rig.old
        assert rig.kc_current() == rig.old
