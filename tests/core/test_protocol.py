"""Wire messages and the authenticated transport."""

from __future__ import annotations

import pickle

import pytest
import zmq

from core.errors import ProtocolError
from core.protocol import (
    PROTOCOL_VERSION,
    Cancel,
    Register,
    ResultItem,
    Results,
    Submit,
    TaskItem,
    decode,
    encode,
)
from core.transport import Channel, CurveKeys, new_context, stop_authenticator


def test_every_message_round_trips() -> None:
    item = TaskItem(7, b"d" * 16, (1, "a"), {"k": 2.5}, None, {"A": "1"}, "/tmp", 3.0)
    result = ResultItem(7, "success", {"x": [1]}, None, "err", 0, None, None, 1.0, 2.0, "n", (0,))
    for message in (
        Register(node="n", pid=1, cpus=(0, 1)),
        Submit(items=[item]),
        Results(items=[result]),
        Cancel(keys=[1, 2]),
    ):
        assert decode(encode(message)) == message


def test_the_header_is_not_pickle_and_a_version_mismatch_is_refused() -> None:
    header, payload = encode(Cancel(keys=[1]))
    assert len(header) == 3
    wrong = bytes([header[0]]) + (PROTOCOL_VERSION + 1).to_bytes(2, "big")
    with pytest.raises(ProtocolError, match="protocol version"):
        decode([wrong, payload])


@pytest.mark.parametrize("frames", [[b"x"], [b"\x00\x00", b""], [b"\xff\x00\x01", b""]])
def test_garbage_frames_raise_protocol_error(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        decode(frames)


def test_a_tcp_router_admits_only_the_childrens_curve_key() -> None:
    keys = CurveKeys.generate()
    stranger_public, stranger_secret = zmq.curve_keypair()
    strangers = CurveKeys(keys.server_public, b"", stranger_public, stranger_secret)
    ctx = new_context()
    router = Channel.bind_router(ctx, "tcp://127.0.0.1:0", keys)
    child = Channel.connect_dealer(ctx, router.endpoint, b"child", keys)
    intruder = Channel.connect_dealer(ctx, router.endpoint, b"intruder", strangers)
    try:
        intruder.send(Cancel(keys=[666]))
        child.send(Cancel(keys=[1]))
        assert router.socket.poll(5000)
        sender, message = router.recv()
        assert (sender, message) == (b"child", Cancel(keys=[1]))
        assert not router.socket.poll(300)  # the intruder's message never arrives
    finally:
        for channel in (child, intruder, router):
            channel.close()
        stop_authenticator(ctx)
        ctx.term()


def test_results_payload_is_plain_pickle_of_fields() -> None:
    _, payload = encode(Cancel(keys=[3]))
    assert pickle.loads(payload) == ([3],)
