"""Tests for rotator.secrets: the Secret wrapper, redaction, fingerprints, generation."""

from __future__ import annotations

import base64
import copy
import gc
import json
import pickle
import re
import secrets
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest

from rotator.interfaces import Credentials
from rotator.secrets import (
    Secret,
    _Redactor,
    fingerprint,
    generate_secret,
    redact,
    register_credentials,
)

MASK = "**********"


def _value() -> str:
    return secrets.token_urlsafe(24)


class TestSecretHidesItsValue:
    """Every way of turning a Secret into text shows a mask, never the value."""

    @pytest.mark.parametrize(
        "render",
        [
            pytest.param(repr, id="repr"),
            pytest.param(str, id="str"),
            pytest.param(lambda s: format(s, ""), id="format"),
            pytest.param(lambda s: format(s, ">60"), id="format-spec"),
            pytest.param(lambda s: f"{s}", id="f-string"),
            pytest.param(lambda s: f"{s!r}", id="f-string-repr"),
            pytest.param(lambda s: f"{s!s:^50}", id="f-string-spec"),
            pytest.param(lambda s: "%s" % s, id="percent-s"),  # noqa: UP031
            pytest.param(lambda s: "%r" % s, id="percent-r"),  # noqa: UP031
            pytest.param(lambda s: "{}".format(s), id="str-format"),  # noqa: UP032
            pytest.param(lambda s: repr([s, {"k": s}]), id="in-containers"),
            pytest.param(lambda s: repr(Credentials("client", s)), id="in-dataclass"),
        ],
    )
    def test_rendering_masks_the_value(self, render: object) -> None:
        value = _value()
        text = render(Secret(value))  # type: ignore[operator]
        assert value not in text
        assert MASK in text

    def test_reveal_returns_the_value(self) -> None:
        value = _value()
        assert Secret(value).reveal() == value

    def test_only_strings_are_wrapped(self) -> None:
        with pytest.raises(TypeError):
            Secret(b"bytes")  # type: ignore[arg-type]

    def test_truthiness_follows_the_value(self) -> None:
        assert Secret(_value())
        assert not Secret("")


class TestSecretEquality:
    """Two Secrets are equal when their values are, and a Secret never equals a plain str."""

    def test_same_value_is_equal_and_hashes_alike(self) -> None:
        value = _value()
        a, b = Secret(value), Secret(value)
        assert a == b
        assert hash(a) == hash(b)
        assert len({a, b}) == 1

    def test_different_values_are_not_equal(self) -> None:
        assert Secret(_value()) != Secret(_value())

    def test_a_secret_is_not_equal_to_its_plain_value(self) -> None:
        value = _value()
        assert Secret(value) != value


class TestSecretCannotBeSerialised:
    """Pickling (and the copy protocol built on it) refuses a Secret, so it cannot leak to disk."""

    @pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
    def test_pickle_refuses(self, protocol: int) -> None:
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(Secret(_value()), protocol=protocol)

    def test_pickle_refuses_a_secret_nested_in_credentials(self) -> None:
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(Credentials("client", Secret(_value())))

    def test_copy_refuses(self) -> None:
        with pytest.raises(TypeError):
            copy.copy(Secret(_value()))


class TestRedact:
    """redact() replaces every secret value of 8 or more characters with a mask, wherever it is."""

    def test_scrubs_a_live_value(self) -> None:
        value = _value()
        s = Secret(value)
        assert redact(f"the server said: {value}!") == f"the server said: {MASK}!"
        assert s  # keep the Secret alive until here

    def test_scrubs_every_occurrence_of_several_values(self) -> None:
        v1, v2 = _value(), _value()
        keep = (Secret(v1), Secret(v2))
        out = redact(f"{v1} and {v2} and {v1} again")
        assert v1 not in out
        assert v2 not in out
        assert out.count(MASK) == 3
        assert keep

    def test_longest_value_is_scrubbed_first(self) -> None:
        short = _value()
        long = short + "-and-a-suffix"
        keep = (Secret(short), Secret(long))
        out = redact(f"[{long}]")
        assert out == f"[{MASK}]"
        assert "suffix" not in out
        assert keep

    def test_eight_characters_is_enough_to_be_scrubbed(self) -> None:
        value = secrets.token_hex(16)[:8]
        keep = Secret(value)
        assert redact(f"x{value}x") == f"x{MASK}x"
        assert keep

    def test_a_value_glued_to_other_text_is_scrubbed(self) -> None:
        value = _value()
        keep = Secret(value)
        assert value[:12] not in redact("x" * 190 + value + "y" * 10)
        assert keep

    def test_text_without_secrets_is_unchanged(self) -> None:
        text = "nothing to see here " + secrets.token_hex(8)
        assert redact(text) == text


