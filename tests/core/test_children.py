"""``Children.incoming``: what masters and sub-masters read from their children (real CURVE)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from core.children import Children, TreeOptions
from core.protocol import Heartbeat, SlotsUp
from core.transport import Channel, CurveKeys, Poller, new_context


def test_a_bad_frame_from_a_child_is_dropped_and_the_messages_after_it_are_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = CurveKeys.generate()
    node = socket.gethostname()
    tree = TreeOptions(run_id="t", node=node, levels=0, keys=keys, local_tcp=True)
    children = Children(tree, Poller(), tmp_path, [node])
    ctx = new_context()
    child = Channel.connect_dealer(ctx, children.router.endpoint, b"w-0", keys)
    try:
        child.socket.send_multipart([b"not a header", b"junk"])
        child.send(SlotsUp(slots=()))
        child.send(Heartbeat())
        got: list[tuple[bytes, object]] = []
        while len(got) < 2:
            assert children.router.socket.poll(10_000), f"only {got} arrived"
            with caplog.at_level(logging.ERROR, logger="ensemble_mcp.master"):
                got += children.incoming()
        assert got == [(b"w-0", SlotsUp(slots=())), (b"w-0", Heartbeat())]
        assert "dropping a bad message from a child" in caplog.text
    finally:
        child.close()
        ctx.term()
        children.shutdown()
