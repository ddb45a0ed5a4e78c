"""Bad values in the newer configuration tables: ``[[audit.sinks]]`` (syslog, http),
``[[clients.X.hooks]]``, ``[alerts]`` and the settings of the newer IdP adapters.

Each case is fed to ``rotator config check`` and to ``rotator rotate`` in this process: exit 2,
one line per problem naming the file, the key and the reason, every problem of the file at
once, no traceback, and nothing written (no state directory, no audit log).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from config_env import MINIMAL_CONFIG

from rotator.cli import run

#: MINIMAL_CONFIG with its state directory named.
BASE = '\n[rotator]\nstate_dir = "state"\n' + MINIMAL_CONFIG
HTTP_HOOK = '[[clients.app.hooks]]\nkind = "http"\nkey_env = "HOOK_KEY"\n'
SINK = '[[audit.sinks]]\ntype = "http"\nname = "h"\ntoken_env = "KC"\n'
ALERTS = '[alerts]\nurl_env = "ALERT_URL"\n'
RFC7592 = """[idps.r]
type = "rfc7592"
[clients.r1]
idp = "r"
client_id = "c"
stores = [{store = "local", prefix = "R"}]
registration_token_store = "local"
"""

#: (id, TOML added to BASE, key named, a fragment of the reason)
CASES = [
    ("hook-unknown-key", HTTP_HOOK + 'url = "https://h.example/x"\ncolour = 1\n',
     "clients.app.hooks[0].colour", "unknown key"),
    ("hook-wrong-type", HTTP_HOOK + "url = 5\n", "clients.app.hooks[0].url", "string"),
    ("hook-empty-url", HTTP_HOOK + 'url = ""\n', "clients.app.hooks[0].url", "non-empty"),
    ("hook-cleartext", HTTP_HOOK + 'url = "http://h.example/x"\n',
     "clients.app.hooks[0].url", "allow_insecure_http"),
    ("hook-control-chars", HTTP_HOOK + 'url = "https://h.example/\\r\\nX-Evil: 1"\n',
     "clients.app.hooks[0].url", "control characters"),
    ("hook-huge-timeout",
     HTTP_HOOK + 'url = "https://h.example/x"\ntimeout = 99999999999999999999\n',
     "clients.app.hooks[0].timeout", "at most"),
    ("hook-huge-duration-string",
     HTTP_HOOK + 'url = "https://h.example/x"\nbackoff = "9' + "9" * 40 + 'w"\n',
     "clients.app.hooks[0].backoff", "at most"),
    ("hook-negative-attempts", HTTP_HOOK + 'url = "https://h.example/x"\nattempts = -3\n',
     "clients.app.hooks[0].attempts", "at least 1"),
    ("hook-argv-nul", '[[clients.app.hooks]]\nkind = "command"\nargv = ["/bin/true\\u0000x"]\n',
     "clients.app.hooks[0].argv", "NUL"),
    ("hook-argv-empty", '[[clients.app.hooks]]\nkind = "command"\nargv = []\n',
     "clients.app.hooks[0].argv", "required"),
    ("hook-name-newline", '[[clients.app.hooks]]\nkind = "command"\nname = "a\\nb"\n'
     'argv = ["/bin/true"]\n', "clients.app.hooks[0].name", "letters"),
    ("hook-systemd-option", '[[clients.app.hooks]]\nkind = "systemd"\nunit = "--now"\n',
     "clients.app.hooks[0].unit", "unit name"),
    ("hook-missing-ca", HTTP_HOOK + 'url = "https://h.example/x"\nca_file = "no/ca.pem"\n',
     "clients.app.hooks[0].ca_file", "does not exist"),
    ("alerts-missing-ca", ALERTS + 'ca_file = "no/ca.pem"\n', "alerts.ca_file",
     "does not exist"),
    ("alerts-unknown-key", ALERTS + "extra = true\n", "alerts.extra", "unknown key"),
    ("alerts-format", ALERTS + 'format = "xml"\n', "alerts.format", "one of"),
    ("alerts-inf", ALERTS + "repeat = inf\n", "alerts.repeat", "finite"),
    ("alerts-huge-timeout", ALERTS + "timeout = 99999999999999999999\n", "alerts.timeout",
     "at most"),
    ("alerts-empty-duration", ALERTS + 'check_every = ""\n', "alerts.check_every",
     "duration"),
    ("sink-unknown-key", SINK + 'url = "https://s.example/e"\ncolour = 1\n',
     "audit.sinks[0].colour", "unknown key"),
    ("sink-cleartext", SINK + 'url = "http://s.example/e"\n', "audit.sinks[0].url",
     "allow_insecure_http"),
    ("sink-control-chars", SINK + 'url = "https://s.example/\\u0007"\n',
     "audit.sinks[0].url", "control characters"),
    ("sink-batch", SINK + 'url = "https://s.example/e"\nbatch_size = -1\n',
     "audit.sinks[0].batch_size", "at least 1"),
    ("sink-huge-timeout", SINK + 'url = "https://s.example/e"\ntimeout = "99999999999w"\n',
     "audit.sinks[0].timeout", "at most"),
    ("syslog-port", '[[audit.sinks]]\ntype = "syslog"\nname = "s"\naddress = "127.0.0.1:99999"\n',
     "audit.sinks[0].address", "host:port"),
    ("syslog-empty-name", '[[audit.sinks]]\ntype = "syslog"\nname = ""\n'
     'address = "127.0.0.1:6514"\n', "audit.sinks[0].name", "non-empty"),
    ("glewlwyd-cleartext", '[idps.g]\ntype = "glewlwyd"\nurl = "http://g.example"\n'
     'api_key_env = "KC"\n', "idps.g.url", "allow_insecure_http"),
    ("glewlwyd-negative", '[idps.g]\ntype = "glewlwyd"\nurl = "https://g.example"\n'
     'api_key_env = "KC"\ntimeout = -5\n', "idps.g.timeout", "negative"),
    ("okta-huge-wait", '[idps.o]\ntype = "okta"\nurl = "https://x.okta.com"\napi_token_env = "KC"\n'
     "max_rate_limit_wait = 99999999999999999999\n", "idps.o.max_rate_limit_wait", "at most"),
    ("rfc7592-unknown-table", RFC7592 + 'registration_client_uri = "https://r.example/reg"\n'
     'registration_token_location = "R_REG"\n[idps.r.x]\n', "idps.r.x", "unknown"),
    ("rfc7592-cleartext-uri", RFC7592 + 'registration_client_uri = "http://r.example/reg"\n'
     'registration_token_location = "R_REG"\n', "clients.r1.registration_client_uri",
     "http://"),
    ("rfc7592-empty-location", RFC7592 + 'registration_client_uri = "https://r.example/reg"\n'
     'registration_token_location = ""\n', "clients.r1.registration_token_location",
     "non-empty"),
]
ENV = {"AUDIT_KEY": "a" * 40, "KC": "k" * 24, "HOOK_KEY": "h" * 40,
       "ALERT_URL": "https://alerts.example/x"}


def _check(tmp_path: Path, extra: str, monkeypatch: pytest.MonkeyPatch,
           command: str = "config check") -> tuple[int, str, Path]:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "rotator.toml"
    config.write_text(BASE + extra)
    out, err = io.StringIO(), io.StringIO()
    code = run([*command.split(), "-c", str(config)], out, err)
    return code, out.getvalue() + err.getvalue(), config


def _nothing_written(tmp_path: Path) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rotator.toml"]


class TestEachBadValue:
    """Each bad value is one line naming file, key and reason; exit 2; nothing written."""

    @pytest.mark.parametrize(("extra", "key", "reason"), [c[1:] for c in CASES],
                             ids=[c[0] for c in CASES])
    @pytest.mark.parametrize("command", ["config check", "rotate --all"])
    def test_case(self, extra: str, key: str, reason: str, command: str, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> None:
        code, text, config = _check(tmp_path, extra, monkeypatch, command)
        assert code == 2, text
        assert "Traceback" not in text
        lines = [line for line in text.splitlines() if f": {key}:" in line]
        assert lines, text
        assert str(config.name) in lines[0] and reason in lines[0], lines
        _nothing_written(tmp_path)


class TestAllAtOnce:
    """Every bad value of one file is reported in the same run."""

    def test_all(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        # one table of each kind per file: hooks index from 0 in each case, so rename
        extra, keys, at = "", [], 0
        for _, snippet, key, _reason in CASES:
            if snippet.startswith(("[[clients.app.hooks]]", HTTP_HOOK)):
                extra += snippet
                keys.append(key.replace("hooks[0]", f"hooks[{at}]"))
                at += 1
        code, text, _ = _check(tmp_path, extra, monkeypatch)
        assert code == 2 and "Traceback" not in text
        assert all(f": {key}:" in text for key in keys), text
        _nothing_written(tmp_path)