class TestRedactRemembersValues:
    """A value stays redactable after its Secret is garbage-collected."""

    def test_a_value_no_longer_wrapped_is_still_scrubbed(self) -> None:
        value = _value()
        s = Secret(value)
        assert value not in redact(value)
        del s
        gc.collect()
        assert redact(f"late echo: {value}") == f"late echo: {MASK}"

    def test_dead_values_are_forgotten_oldest_first_past_the_cap(self) -> None:
        redactor = _Redactor(max_forms=4)
        live = Secret(_value())
        redactor.add(live, {live.reveal()})
        dead = [_value() for _ in range(6)]
        for value in dead:
            owner = Secret(value)
            redactor.add(owner, {value})
            del owner
            gc.collect()
        assert redactor.redact(live.reveal()) == MASK
        assert redactor.redact(dead[0]) == dead[0]  # the oldest dead value went first
        assert redactor.redact(dead[-1]) == MASK


class TestShortValues:
    """A value shorter than 8 characters is masked only as a whole word, never inside one."""

    # A redactor of their own: other tests register short values (a config's "x").
    def test_a_short_value_standing_alone_is_masked(self) -> None:
        short = secrets.token_hex(16)[:7]
        keep = Secret(short)
        redactor = _Redactor()
        redactor.add(keep, {short})
        assert redactor.redact(f"id {short} is fine") == f"id {MASK} is fine"
        assert redactor.redact(f"secret={short}&x=1") == f"secret={MASK}&x=1"
        assert redactor.redact(short) == MASK

    def test_a_short_value_inside_a_word_is_left_alone(self) -> None:
        short = secrets.token_hex(16)[:5]
        keep = Secret(short)
        redactor = _Redactor()
        redactor.add(keep, {short})
        text = f"x{short} {short}y a{short}b"
        assert redactor.redact(text) == text

    def test_the_process_redactor_masks_a_short_value(self) -> None:
        short = secrets.token_hex(16)[:7]
        keep = Secret(short)
        assert redact(f"id {short} is fine") == f"id {MASK} is fine"
        assert keep


class TestEncodedForms:
    """A secret is masked in the encodings it travels in: URL, form, JSON, repr and base64."""

    VALUE_TAIL = ' +/%:"\\é&='

    @pytest.mark.parametrize("encode", [
        pytest.param(lambda v: quote(v, safe=""), id="percent"),
        pytest.param(lambda v: quote(v, safe="").lower(), id="percent-lowercase"),
        pytest.param(lambda v: quote_plus(v), id="form-plus-for-space"),
        pytest.param(lambda v: json.dumps(v)[1:-1], id="json"),
        pytest.param(lambda v: json.dumps(json.dumps(v))[1:-1], id="json-in-json"),
        pytest.param(lambda v: json.dumps(v, ensure_ascii=False)[1:-1], id="json-unicode"),
        pytest.param(lambda v: repr(v)[1:-1], id="repr"),
        pytest.param(lambda v: repr(json.dumps(json.dumps(v)).encode())[2:-1],
                     id="bytes-repr-of-json-in-json"),
        pytest.param(lambda v: base64.b64encode(v.encode()).decode(), id="base64"),
        pytest.param(lambda v: base64.urlsafe_b64encode(v.encode()).decode().rstrip("="),
                     id="base64url-unpadded"),
    ])
    def test_encoded_value_is_masked(self, encode: Callable[[str], str]) -> None:
        value = secrets.token_hex(12) + self.VALUE_TAIL
        keep = Secret(value)
        encoded = encode(value)
        out = redact(f"echo: {encoded} (end)")
        assert encoded not in out
        assert MASK in out
        assert keep

    @pytest.mark.parametrize("client_id", ["svc-billing", "svc billing:é"])
    @pytest.mark.parametrize("pair", [
        pytest.param(lambda i, v: f"{i}:{v}", id="raw"),
        pytest.param(lambda i, v: f"{quote(i, safe='')}:{quote(v, safe='')}", id="form-encoded"),
    ])
    def test_basic_header_of_a_registered_pair_is_masked(
        self, client_id: str, pair: Callable[[str, str], str]
    ) -> None:
        value = secrets.token_urlsafe(24) + self.VALUE_TAIL
        secret = Secret(value)
        register_credentials(client_id, secret)
        header = base64.b64encode(pair(client_id, value).encode()).decode()
        out = redact(f"Authorization: Basic {header}")
        assert header[:12] not in out
        assert out == f"Authorization: Basic {MASK}"


