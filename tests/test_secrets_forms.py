"""The redactor's shortcut for values of unreserved characters registers the same forms."""

from __future__ import annotations

import random
import re
import string

from rotator import secrets as rs

UNRESERVED = string.ascii_letters + string.digits + "._~-"


def _general(value: str) -> set[str]:
    """The forms by the general rule, the shortcut bypassed."""
    real = rs._UNRESERVED
    try:
        rs._UNRESERVED = re.compile(r"(?!)")  # matches nothing
        return rs._encodings(value)
    finally:
        rs._UNRESERVED = real


class TestUnreservedShortcut:
    """For a value of unreserved characters only, the shortcut yields exactly the forms the
    general rule does; any other character takes the general rule."""

    def test_same_forms_as_the_general_rule(self) -> None:
        rng = random.Random(7)
        values = ["", "a", "~", "a.b-c_d~e", "eyJhbGciOiJI.eyJzdWIiOiIx.c2lnbmF0dXJl"]
        values += ["".join(rng.choices(UNRESERVED, k=rng.randint(1, 64))) for _ in range(300)]
        for value in values:
            assert rs._encodings(value) == _general(value), value

    def test_other_characters_take_the_general_rule(self) -> None:
        for value in ("a+b/c=", "a b", 'q"uote', "back\\slash", "ünï", "per%cent"):
            assert not rs._UNRESERVED.fullmatch(value)
            assert len(rs._encodings(value)) > len({value} | rs._base64_forms(value))
