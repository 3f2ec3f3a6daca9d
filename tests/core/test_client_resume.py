"""What a client remembers of its channels, frame by frame."""

from __future__ import annotations

import json

import pytest

from wslifecycle.client import Subscriptions


def frame(**body: object) -> str:
    return json.dumps(body, separators=(",", ":"))


def test_a_subscription_made_while_disconnected_goes_out_on_connect() -> None:
    subs = Subscriptions()
    assert subs.subscribe("a") is None
    assert subs.connected() == ['{"type":"subscribe","channel":"a"}']
    assert subs.subscribe("a") is None  # already on this connection
    assert (
        subs.subscribe("b", presence=True) == '{"type":"subscribe","channel":"b","presence":true}'
    )


def test_a_resume_carries_since_and_epoch_and_presence() -> None:
    subs = Subscriptions()
    subs.subscribe("a", presence=True)
    subs.connected()
    subs.read(frame(type="subscribed", channel="a", seq=4, epoch="E"))
    subs.read(frame(type="message", channel="a", seq=5, data=1))
    subs.disconnected()
    assert subs.connected() == [
        '{"type":"subscribe","channel":"a","since":5,"epoch":"E","presence":true}'
    ]


def test_a_duplicate_is_dropped_and_counted() -> None:
    subs = Subscriptions()
    subs.subscribe("a")
    subs.connected()
    subs.read(frame(type="subscribed", channel="a", seq=0, epoch="E"))
    first = subs.read(frame(type="message", channel="a", seq=1, data=1))
    again = subs.read(frame(type="message", channel="a", seq=1, data=1))
    assert first is not None
    assert not first.duplicate
    assert again is not None
    assert again.duplicate
    assert subs.duplicates == 1


def test_a_drift_moves_the_cursor_to_just_before_oldest_in_its_epoch() -> None:
    subs = Subscriptions()
    subs.subscribe("a")
    subs.connected()
    subs.read(frame(type="subscribed", channel="a", seq=10, epoch="E"))
    drift = subs.read(
        frame(type="drift", channel="a", since=10, oldest=3, epoch="F", reason="epoch")
    )
    assert drift is not None
    assert drift.kind == "drift"
    cursor = subs.cursors["a"]
    assert (cursor.seq, cursor.epoch) == (2, "F")
    subs.read(frame(type="drift", channel="a", since=2, reason="odd"))  # no oldest: cursor kept
    assert (cursor.seq, cursor.epoch) == (2, "F")


def test_a_resumed_subscription_keeps_its_own_seq() -> None:
    subs = Subscriptions()
    subs.subscribe("a")
    subs.connected()
    subs.read(frame(type="subscribed", channel="a", seq=7, epoch="E"))
    subs.disconnected()
    subs.connected()
    subs.read(frame(type="subscribed", channel="a", seq=12, epoch="E"))  # replay 8..12 follows
    assert subs.cursors["a"].seq == 7
    subs.read(frame(type="subscribed", channel="a", seq=12))  # no epoch: forgotten
    assert subs.cursors["a"].epoch is None


def test_unsubscribing_forgets_and_says_so_only_when_subscribed() -> None:
    subs = Subscriptions()
    subs.subscribe("a")
    assert subs.unsubscribe("a") is None  # never sent
    assert subs.unsubscribe("zz") is None
    subs.subscribe("a")
    subs.connected()
    assert subs.unsubscribe("a") == '{"type":"unsubscribe","channel":"a"}'
    assert subs.connected() == []


def test_changing_presence_asks_again() -> None:
    subs = Subscriptions()
    subs.subscribe("a")
    subs.connected()
    assert (
        subs.subscribe("a", presence=True) == '{"type":"subscribe","channel":"a","presence":true}'
    )


@pytest.mark.parametrize(
    "data",
    [
        b'{"type":"message"}',
        "plain text",
        '{"type":"message","channel":"a",',
        '{"type":"x"',
        "[1]",
        '{"type":"x"}'[:0] + '{"type":1}',
    ],
)
def test_what_is_not_a_relay_frame_passes_as_it_is(data: str | bytes) -> None:
    assert Subscriptions().read(data) is None


def test_frames_of_other_channels_or_without_a_channel_pass_unchanged() -> None:
    subs = Subscriptions()
    other = subs.read(frame(type="message", channel="zz", seq=1, data=1))
    assert other is not None
    assert other.channel == "zz"
    assert not other.duplicate
    error = subs.read(frame(type="error", reason="x"))
    assert error is not None
    assert error.channel is None
    subs.subscribe("a")
    subs.connected()
    local = subs.read(frame(type="message", channel="a", local=True, data=1))  # unsequenced
    assert local is not None
    assert subs.cursors["a"].seq is None
    assert subs.read('{"type":"message","channel":"a","seq":1,"data":[[[[[') is None


def test_a_channel_is_a_non_empty_string() -> None:
    with pytest.raises(ValueError, match="non-empty str"):
        Subscriptions().subscribe("")


def test_a_type_that_is_not_a_string_is_not_a_relay_frame() -> None:
    assert Subscriptions().read('{"type":"x","type":1}') is None


def test_a_drift_without_oldest_or_a_subscribed_without_epoch_resumes_with_since_only() -> None:
    subs = Subscriptions()
    subs.subscribe("a")
    subs.connected()
    subs.read(frame(type="subscribed", channel="a", seq=3))
    subs.read(frame(type="drift", channel="a", since=3, oldest="x"))
    subs.disconnected()
    assert subs.connected() == ['{"type":"subscribe","channel":"a","since":3}']


def test_other_frames_that_carry_a_seq_move_no_cursor() -> None:
    subs = Subscriptions()
    subs.subscribe("a")
    subs.connected()
    published = subs.read(frame(type="published", channel="a", seq=9, receivers=1))
    assert published is not None
    assert subs.cursors["a"].seq is None
