"""The liveness rule, decide(), and the JSON application heartbeat helpers."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests._hypothesis import examples
from wslifecycle.heartbeat import Decision, decide, heartbeat_echo_id, heartbeat_text


def run(
    *,
    now: float = 100.0,
    missed: int = 0,
    last_probe_at: float = 90.0,
    interval: float = 10.0,
    max_missed: int = 2,
    stalled: bool = False,
    active_since_due: bool = False,
) -> Decision:
    """decide() with defaults: a connection due at 100 s, last probed at 90 s."""
    return decide(
        now=now,
        missed=missed,
        last_probe_at=last_probe_at,
        interval=interval,
        max_missed=max_missed,
        stalled=stalled,
        active_since_due=active_since_due,
    )


def test_stall_wins_over_everything() -> None:
    """A late tick never probes or terminates, even with the count at the threshold."""
    assert run(stalled=True) is Decision.STALL
    assert run(stalled=True, missed=5, last_probe_at=0.0) is Decision.STALL
    assert run(stalled=True, active_since_due=True) is Decision.STALL


def test_probe_below_threshold() -> None:
    """Below the threshold and without activity, the connection is probed."""
    assert run(missed=0) is Decision.PROBE
    assert run(missed=1) is Decision.PROBE
    assert run(missed=0, last_probe_at=-math.inf) is Decision.PROBE


def test_timeout_at_threshold_after_a_full_interval() -> None:
    """At max_missed with the last probe a full interval old: terminate."""
    assert run(missed=2, last_probe_at=90.0) is Decision.TIMEOUT
    assert run(missed=3, last_probe_at=50.0) is Decision.TIMEOUT
    assert run(missed=2, last_probe_at=-math.inf) is Decision.TIMEOUT


def test_boundary_now_equal_to_last_probe_plus_interval_times_out() -> None:
    """Exactly one interval after the last probe is a full interval: TIMEOUT, not DEFER."""
    assert run(now=100.0, missed=2, last_probe_at=90.0, interval=10.0) is Decision.TIMEOUT
    assert run(now=99.999, missed=2, last_probe_at=90.0, interval=10.0) is Decision.DEFER


def test_defer_when_the_last_probe_went_out_late() -> None:
    """At the threshold but the last probe is younger than an interval: look again later."""
    assert run(missed=2, last_probe_at=93.0) is Decision.DEFER
    assert run(missed=2, last_probe_at=100.0) is Decision.DEFER


def test_quiet_only_with_activity_and_room_below_threshold() -> None:
    """Activity skips the probe only while missed + 1 stays below max_missed."""
    assert run(active_since_due=True, missed=0, max_missed=2) is Decision.QUIET
    assert run(active_since_due=True, missed=1, max_missed=2) is Decision.PROBE
    assert run(active_since_due=True, missed=0, max_missed=1) is Decision.PROBE
    assert run(active_since_due=True, missed=3, max_missed=5) is Decision.QUIET
    assert run(active_since_due=True, missed=2, last_probe_at=90.0) is Decision.TIMEOUT


def test_heartbeat_text_is_json_with_the_id() -> None:
    """The probe is a compact JSON object of type heartbeat carrying the id."""
    text = heartbeat_text("abc123")
    assert text == '{"type":"heartbeat","id":"abc123"}'
    assert json.loads(text) == {"type": "heartbeat", "id": "abc123"}


def test_heartbeat_text_round_trips_through_echo_id() -> None:
    """The id put in by heartbeat_text comes back out of heartbeat_echo_id."""
    assert heartbeat_echo_id(heartbeat_text("00ff00ff00ff00ff")) == "00ff00ff00ff00ff"


@pytest.mark.parametrize(
    "data",
    [
        b'{"type":"heartbeat","id":"x"}',  # binary messages are never echoes
        '{"type":"chat","text":"hello"}',  # no "heartbeat" at all: not even parsed
        "heartbeat",  # mentions it, but not quoted
        '"heartbeat',  # unterminated
        '{"type":"heartbeat",',  # invalid JSON
        '["heartbeat"]',  # not an object
        '"heartbeat"',  # a JSON string, not an object
        '{"type":"Heartbeat","id":"x","note":"heartbeat"}',  # wrong type
        '{"kind":"heartbeat","id":"x"}',  # no type
        # "heartbeat" spelled with a JSON escape: the text never mentions it,
        # so it is ordinary traffic and is not parsed (an echo comes back as sent).
        '{"type":"heart\\u0062eat","id":"x"}',
    ],
)
def test_non_echoes_give_none(data: str | bytes) -> None:
    """Binary data, other text, invalid JSON, non-objects and other types are not echoes."""
    assert heartbeat_echo_id(data) is None


@pytest.mark.parametrize(
    ("data", "probe_id"),
    [
        ('{"type":"heartbeat","id":"a1"}', "a1"),
        ('{ "id" : "a1" , "type" : "heartbeat" }', "a1"),  # any spacing and key order
        ('{"type":"heartbeat","id":""}', ""),
        ('{"type":"heartbeat"}', ""),  # missing id
        ('{"type":"heartbeat","id":42}', ""),  # non-string id
        ('{"type":"heartbeat","id":null}', ""),
        (' \n\t{"type":"heartbeat","id":"a1"}\n', "a1"),  # whitespace around the object
    ],
)
def test_echoes_give_their_id_or_empty(data: str, probe_id: str) -> None:
    """A heartbeat object is an echo; a missing or non-string id gives ''."""
    assert heartbeat_echo_id(data) == probe_id


def test_deeply_nested_text_is_not_an_echo() -> None:
    """A 10 KB peer message of nested arrays mentioning "heartbeat" is simply not an echo."""
    assert heartbeat_echo_id("[" * 5000 + '"heartbeat"' + "]" * 5000) is None


_SPACE = st.text(alphabet=" \t\r\n", max_size=3)


@settings(max_examples=examples(200))
@given(
    probe_id=st.text(max_size=20),
    extra=st.dictionaries(
        st.text(max_size=5).filter(lambda k: k not in ("type", "id")),
        st.integers() | st.text(max_size=5),
        max_size=3,
    ),
    id_first=st.booleans(),
    before=_SPACE,
    after=_SPACE,
    separators=st.sampled_from([(",", ":"), (", ", ": "), (" , ", " : ")]),
)
def test_any_spelling_of_a_heartbeat_object_is_an_echo_of_its_id(
    probe_id: str,
    extra: dict[str, object],
    id_first: bool,
    before: str,
    after: str,
    separators: tuple[str, str],
) -> None:
    """Any JSON object whose "type" is "heartbeat" is an echo of its string "id",
    whatever its spacing, key order, surrounding whitespace and other members."""
    fields: dict[str, object] = {"id": probe_id, "type": "heartbeat"}
    if not id_first:
        fields = {"type": "heartbeat", "id": probe_id}
    fields.update(extra)
    text = before + json.dumps(fields, separators=separators, ensure_ascii=False) + after
    assert heartbeat_echo_id(text) == probe_id
