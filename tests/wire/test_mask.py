"""Unmasking (RFC 6455 §5.3): the pure-Python function and any injected one
agree with the definition, byte for byte."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests._hypothesis import examples
from tests.wire.helpers import frame
from wslifecycle import Config
from wslifecycle.wire.frames import FrameReader, InboundMessage
from wslifecycle.wire.mask import unmask


def reference(payload: bytes, key: bytes) -> bytes:
    return bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))


@given(payload=st.binary(max_size=3000), key=st.binary(min_size=4, max_size=4))
@settings(max_examples=examples(300))
def test_unmask_is_xor_with_the_repeated_key(payload: bytes, key: bytes) -> None:
    """unmask(payload, key)[i] == payload[i] ^ key[i % 4], short or long."""
    assert unmask(payload, key) == reference(payload, key)


def test_the_speedups_mask_agrees_when_installed() -> None:
    """websockets' C apply_mask (the drivers' accelerator) gives the same bytes."""
    try:
        from websockets.speedups import apply_mask
    except ImportError:  # pragma: no cover - the dev extras install it
        return
    for size in (0, 1, 3, 4, 5, 125, 126, 4096, 65537):
        payload = bytes(range(256)) * (size // 256 + 1)
        assert apply_mask(payload[:size], b"\x01\x80\xfe\x7f") == unmask(
            payload[:size], b"\x01\x80\xfe\x7f"
        )


def test_the_readers_unmask_does_all_unmasking_even_of_a_frame_split_across_reads() -> None:
    """The unmask given to a FrameReader (the drivers pass the C one) unmasks
    every byte of a frame that arrives in pieces too, through wsproto's
    decoder, the key turned by each piece's length."""
    unmasked: list[int] = []

    def counting(payload: bytes, key: bytes) -> bytes:
        unmasked.append(len(payload))
        return unmask(payload, key)

    payload = bytes(range(256)) + b"tail"
    data = frame(0x2, payload)  # 16-bit length: 4 header bytes, then the key
    reader = FrameReader(Config(), [], counting)
    items = [item for at in range(0, len(data), 7) for item in reader.feed(data[at : at + 7])]
    assert items == [InboundMessage(payload)]
    assert sum(unmasked) == len(payload)
