"""The SecretStore contract, run on every store: Vault KV v2 (a real OpenBao), AWS Secrets
Manager (a real moto server) and env files."""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from servers import MotoServer, OpenBao, free_port

from providers.stores.aws_secrets_manager import AwsSecretsManagerStore
from providers.stores.env import EnvStore, parse_env
from providers.stores.vault import VaultStore
from rotator.errors import (
    FencedOut,
    StoreAccessDenied,
    StoreConflict,
    StoreError,
    StoreUnavailable,
)
from rotator.interfaces import Credentials, SecretStore, Stage
from rotator.secrets import Secret, check_secret_value

CLIENT_ID = "svc-billing"

# -- OpenBao: the session server comes from conftest.py (``bao_server``) -----------------------


@pytest.fixture
def short_lived_bao() -> Iterator[OpenBao]:
    """An OpenBao of its own, for tests that seal it."""
    with OpenBao() as server:
        yield server


def api(server: OpenBao, method: str, path: str, json: Any = None, token: str = "") -> Any:
    """Call the OpenBao HTTP API as root (or ``token``); return the JSON body or None."""
    response = httpx.request(
        method,
        f"{server.url}/v1/{path}",
        json=json,
        timeout=10,
        headers={"X-Vault-Token": token or server.root_token},
    )
    response.raise_for_status()
    return response.json() if response.content else None


def token_with_policy(server: OpenBao, name: str, rules: str) -> str:
    api(server, "PUT", f"sys/policy/{name}", {"policy": rules})
    return str(
        api(server, "POST", "auth/token/create", {"policies": [name]})["auth"]["client_token"]
    )


# -- the stores under test ----------------------------------------------------------------


def vault_store(server: OpenBao, **settings: Any) -> VaultStore:
    """A VaultStore with the settings the config loader would hand it."""
    given: dict[str, Any] = {s.key: s.default for s in VaultStore.SETTINGS if not s.secret}
    given.update(url=server.url, token=Secret(server.root_token), timeout=5.0)
    given.update(settings)
    return VaultStore("vault", given)


def aws_store(server: MotoServer, **settings: Any) -> AwsSecretsManagerStore:
    """An AwsSecretsManagerStore on the moto server, signing with the server's made-up keys."""
    given: dict[str, Any] = {s.key: s.default for s in AwsSecretsManagerStore.SETTINGS}
    given.update(region=server.region, endpoint_url=server.url, timeout=5.0)
    given.update(settings)
    session = boto3.Session(aws_access_key_id=server.access_key_id,
                            aws_secret_access_key=server.secret_access_key)
    return AwsSecretsManagerStore("aws", given, session=session)


