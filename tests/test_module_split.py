"""The daemon's service, the Vault store and the journals, split into modules of one
responsibility each: every module stays under the style guide's 500 lines, and what they
offered is unchanged."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import providers.stores
import rotator.daemon
import rotator.journal
from rotator.registry import load_adapter_class

FOLDERS = (Path(rotator.daemon.__file__).parent, Path(providers.stores.__file__).parent,
           Path(rotator.journal.__file__).parent)
#: Modules still past the limit, each split by a change of its own (a split one then fails
#: here as XPASS: take it off this list).
NOT_YET_SPLIT: dict[str, str] = {}

MODULES = [
    pytest.param(module, id=f"{folder.name}/{module.name}",
                 marks=[pytest.mark.xfail(strict=True, reason=NOT_YET_SPLIT[module.name])]
                 if module.name in NOT_YET_SPLIT else [])
    for folder in FOLDERS for module in sorted(folder.glob("*.py"))
]

#: What rotator/daemon/service.py offered as one module of 992 lines.
SERVICE_ALL = ("Service", "due_clients", "history_from_journal", "policy_of", "success_time")
SERVICE_NAMES = ("CONSUMERS_FRESH", "HELD_RETRY", "IDEMPOTENCY_TTL", "MAX_JOBS_KEPT", "Spawn")
SERVICE_METHODS = (
    "client", "clients", "close", "prepare", "readiness", "refresh", "release_facts", "reload",
    "reads_wait_on_journal", "report_consumer", "rotation", "start", "stop", "sweep", "tick",
    "trigger_retirement", "trigger_rotation", "verify",
    "facts_read",  # added after the split: the daemon's process freezes the heap once true
)
#: The private parts tests and the daemon's process reach for.
SERVICE_PRIVATE = ("_journal", "_queue", "_load_deferred", "_run", "_finished", "_claim")
#: What providers/stores/vault.py offered as one module of 664 lines.
VAULT_NAMES = ("REQUIRES", "VaultStore")
VAULT_METHODS = (
    "LOCATION_KEY", "SETTINGS", "check_writable", "close", "discard_pending", "drop_previous",
    "facts", "promote", "read", "read_with_facts", "stage_pending", "start",
    "validate_location", "validate_settings", "write_current",
)

#: What rotator/journal/postgres.py (812 lines) and sqlite.py (564) offered as one module each.
POSTGRES_NAMES = ("SCHEMA_VERSION", "VERIFYING_SSLMODES", "ClientFacts", "PostgresJournal",
                  "describe", "url_problem")
POSTGRES_METHODS = (
    "acquire_lease", "advance", "audit_checkpoints", "begin", "claim_leases", "client_facts",
    "close", "drop_queued", "fenced", "get", "hook_runs", "last_success", "latest", "lock",
    "open_rotation", "pending_rotations", "probe_lock", "queue_rotation", "queued_rotation",
    "record_audit_checkpoint", "record_hook_run", "release_lease", "renew_lease",
    "schema_version", "steps", "unfinished_hook_runs",
)
#: The private parts the crash and HA runners wrap, and the fenced journal calls.
POSTGRES_PRIVATE = ("_advance", "_begin", "_tx", "_checkout", "_checkin", "_migrate")
SQLITE_NAMES = ("SCHEMA_VERSION", "SqliteJournal", "check_lease_args")


class TestModuleSize:
    """Each module of rotator/daemon/, providers/stores/ and rotator/journal/ stays under 500
    lines."""

    @pytest.mark.parametrize("module", MODULES)
    def test_under_500_lines(self, module: Path) -> None:
        assert len(module.read_text().splitlines()) < 500


class TestServiceNames:
    """rotator.daemon.service offers the names, methods and private hooks it did as one
    module."""

    def test_all_is_unchanged(self) -> None:
        module = importlib.import_module("rotator.daemon.service")
        assert sorted(module.__all__) == sorted(SERVICE_ALL)

    def test_each_name_is_importable(self) -> None:
        module = importlib.import_module("rotator.daemon.service")
        for name in SERVICE_ALL + SERVICE_NAMES:
            assert getattr(module, name) is not None, name

    def test_service_methods_are_unchanged(self) -> None:
        from rotator.daemon.service import Service

        public = {n for n in dir(Service) if not n.startswith("_")}
        assert public == set(SERVICE_METHODS)
        for name in SERVICE_PRIVATE:
            assert callable(getattr(Service, name)), name


class TestVaultNames:
    """providers.stores.vault offers VaultStore as it did, and the registry still loads it."""

    def test_each_name_is_importable(self) -> None:
        module = importlib.import_module("providers.stores.vault")
        for name in VAULT_NAMES:
            assert getattr(module, name) is not None, name
        assert module.REQUIRES == ("hvac", "requests")

    def test_store_methods_are_unchanged(self) -> None:
        from providers.stores.vault import VaultStore

        assert {n for n in dir(VaultStore) if not n.startswith("_")} == set(VAULT_METHODS)

    def test_the_registry_loads_it(self) -> None:
        from providers.stores.vault import VaultStore

        assert load_adapter_class("store", "vault") is VaultStore


class TestJournalNames:
    """rotator.journal.postgres and .sqlite offer their journals as they did."""

    def test_postgres_names_are_importable(self) -> None:
        module = importlib.import_module("rotator.journal.postgres")
        for name in POSTGRES_NAMES:
            assert getattr(module, name) is not None, name
        assert module.SCHEMA_VERSION == 4

    def test_postgres_methods_are_unchanged(self) -> None:
        from rotator.journal.postgres import PostgresJournal

        assert {n for n in dir(PostgresJournal) if not n.startswith("_")} \
            == set(POSTGRES_METHODS)
        for name in POSTGRES_PRIVATE:
            assert callable(getattr(PostgresJournal, name)), name

    def test_sqlite_names_are_importable(self) -> None:
        module = importlib.import_module("rotator.journal.sqlite")
        for name in SQLITE_NAMES:
            assert getattr(module, name) is not None, name
        assert module.SCHEMA_VERSION == 4