class TestRedactionCost:
    """Redaction computes no more digests with 10,000 registered secrets than with 10."""

    @staticmethod
    def _digests_counted(count: int, text_with: Callable[[str], str]) -> int:
        redactor = _Redactor()
        values = [_value() for _ in range(count)]
        keep = [Secret(v) for v in values]
        for s in keep:
            redactor.add(s, {s.reveal()})
        calls = 0
        digest = redactor._digest

        def counting(form: str) -> bytes:
            nonlocal calls
            calls += 1
            return digest(form)

        redactor._digest = counting  # type: ignore[method-assign]
        out = redactor.redact(text_with(values[count // 2]))
        assert values[count // 2] not in out
        return calls

    @pytest.mark.parametrize("text_with", [
        pytest.param(lambda v: "plain words only " * 30, id="no-secret"),
        pytest.param(lambda v: ("padding " * 30) + v + (" tail" * 20), id="one-secret"),
    ])
    def test_digest_count_does_not_grow_with_secrets(
        self, text_with: Callable[[str], str]
    ) -> None:
        assert self._digests_counted(10_000, text_with) == self._digests_counted(10, text_with)
        assert self._digests_counted(10, text_with) <= 1


class TestFingerprint:
    """fingerprint() is a stable keyed HMAC that identifies a value without revealing it."""

    def test_stable_for_the_same_key_and_value(self) -> None:
        key, value = secrets.token_bytes(32), _value()
        assert fingerprint(key, Secret(value)) == fingerprint(key, Secret(value))

    def test_differs_across_keys(self) -> None:
        value = Secret(_value())
        assert fingerprint(secrets.token_bytes(32), value) != fingerprint(
            secrets.token_bytes(32), value
        )

    def test_differs_across_values(self) -> None:
        key = secrets.token_bytes(32)
        assert fingerprint(key, Secret(_value())) != fingerprint(key, Secret(_value()))

    def test_does_not_contain_the_value(self) -> None:
        value = _value()
        fp = fingerprint(secrets.token_bytes(32), Secret(value))
        assert value not in fp
        assert re.fullmatch(r"hmac-sha256:[0-9a-f]{32}", fp)


class TestGenerateSecret:
    """generate_secret() returns distinct URL-safe values carrying at least 256 bits."""

    def test_values_are_distinct(self) -> None:
        values = {generate_secret().reveal() for _ in range(200)}
        assert len(values) == 200

    def test_default_carries_at_least_256_bits(self) -> None:
        value = generate_secret().reveal()
        # URL-safe base64 carries 6 bits per character.
        assert len(value) * 6 >= 256
        assert re.fullmatch(r"[A-Za-z0-9_-]+", value)

    def test_nbytes_sets_the_entropy(self) -> None:
        assert len(generate_secret(64).reveal()) * 6 >= 512

    def test_returns_a_secret(self) -> None:
        assert isinstance(generate_secret(), Secret)


class TestRedactProbes:
    """A form of any length from 8 bytes up is found wherever it starts, in any text."""

    @pytest.mark.parametrize("length", [8, 9, 12, 14, 15, 16, 23, 43])
    def test_a_value_at_every_offset_is_masked(self, length: int) -> None:
        redactor = _Redactor()
        value = secrets.token_hex(32)[:length]
        keep = Secret(value)
        redactor.add(keep, {value})
        for offset in range(17):
            text = "é" * (offset % 3) + "x" * offset + value + "y" * 9
            assert redactor.redact(text) == "é" * (offset % 3) + "x" * offset + MASK + "y" * 9

    def test_a_short_form_narrows_the_probes_and_a_long_one_is_still_found(self) -> None:
        redactor = _Redactor()
        short, long = secrets.token_hex(4), secrets.token_hex(20)
        keep = [Secret(short), Secret(long)]
        for s in keep:
            redactor.add(s, {s.reveal()})
        text = f"a {long}-{short}b and {short}"
        assert redactor.redact(text) == f"a {MASK}-{MASK}b and {MASK}"

    def test_non_ascii_text_around_a_value_survives(self) -> None:
        value = _value()
        keep = Secret(value)
        assert redact(f"żółw {value} 🐢 {value}") == f"żółw {MASK} 🐢 {MASK}"
        assert keep

    def test_forgotten_forms_release_their_probes(self) -> None:
        redactor = _Redactor(max_forms=4)
        for _ in range(50):
            owner = Secret(_value())
            redactor.add(owner, {owner.reveal()})
            del owner
            gc.collect()
        assert len(redactor._forms) <= 4
        assert len(redactor._young.grams) + len(redactor._old.grams) <= 4 * 8

    def test_live_forms_outlast_any_number_of_dead_ones(self) -> None:
        redactor = _Redactor(max_forms=4)
        live = [Secret(_value()) for _ in range(3)]
        for s in live:
            redactor.add(s, {s.reveal()})
        for _ in range(50):
            owner = Secret(_value())
            redactor.add(owner, {owner.reveal()})
            del owner
            gc.collect()
        assert all(redactor.redact(f"x {s.reveal()} y") == f"x {MASK} y" for s in live)
        assert len(redactor._forms) <= 4 + len(live)

    def test_a_value_wrapped_again_is_remembered_anew(self) -> None:
        """A value wrapped again after older ones is as new: it outlasts those."""
        redactor = _Redactor(max_forms=4)
        again = _value()
        first = Secret(again)
        redactor.add(first, {again})
        del first
        for _ in range(2):
            owner = Secret(_value())
            redactor.add(owner, {owner.reveal()})
            del owner
        second = Secret(again)
        redactor.add(second, {again})
        del second
        gc.collect()
        for _ in range(2):
            owner = Secret(_value())
            redactor.add(owner, {owner.reveal()})
            del owner
            gc.collect()
        assert redactor.redact(again) == MASK
