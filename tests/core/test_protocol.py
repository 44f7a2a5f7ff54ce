"""Wire messages and the authenticated transport."""

from __future__ import annotations

import pickle

import pytest
import zmq

from core.errors import ProtocolError
from core.protocol import (
    PROTOCOL_VERSION,
    Cancel,
    Done,
    Entry,
    Heartbeat,
    HostPart,
    NodeInfo,
    Outcome,
    Placement,
    Register,
    Results,
    Shutdown,
    SlotInfo,
    SlotsDown,
    SlotsUp,
    Submit,
    TaskItem,
    decode,
    dumps,
    encode,
    item_fields,
)
from core.transport import Channel, CurveKeys, new_context, stop_authenticator


def test_every_message_round_trips() -> None:
    item = dumps(TaskItem(b"d" * 16, (1, "a"), {"k": 2.5}, None, {"A": "1"}, "/tmp", 3.0))
    placement = Placement((HostPart("h1", (0, 1), ("0",)), HostPart("h2", (4, 5))))
    outcome = dumps(Outcome("success", {"x": [1]}, start_time=1.0, end_time=2.0))
    slot = SlotInfo("h1:0", "h1", 0)
    for message in (
        Register(pid=1, slots=(slot,), nodes=(NodeInfo("h1", ("0", "0")),)),
        Submit(entries=[Entry("h1:0", 7, 1, b"d" * 16, placement, item)], functions={b"d": b"f"}),
        Submit(entries=[Entry("h1:0", 8, 2, None, None, item)]),
        Results(done=[Done(7, 1, "success", 1.0, outcome)]),
        Cancel(slot="h1:0", keys=(1, 2), hard=True),
        Shutdown(),
        Heartbeat(),
        SlotsDown(slots=("h1:0",), reason="gone", node_lost=True, running=(7, 1)),
        SlotsUp(slots=(slot,)),
    ):
        assert decode(encode(message)) == message


def test_payloads_travel_untouched_in_one_frame() -> None:
    payloads = [dumps(TaskItem(None, (), {}, ["echo", str(i)], None, None, None)) for i in range(3)]
    entries = [Entry(f"h:{i}", i, 1, None, None, p) for i, p in enumerate(payloads)]
    frames = encode(Submit(entries=entries, functions={b"k": b"blob"}))
    assert len(frames) == 3 and frames[2] == b"".join(payloads) + b"blob"
    decoded = decode(frames)
    assert isinstance(decoded, Submit)
    assert [e.payload for e in decoded.entries] == payloads and decoded.functions == {b"k": b"blob"}


def test_the_header_is_not_pickle_and_a_version_mismatch_is_refused() -> None:
    header, payload = encode(Heartbeat())
    assert len(header) == 3
    wrong = bytes([header[0]]) + (PROTOCOL_VERSION + 1).to_bytes(2, "big")
    with pytest.raises(ProtocolError, match="protocol version"):
        decode([wrong, payload])


@pytest.mark.parametrize(
    "frames",
    [
        [b"x"],
        [b"\x00\x00", b""],
        [b"\xff\x00\x02", b""],
        [b"\x01\x00\x02", pickle.dumps(([("s", 1, 1, None, None, 5)], [])), b"abc"],  # too short
        [b"\x03\x00\x02", b"not pickle"],
    ],
)
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
        intruder.send(Cancel(slot="s", keys=(666,)))
        child.send(Cancel(slot="s", keys=(1,)))
        assert router.socket.poll(5000)
        sender, message = router.recv()
        assert (sender, message) == (b"child", Cancel(slot="s", keys=(1,)))
        assert not router.socket.poll(300)  # the intruder's message never arrives
    finally:
        for channel in (child, intruder, router):
            channel.close()
        stop_authenticator(ctx)
        ctx.term()


def test_control_parts_are_plain_pickle_of_fields() -> None:
    _, control = encode(Cancel(slot="s", keys=(3,)))
    assert pickle.loads(control) == ("s", (3,), False)


def test_item_fields_are_a_task_items_fields_in_order() -> None:
    fields = item_fields(b"d", (1,), {"k": 2}, None, {"A": "1"}, "/w", 3.0, 2, 4, True)
    assert TaskItem.unpack(dumps(fields)) == TaskItem(
        fn=b"d", args=(1,), kwargs={"k": 2}, argv=None, env={"A": "1"}, cwd="/w", timeout=3.0,
        nnodes=2, ppn=4, mpi=True,
    )  # fmt: skip
    assert len(item_fields(None, (), {}, ["x"], None, None, None)) == len(TaskItem._fields)