@pytest.fixture(params=[pytest.param("vault", marks=pytest.mark.server),
                        pytest.param("aws", marks=pytest.mark.server), "env"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[SecretStore, str]]:
    """A started store of each kind and a fresh location in it."""
    adapter: SecretStore
    if request.param == "vault":
        adapter = vault_store(request.getfixturevalue("bao_server"))
        location = f"apps/{secrets.token_hex(6)}"
    elif request.param == "aws":
        adapter = aws_store(request.getfixturevalue("moto_server"))
        location = f"apps/{secrets.token_hex(6)}"
    else:
        adapter = EnvStore("env", {"file": str(tmp_path / "creds.env"), "read_environ": False})
        location = f"APP_{secrets.token_hex(6).upper()}"
    adapter.start()
    yield adapter, location
    adapter.close()


def new_creds(secret: str | None = None) -> Credentials:
    return Credentials(CLIENT_ID, Secret(secret or secrets.token_urlsafe(32)))


def new_rid() -> str:
    return "r-" + secrets.token_hex(13)


def rotate(s: SecretStore, loc: str) -> tuple[Credentials, str]:
    """Stage and promote a fresh credential; return it and its rotation id."""
    creds, rid = new_creds(), new_rid()
    s.stage_pending(loc, creds, rid)
    s.promote(loc, rid)
    return creds, rid


def snapshot(s: SecretStore, loc: str) -> tuple[object, ...]:
    return tuple(s.read(loc, stage) for stage in Stage)


# -- the contract -------------------------------------------------------------------------


class TestProtocol:
    """Every store satisfies SecretStore and names its location key."""

    def test_is_a_secret_store(self, store: tuple[SecretStore, str]) -> None:
        s, _ = store
        assert isinstance(s, SecretStore)
        assert isinstance(getattr(type(s), "LOCATION_KEY", None), str)


class TestEmptyLocation:
    """A location nothing was written to reads as absent at every stage."""

    def test_reads_none(self, store: tuple[SecretStore, str]) -> None:
        s, loc = store
        assert snapshot(s, loc) == (None, None, None)
        facts = s.facts(loc)
        assert not facts.has_current
        assert not facts.has_previous
        assert facts.current_rotation_id is None
        assert facts.pending_rotation_id is None
        assert not facts.has_pending


class TestStagePending:
    """Staging writes PENDING for the rotation and leaves CURRENT as it was."""

    def test_pending_is_readable_and_current_unchanged(
        self, store: tuple[SecretStore, str]
    ) -> None:
        s, loc = store
        old, _ = rotate(s, loc)
        creds, rid = new_creds(), new_rid()
        s.stage_pending(loc, creds, rid)
        pending = s.read(loc, Stage.PENDING)
        assert pending is not None
        assert (pending.credentials, pending.rotation_id, pending.stage) == (
            creds,
            rid,
            Stage.PENDING,
        )
        current = s.read(loc)
        assert current is not None
        assert current.credentials == old

    def test_current_stays_absent(self, store: tuple[SecretStore, str]) -> None:
        s, loc = store
        s.stage_pending(loc, new_creds(), new_rid())
        assert s.read(loc) is None


class TestStageIdempotent:
    """Staging again for the same rotation id succeeds and rewrites the value."""

    def test_restage(self, store: tuple[SecretStore, str]) -> None:
        s, loc = store
        rid, second = new_rid(), new_creds()
        s.stage_pending(loc, new_creds(), rid)
        s.stage_pending(loc, second, rid)
        pending = s.read(loc, Stage.PENDING)
        assert pending is not None
        assert (pending.credentials, pending.rotation_id) == (second, rid)


class TestForeignPending:
    """A pending credential of another rotation blocks staging unless replace_foreign is set."""

    def test_conflict_names_rotation_not_secrets(self, store: tuple[SecretStore, str]) -> None:
        s, loc = store
        theirs, their_rid = new_creds(), new_rid()
        ours, our_rid = new_creds(), new_rid()
        s.stage_pending(loc, theirs, their_rid)
        with pytest.raises(StoreConflict) as caught:
            s.stage_pending(loc, ours, our_rid)
        message = str(caught.value)
        assert their_rid in message
        if isinstance(s, VaultStore | AwsSecretsManagerStore):  # env names only the foreign one
            assert our_rid in message
        assert theirs.client_secret.reveal() not in message
        assert ours.client_secret.reveal() not in message
        pending = s.read(loc, Stage.PENDING)
        assert pending is not None
        assert pending.credentials == theirs

    def test_replace_foreign_abandons_it(self, store: tuple[SecretStore, str]) -> None:
        s, loc = store
        s.stage_pending(loc, new_creds(), new_rid())
        ours, our_rid = new_creds(), new_rid()
        s.stage_pending(loc, ours, our_rid, replace_foreign=True)
        pending = s.read(loc, Stage.PENDING)
        assert pending is not None
        assert (pending.credentials, pending.rotation_id) == (ours, our_rid)


class TestPromote:
    """Promotion makes PENDING current and the old CURRENT previous."""

    def test_first_promotion(self, store: tuple[SecretStore, str]) -> None:
        s, loc = store
        creds, rid = rotate(s, loc)
        current = s.read(loc)
        assert current is not None
        assert (current.credentials, current.rotation_id) == (creds, rid)
        assert current.promoted_at is not None
        assert s.read(loc, Stage.PENDING) is None
        assert s.read(loc, Stage.PREVIOUS) is None

    def test_old_current_becomes_previous(self, store: tuple[SecretStore, str]) -> None:
        s, loc = store
        first, first_rid = rotate(s, loc)
        second, second_rid = rotate(s, loc)
        current, previous = s.read(loc), s.read(loc, Stage.PREVIOUS)
        assert current is not None
        assert previous is not None
        assert (current.credentials, current.rotation_id) == (second, second_rid)
        assert (previous.credentials, previous.rotation_id) == (first, first_rid)
        assert s.read(loc, Stage.PENDING) is None


class TestPromoteTwice:
    """Promoting the same rotation again changes nothing."""

    def test_second_promote_is_a_no_op(self, store: tuple[SecretStore, str]) -> None:
        s, loc = store
        rotate(s, loc)
        _, rid = rotate(s, loc)
        before = snapshot(s, loc)
        s.promote(loc, rid)
        assert snapshot(s, loc) == before


class TestPromoteUnknown:
    """Promoting a rotation that is neither pending nor current raises StoreConflict."""

    def test_unknown_rotation(self, store: tuple[SecretStore, str]) -> None:
        s, loc = store
        rotate(s, loc)
        s.stage_pending(loc, new_creds(), new_rid())
        before = snapshot(s, loc)
        with pytest.raises(StoreConflict):
            s.promote(loc, new_rid())
        assert snapshot(s, loc) == before

    def test_empty_location(self, store: tuple[SecretStore, str]) -> None:
        s, loc = store
        with pytest.raises(StoreConflict):
            s.promote(loc, new_rid())


class TestDiscardPending:
    """Discarding removes that rotation's pending credential, and only that; twice is fine."""

    def test_discard_is_idempotent(self, store: tuple[SecretStore, str]) -> None:
        s, loc = store
        current, _ = rotate(s, loc)
        rid = new_rid()
        s.stage_pending(loc, new_creds(), rid)
        s.discard_pending(loc, rid)
        s.discard_pending(loc, rid)
        assert s.read(loc, Stage.PENDING) is None
        assert s.facts(loc).pending_rotation_id is None
        assert not s.facts(loc).has_pending
        after = s.read(loc)
        assert after is not None
        assert after.credentials == current

    def test_foreign_pending_is_kept(self, store: tuple[SecretStore, str]) -> None:
        s, loc = store
        theirs, their_rid = new_creds(), new_rid()
        s.stage_pending(loc, theirs, their_rid)
        s.discard_pending(loc, new_rid())
        pending = s.read(loc, Stage.PENDING)
        assert pending is not None
        assert pending.credentials == theirs

    def test_nothing_to_discard(self, store: tuple[SecretStore, str]) -> None:
        s, loc = store
        s.discard_pending(loc, new_rid())
        assert snapshot(s, loc) == (None, None, None)


class TestDropPrevious:
    """PREVIOUS is dropped only for the rotation whose promotion made it previous."""

    def test_drop(self, store: tuple[SecretStore, str]) -> None:
        s, loc = store
        _, first_rid = rotate(s, loc)
        current, second_rid = rotate(s, loc)
        s.drop_previous(loc, first_rid)
        assert s.read(loc, Stage.PREVIOUS) is not None
        s.drop_previous(loc, second_rid)
        s.drop_previous(loc, second_rid)
        assert s.read(loc, Stage.PREVIOUS) is None
        assert not s.facts(loc).has_previous
        after = s.read(loc)
        assert after is not None
        assert after.credentials == current

    def test_stale_drop_after_another_rotation(self, store: tuple[SecretStore, str]) -> None:
        s, loc = store
        rotate(s, loc)
        second, second_rid = rotate(s, loc)
        rotate(s, loc)
        s.drop_previous(loc, second_rid)
        previous = s.read(loc, Stage.PREVIOUS)
        assert previous is not None
        assert previous.credentials == second


class TestFacts:
    """Facts report rotation ids and whether PREVIOUS exists, and no secret values."""

    def test_facts(self, store: tuple[SecretStore, str]) -> None:
        s, loc = store
        first, _ = rotate(s, loc)
        second, second_rid = rotate(s, loc)
        staged, staged_rid = new_creds(), new_rid()
        s.stage_pending(loc, staged, staged_rid)
        facts = s.facts(loc)
        assert facts.has_current
        assert facts.has_previous
        assert facts.current_rotation_id == second_rid
        assert facts.pending_rotation_id == staged_rid
        assert facts.has_pending
        assert facts.current_since is not None
        for creds in (first, second, staged):
            assert creds.client_secret.reveal() not in repr(facts)


ODD_VALUES = [
    "a=b==c=",
    "#not-a-comment # nor this",
    "double\"quote and 'single' `back`",
    "  spaces inside and around  ",
    "ünïcødé ✓ 秘密 🔑",
    "back\\slash $HOME ${PATH} \\n",
    "multi\nline\tand\ttabs",
]


class TestRoundTrip:
    """Values come back exactly as written, whatever characters they hold."""

    @pytest.mark.parametrize("value", ODD_VALUES)
    def test_round_trip(self, store: tuple[SecretStore, str], value: str) -> None:
        s, loc = store
        first, first_rid = new_creds(value), new_rid()
        if isinstance(s, EnvStore) and check_secret_value(value) is not None:
            # A line of a file a shell may source holds only printable ASCII without spaces.
            with pytest.raises(StoreError, match="printable ASCII"):
                s.stage_pending(loc, first, first_rid)
            assert s.read(loc, Stage.PENDING) is None
            return
        s.stage_pending(loc, first, first_rid)
        pending = s.read(loc, Stage.PENDING)
        assert pending is not None
        assert pending.credentials.client_secret.reveal() == value
        s.promote(loc, first_rid)
        rotate(s, loc)
        previous = s.read(loc, Stage.PREVIOUS)
        assert previous is not None
        assert previous.credentials.client_secret.reveal() == value


# -- fencing ------------------------------------------------------------------------------


def raw_state(s: SecretStore, loc: str) -> object:
    """Everything a store holds for ``loc``, as its own API shows it: the env file's bytes,
    both KV paths' versions and metadata, the AWS secret's versions, labels and tags."""
    if isinstance(s, EnvStore):
        return s._file.read_bytes() if s._file and s._file.exists() else b""
    if isinstance(s, VaultStore):
        return tuple((s._call("GET", f"{s._mount}/metadata/{path}", "read") or {}).get("data")
                     for path in (loc, loc + ".pending"))
    assert isinstance(s, AwsSecretsManagerStore)
    described = dict(s.client.describe_secret(SecretId=loc))
    return (sorted(described.get("VersionIdsToStages", {}).items()),
            sorted((t["Key"], t["Value"]) for t in described.get("Tags", [])))


def fenced_writes(s: SecretStore, loc: str, rid: str, fence: int) -> list[Any]:
    """Every write of the contract for rotation ``rid``, carrying ``fence``."""
    writes: list[Any] = [
        lambda: s.stage_pending(loc, new_creds(), rid, fence=fence),
        lambda: s.stage_pending(loc, new_creds(), new_rid(), replace_foreign=True, fence=fence),
        lambda: s.promote(loc, rid, fence=fence),
        lambda: s.discard_pending(loc, rid, fence=fence),
        lambda: s.drop_previous(loc, rid, fence=fence),
    ]
    write_current = getattr(s, "write_current", None)
    if write_current is not None:
        writes.append(lambda: write_current(loc, new_creds(), rid, fence=fence))
    return writes


class TestFencedOut:
    """A write carrying a fencing token older than the newest one a location recorded is
    refused with FencedOut (a StoreConflict) and changes nothing."""

    def test_every_write_refused(self, store: tuple[SecretStore, str]) -> None:
        s, loc = store
        rotate(s, loc)  # no fence: a CLI rotation before any daemon
        current, rid = new_creds(), new_rid()
        s.stage_pending(loc, current, rid, fence=7)  # a newer holder took the client over
        before, raw = snapshot(s, loc), raw_state(s, loc)
        for write in fenced_writes(s, loc, rid, 6):
            with pytest.raises(FencedOut, match=r"fencing token 7.*token 6") as caught:
                write()
            assert isinstance(caught.value, StoreConflict)
            assert current.client_secret.reveal() not in str(caught.value)
        assert snapshot(s, loc) == before
        assert raw_state(s, loc) == raw

    def test_stale_holder_cannot_discard_the_newer_holders_pending(
            self, store: tuple[SecretStore, str]) -> None:
        """The woken-daemon case: both holders drive the same rotation id."""
        s, loc = store
        rotate(s, loc)
        rid = new_rid()
        s.stage_pending(loc, new_creds(), rid, fence=1)  # holder 1, then it stalls
        staged = new_creds()
        s.stage_pending(loc, staged, rid, fence=2)  # holder 2 took over and staged again
        with pytest.raises(FencedOut):
            s.discard_pending(loc, rid, fence=1)  # holder 1 wakes up
        pending = s.read(loc, Stage.PENDING)
        assert pending is not None and pending.credentials == staged
        s.promote(loc, rid, fence=2)
        current = s.read(loc)
        assert current is not None and current.credentials == staged


class TestFenceRecorded:
    """Writes carrying the newest token or a newer one go through and record it; a write
    without a fence (the CLI) is not checked and keeps the record."""

    def test_same_newer_and_none(self, store: tuple[SecretStore, str]) -> None:
        s, loc = store
        creds, rid = new_creds(), new_rid()
        s.stage_pending(loc, creds, rid, fence=3)  # a location created by a fenced write
        s.stage_pending(loc, creds, rid, fence=3)
        s.promote(loc, rid, fence=4)
        _, cli_rid = rotate(s, loc)  # no fence
        s.drop_previous(loc, cli_rid)
        with pytest.raises(FencedOut):
            s.stage_pending(loc, new_creds(), new_rid(), fence=3)
        second, second_rid = new_creds(), new_rid()
        s.stage_pending(loc, second, second_rid, fence=4)
        s.promote(loc, second_rid, fence=4)
        current = s.read(loc)
        assert current is not None and current.credentials == second

    def test_record_is_not_in_the_credential(self, store: tuple[SecretStore, str]) -> None:
        s, loc = store
        creds, rid = new_creds(), new_rid()
        s.stage_pending(loc, creds, rid, fence=9)
        s.promote(loc, rid, fence=9)
        if isinstance(s, VaultStore):
            data = s._call("GET", f"{s._mount}/data/{loc}", "read")
            assert data is not None
            assert set(data["data"]["data"]) == {"client_id", "client_secret"}
        elif isinstance(s, AwsSecretsManagerStore):
            value = s.client.get_secret_value(SecretId=loc, VersionStage="AWSCURRENT")[
                "SecretString"]
            assert set(json.loads(value)) == {"client_id", "client_secret"}
        else:  # an env file: the record is a variable beside the rotation id
            assert parse_env(raw_state(s, loc).decode())[f"{loc}_ROTATION_FENCE"] == "9"
        current = s.read(loc)
        assert current is not None and current.credentials == creds


# -- Vault only ---------------------------------------------------------------------------


def _loc() -> str:
    return f"apps/{secrets.token_hex(6)}"


@pytest.mark.server
class TestVaultCheckAndSet:
    """Two writers of one path cannot clobber each other: the late one gets StoreConflict."""

    def test_concurrent_stage(self, bao_server: OpenBao, monkeypatch: pytest.MonkeyPatch) -> None:
        loc, theirs, their_rid = _loc(), new_creds(), new_rid()
        with vault_store(bao_server) as a, vault_store(bao_server) as b:
            write = a._write

            def b_lands_first(path: str, data: dict[str, Any], cas: int) -> int:
                b.stage_pending(loc, theirs, their_rid)
                return write(path, data, cas)

            monkeypatch.setattr(a, "_write", b_lands_first)
            # The first write fails its check-and-set; the look that follows finds b's.
            with pytest.raises(StoreConflict, match=r"check-and-set|pending credential of"):
                a.stage_pending(loc, new_creds(), new_rid())
            pending = b.read(loc, Stage.PENDING)
        assert pending is not None
        assert (pending.credentials, pending.rotation_id) == (theirs, their_rid)

    def test_hand_made_put_during_promote(
        self, bao_server: OpenBao, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        loc = _loc()
        with vault_store(bao_server) as s:
            rotate(s, loc)
            rid = new_rid()
            s.stage_pending(loc, new_creds(), rid)
            write = s._write

            def someone_puts(path: str, data: dict[str, Any], cas: int) -> int:
                by_hand = {"client_id": CLIENT_ID, "client_secret": "by-hand-123"}
                api(bao_server, "POST", f"secret/data/{loc}", {"data": by_hand})
                return write(path, data, cas)

            monkeypatch.setattr(s, "_write", someone_puts)
            with pytest.raises(StoreConflict):
                s.promote(loc, rid)
            current = s.read(loc)
        assert current is not None
        assert current.credentials.client_secret.reveal() == "by-hand-123"
        assert current.rotation_id is None


@pytest.mark.server
class TestVaultFenceWindow:
    """A newer holder's promotion landing between a stale writer's fence check and its data
    write makes that write fail its check-and-set: the newer holder's credential stays."""

    def test_promotion_between_check_and_write(
        self, bao_server: OpenBao, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        loc = _loc()
        with vault_store(bao_server) as a, vault_store(bao_server) as b:
            rotate(a, loc)
            rid, staged = new_rid(), new_creds()
            a.stage_pending(loc, staged, rid, fence=1)
            fenced = a._fenced

            def b_promotes_meanwhile(location: str, main: str, fence: int | None) -> None:
                fenced(location, main, fence)  # A's check passes: B has not written yet
                b.promote(loc, rid, fence=2)  # B took over the same rotation

            monkeypatch.setattr(a, "_fenced", b_promotes_meanwhile)
            with pytest.raises(StoreConflict, match="check-and-set"):
                a.promote(loc, rid, fence=1)
            monkeypatch.undo()
            current = b.read(loc)
            assert current is not None
            assert (current.credentials, current.rotation_id) == (staged, rid)
            with pytest.raises(FencedOut):
                a.promote(loc, rid, fence=1)


@pytest.mark.server
class TestVaultLayout:
    """CURRENT is the latest KV version, other keys survive, and facts sit in custom_metadata."""

    def test_consumer_view(self, bao_server: OpenBao) -> None:
        loc = _loc()
        old = {"client_id": CLIENT_ID, "client_secret": secrets.token_urlsafe(), "db": "pg://x"}
        api(bao_server, "POST", f"secret/data/{loc}", {"data": old})
        with vault_store(bao_server) as s:
            creds, rid = rotate(s, loc)
        latest = api(bao_server, "GET", f"secret/data/{loc}")["data"]
        assert latest["data"] == {
            "client_id": CLIENT_ID,
            "db": "pg://x",
            "client_secret": creds.client_secret.reveal(),
        }
        custom = latest["metadata"]["custom_metadata"]
        assert custom["rotator_rotation_id"] == rid
        assert custom["rotator_current_version"] == "2"
        assert custom["rotator_previous_version"] == "1"
        assert "rotator_previous_rotation_id" not in custom


class _Crash(BaseException):
    """The process dying: nothing in the store catches it."""


def _crash(*args: object) -> None:
    raise _Crash


@pytest.mark.server
class TestVaultPromoteCrash:
    """A promote interrupted between any two of its writes is finished by a retry."""

    @pytest.mark.parametrize("crash_in", ["_set_custom", "_delete"])
    def test_retry_finishes(
        self, bao_server: OpenBao, monkeypatch: pytest.MonkeyPatch, crash_in: str
    ) -> None:
        loc = _loc()
        with vault_store(bao_server) as s:
            first, first_rid = rotate(s, loc)
            second, second_rid = new_creds(), new_rid()
            s.stage_pending(loc, second, second_rid)
            with monkeypatch.context() as m:
                m.setattr(s, crash_in, _crash)
                with pytest.raises(_Crash):
                    s.promote(loc, second_rid)
            s.promote(loc, second_rid)
            current, previous = s.read(loc), s.read(loc, Stage.PREVIOUS)
            assert s.read(loc, Stage.PENDING) is None
        assert current is not None
        assert previous is not None
        assert (current.credentials, current.rotation_id) == (second, second_rid)
        assert (previous.credentials, previous.rotation_id) == (first, first_rid)


@pytest.mark.server
class TestVaultUnavailable:
    """A sealed or unreachable Vault raises StoreUnavailable that says which."""

    def test_sealed(self, short_lived_bao: OpenBao) -> None:
        loc = _loc()
        with vault_store(short_lived_bao) as s:
            api(short_lived_bao, "PUT", "sys/seal")
            with pytest.raises(StoreUnavailable, match="sealed"):
                s.read(loc)
            with pytest.raises(StoreUnavailable, match="sealed"):
                s.check_writable(loc)
        with pytest.raises(StoreUnavailable, match="sealed"):
            vault_store(short_lived_bao).start()

    def test_no_answer(self, bao_server: OpenBao) -> None:
        with socket.socket() as silent:  # accepts connections, never answers
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            url = f"http://127.0.0.1:{silent.getsockname()[1]}"
            with pytest.raises(StoreUnavailable, match=r"unreachable \(no answer within 0.5s"):
                vault_store(bao_server, url=url, timeout=0.5).start()

    def test_unreachable(self, bao_server: OpenBao) -> None:
        unreachable = vault_store(bao_server, url=f"http://127.0.0.1:{free_port()}")
        with pytest.raises(StoreUnavailable, match="unreachable"):
            unreachable.start()


@pytest.mark.server
class TestVaultAccess:
    """A token that may only read is refused writes with StoreAccessDenied naming the gap."""

    def test_read_only_token(self, bao_server: OpenBao) -> None:
        token = token_with_policy(
            bao_server, "rotator-ro", 'path "secret/*" { capabilities = ["read", "list"] }'
        )
        loc = _loc()
        with vault_store(bao_server, token=Secret(token)) as s:
            assert s.read(loc) is None
            with pytest.raises(StoreAccessDenied, match=rf"create.* on secret/data/{loc}"):
                s.check_writable(loc)
            with pytest.raises(StoreAccessDenied, match="permission denied"):
                s.stage_pending(loc, new_creds(), new_rid())

    def test_writer_token_passes_check(self, bao_server: OpenBao) -> None:
        token = token_with_policy(
            bao_server,
            "rotator-rw",
            'path "secret/*" { capabilities = ["create", "read", "update", "delete", "list"] }',
        )
        with vault_store(bao_server, token=Secret(token)) as s:
            s.check_writable(_loc())

    def test_no_token(self, bao_server: OpenBao) -> None:
        settings = {s.key: s.default for s in VaultStore.SETTINGS if not s.secret}
        with pytest.raises(StoreAccessDenied, match="token_env"):
            VaultStore("vault", {**settings, "url": bao_server.url}).start()

    def test_bad_token(self, bao_server: OpenBao) -> None:
        with pytest.raises(StoreAccessDenied):
            vault_store(bao_server, token=Secret(secrets.token_urlsafe())).start()


@pytest.mark.server
class TestVaultAppRole:
    """AppRole login yields a token the store rotates with; a wrong secret id is refused."""

    def test_approle(self, bao_server: OpenBao) -> None:
        mount = f"approle-{secrets.token_hex(4)}"
        api(bao_server, "POST", f"sys/auth/{mount}", {"type": "approle"})
        rules = 'path "secret/*" { capabilities = ["create", "read", "update", "delete"] }'
        api(bao_server, "PUT", "sys/policy/rotator-approle", {"policy": rules})
        role = f"auth/{mount}/role/rotator"
        api(bao_server, "POST", role, {"token_policies": ["rotator-approle"]})
        role_id = api(bao_server, "GET", f"{role}/role-id")["data"]["role_id"]
        secret_id = api(bao_server, "POST", f"{role}/secret-id")["data"]["secret_id"]
        approle = {"auth": "approle", "approle_mount": mount, "role_id": role_id, "token": None}
        loc = _loc()
        with vault_store(bao_server, **approle, secret_id=Secret(secret_id)) as s:
            s.check_writable(loc)
            creds, rid = rotate(s, loc)
            current = s.read(loc)
        assert current is not None
        assert (current.credentials, current.rotation_id) == (creds, rid)
        wrong = vault_store(bao_server, **approle, secret_id=Secret(secrets.token_urlsafe()))
        with pytest.raises(StoreAccessDenied, match=rf"login at auth/{mount}/login refused"):
            wrong.start()


@pytest.mark.server
class TestVaultNamespace:
    """With ``namespace`` set, the store works inside that OpenBao namespace only."""

    def test_namespace(self, bao_server: OpenBao) -> None:
        namespace = f"team-{secrets.token_hex(4)}"
        api(bao_server, "POST", f"sys/namespaces/{namespace}")
        httpx.post(
            f"{bao_server.url}/v1/sys/mounts/kv",
            json={"type": "kv", "options": {"version": "2"}},
            headers={"X-Vault-Token": bao_server.root_token, "X-Vault-Namespace": namespace},
            timeout=10,
        ).raise_for_status()
        loc = _loc()
        with vault_store(bao_server, namespace=namespace, mount="kv") as s:
            s.check_writable(loc)
            creds, _ = rotate(s, loc)
            current = s.read(loc)
        assert current is not None
        assert current.credentials == creds
        assert api(bao_server, "GET", f"{namespace}/kv/data/{loc}")["data"]["data"]["client_id"]
