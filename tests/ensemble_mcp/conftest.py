"""Fixtures for tests that need a real OpenSSH server and something to forward to, or a HOME."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .sshd import Sshd, sshd_missing_reason, start_sshd


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HOME (where jobs write ~/.ensemble-mcp/jobs), without ssh-agent."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return path


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    """A real sshd on 127.0.0.1 that accepts ``sshd.user_key`` and allows TCP forwarding."""
    if reason := sshd_missing_reason():
        pytest.skip(reason)
    server = start_sshd(tmp_path / "sshd")
    try:
        yield server
    finally:
        server.stop()


ECHO_SERVER = """
import asyncio

async def echo(reader, writer):
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()

async def main():
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


@pytest.fixture
def echo_port() -> Iterator[int]:
    """Port of a TCP echo server on 127.0.0.1, in a process of its own.

    Its own process, so that its sockets are never counted as this process's (a test that checks
    the tunnel leaves no fd open would otherwise see the echo side of a connection still closing).
    """
    proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f"the echo server did not start: {line!r}"
        yield int(line)
    finally:
        proc.kill()
        proc.wait()
