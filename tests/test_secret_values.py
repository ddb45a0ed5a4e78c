"""Tests for rotator.secrets.check_secret_value: which client ids and secrets can be stored."""

from __future__ import annotations

import secrets
import string

import pytest

from rotator.secrets import check_secret_value


class TestCheckSecretValue:
    """Printable ASCII without spaces is accepted; anything else is refused with a reason
    that never quotes the value."""

    def test_accepts_every_printable_character(self) -> None:
        printable = "".join(c for c in string.printable if c.isprintable() and c != " ")
        assert check_secret_value(printable) is None
        assert check_secret_value(secrets.token_urlsafe(32)) is None

    @pytest.mark.parametrize("bad", [" ", "\t", "\n", "\r", "\x00", "\x0b", "\x0c", "\x1c",
                                     "\x7f", "\x85", "\u2028", "\u2029", "é", "秘"], ids=repr)
    def test_refuses(self, bad: str) -> None:
        value = f"{secrets.token_urlsafe(12)}{bad}LD_PRELOAD=/tmp/evil.so"
        reason = check_secret_value(value)
        assert reason is not None and "printable ASCII" in reason
        assert value not in reason and "LD_PRELOAD" not in reason

    def test_refuses_empty(self) -> None:
        assert check_secret_value("") == "is empty"
