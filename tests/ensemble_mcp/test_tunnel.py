"""start_tunnel / stop_tunnel / the tunnel CLI against a real OpenSSH sshd on 127.0.0.1."""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from ensemble_mcp import Tunnel, TunnelError, start_tunnel, stop_tunnel, tunnel_cli

from .sshd import Sshd, free_port, keygen

pytestmark = pytest.mark.ssh
ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 10.0


@pytest.fixture(autouse=True)
def clean_home(home: Path) -> Path:
    """Every test here: a HOME without ~/.ssh and no ssh-agent (conftest's ``home``)."""
    return home


def open_tunnel(sshd: Sshd, remote_port: int, **options: Any) -> Tunnel:
    kwargs: dict[str, Any] = {
        "key_filename": str(sshd.user_key),
        "known_hosts": str(sshd.known_hosts),
        "port": sshd.port,
    }
    kwargs.update(options)
    return start_tunnel(sshd.user, "127.0.0.1", 0, remote_port, **kwargs)


def echo_once(port: int, payload: bytes) -> bytes:
    """Send ``payload``, half-close, and read until the other side closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_bytes_sent_into_the_local_port_come_back_from_the_remote_echo_server(
    sshd: Sshd, echo_port: int
) -> None:
    payload = os.urandom(3 << 20)
    with open_tunnel(sshd, echo_port) as tunnel:
        assert tunnel.local_host == "127.0.0.1"
        assert tunnel.local_port != 0
        assert echo_once(tunnel.local_port, payload) == payload
        assert echo_once(tunnel.local_port, b"x") == b"x"


def test_the_seed_style_stop_tunnel_of_an_unpacked_handle_closes_the_tunnel(
    sshd: Sshd, echo_port: int
) -> None:
    ret = open_tunnel(sshd, echo_port)
    stop_tunnel(*ret)
    assert ret.wait(0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ret.local_port), timeout=WAIT_S)


def test_stop_frees_the_port_at_once_and_leaves_no_thread_or_socket(
    sshd: Sshd, echo_port: int
) -> None:
    stop_tunnel(open_tunnel(sshd, echo_port))  # imports and lazy module state settle first
    threads, fds = set(threading.enumerate()), open_fds()
    tunnel = open_tunnel(sshd, echo_port)
    port = tunnel.local_port
    idle = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    assert echo_once(port, b"ping") == b"ping"
    stop_tunnel(tunnel)
    assert idle.recv(1) == b""  # a connection still open is closed by stop
    idle.close()
    assert set(threading.enumerate()) <= threads  # no thread of the tunnel is left
    assert open_fds() <= fds  # nothing new is left open (an older fd may close meanwhile)
    again = start_tunnel(
        sshd.user,
        "127.0.0.1",
        port,
        echo_port,
        port=sshd.port,
        key_filename=str(sshd.user_key),
        known_hosts=str(sshd.known_hosts),
    )
    with again:
        assert again.local_port == port
        assert echo_once(port, b"same port") == b"same port"


def test_fifty_concurrent_connections_are_all_served(sshd: Sshd, echo_port: int) -> None:
    results: dict[int, bytes] = {}
    start = threading.Barrier(50)

    def client(i: int) -> None:
        start.wait(WAIT_S)
        results[i] = echo_once(tunnel.local_port, b"%d " % i * 2000)

    with open_tunnel(sshd, echo_port) as tunnel:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S * 2)
    assert results == {i: b"%d " % i * 2000 for i in range(50)}


def test_a_changed_host_key_is_refused_with_how_to_remove_the_old_one(
    sshd: Sshd, echo_port: int, tmp_path: Path
) -> None:
    other = keygen(tmp_path / "other_host_key").with_suffix(".pub").read_text().split()
    sshd.known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    with pytest.raises(TunnelError, match="CHANGED") as caught:
        open_tunnel(sshd, echo_port)
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}'" in str(caught.value)
    with pytest.raises(TunnelError, match="CHANGED"):
        open_tunnel(sshd, echo_port, accept_new_host_key=True)


def test_an_unknown_host_key_is_refused_unless_accepting_new_keys_is_asked(
    sshd: Sshd, echo_port: int, clean_home: Path
) -> None:
    with pytest.raises(TunnelError, match="unknown host key") as caught:
        open_tunnel(sshd, echo_port, known_hosts=None)
    assert "accept_new_host_key=True" in str(caught.value)
    assert "ssh-keyscan" in str(caught.value)
    saved = clean_home / ".ssh" / "known_hosts"
    assert not saved.exists()
    with open_tunnel(sshd, echo_port, known_hosts=None, accept_new_host_key=True) as tunnel:
        assert echo_once(tunnel.local_port, b"hi") == b"hi"
    assert saved.read_text() == sshd.host_key_line
    assert saved.stat().st_mode & 0o777 == 0o600
    with open_tunnel(sshd, echo_port, known_hosts=None) as tunnel:  # now pinned
        assert echo_once(tunnel.local_port, b"again") == b"again"


def test_a_key_the_server_does_not_accept_fails_with_an_authentication_error(
    sshd: Sshd, echo_port: int, tmp_path: Path
) -> None:
    stranger = keygen(tmp_path / "stranger")
    with pytest.raises(TunnelError, match="authentication failed") as caught:
        open_tunnel(sshd, echo_port, key_filename=str(stranger))
    assert str(stranger) in str(caught.value)


def test_an_ssh_port_with_nothing_listening_is_reported_unreachable(echo_port: int) -> None:
    with pytest.raises(TunnelError, match=r"unreachable.*Connection refused"):
        start_tunnel("nobody", "127.0.0.1", 0, echo_port, port=free_port(), timeout_s=5)


def test_a_closed_remote_port_is_reported_when_the_tunnel_starts(sshd: Sshd) -> None:
    closed = free_port()
    with pytest.raises(TunnelError, match=f"remote port closed.*localhost:{closed}"):
        open_tunnel(sshd, closed)


def test_a_local_port_in_use_is_reported_with_what_to_do(sshd: Sshd, echo_port: int) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(TunnelError, match=f"local port {port} .*already in use"):
            start_tunnel(
                sshd.user,
                "127.0.0.1",
                port,
                echo_port,
                port=sshd.port,
                key_filename=str(sshd.user_key),
                known_hosts=str(sshd.known_hosts),
            )


def test_arguments_out_of_range_raise_value_error_naming_the_argument() -> None:
    with pytest.raises(ValueError, match=r"remote_port must be an integer in 1\.\.65535"):
        start_tunnel("u", "host", 0, 70000)
    with pytest.raises(ValueError, match="local_port"):
        start_tunnel("u", "host", -1, 80)
    with pytest.raises(ValueError, match="compute_node_host"):
        start_tunnel("u", " ", 0, 80)
    with pytest.raises(TypeError, match="stop_tunnel expects the Tunnel"):
        stop_tunnel(cast(Any, ("server", "thread")))


def test_an_ssh_config_alias_supplies_host_user_port_and_identity_file(
    sshd: Sshd, echo_port: int, clean_home: Path
) -> None:
    ssh_dir = clean_home / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "known_hosts").write_text(sshd.host_key_line)
    (ssh_dir / "config").write_text(
        f"Host compute1\n  HostName 127.0.0.1\n  User {sshd.user}\n  Port {sshd.port}\n"
        f"  IdentityFile {sshd.user_key}\n"
    )
    with start_tunnel(None, "compute1", 0, echo_port) as tunnel:
        assert tunnel.ssh_host == "compute1"
        assert echo_once(tunnel.local_port, b"alias") == b"alias"


def test_a_pty_session_is_held_so_sshd_turns_nagle_off_and_ends_with_the_tunnel(
    sshd: Sshd, echo_port: int
) -> None:
    def has_pty() -> bool:
        for pid in sshd.descendants():
            with contextlib.suppress(OSError):
                if b"@pts/" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return True
        return False

    with open_tunnel(sshd, echo_port):
        # sshd renames its session process a moment after it answers; there is no event to await
        deadline = time.monotonic() + WAIT_S
        while not has_pty() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert has_pty()
        session = []
        for pid in sshd.descendants():
            with contextlib.suppress(ProcessLookupError):  # short-lived shell helpers
                session.append(os.pidfd_open(pid))
    try:
        for exited in session:
            assert select.select([exited], [], [], WAIT_S)[0], "a session outlived the tunnel"
    finally:
        for fd in session:
            os.close(fd)
    with open_tunnel(sshd, echo_port, pty_session=False):
        assert not has_pty()


def test_a_dropped_ssh_connection_is_made_again_for_the_next_client(
    sshd: Sshd, echo_port: int
) -> None:
    with open_tunnel(sshd, echo_port) as tunnel:
        before = socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=WAIT_S)
        before.sendall(b"one")
        assert before.recv(3) == b"one"
        for pid in sshd.connection_pids():
            os.kill(pid, signal.SIGKILL)
        assert before.recv(1) == b""  # the forwarded connection ends with its SSH connection
        before.close()
        assert echo_once(tunnel.local_port, b"two") == b"two"
        assert tunnel.error is None
        assert sshd.log_text().count("Accepted publickey") == 2


def test_the_tunnel_stops_with_an_error_when_reconnecting_fails(sshd: Sshd, echo_port: int) -> None:
    tunnel = open_tunnel(sshd, echo_port)
    try:
        sshd.stop()
        assert tunnel.wait(WAIT_S)
        assert tunnel.error is not None
        assert "reconnecting failed" in str(tunnel.error)
        assert "unreachable" in str(tunnel.error)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=WAIT_S)
    finally:
        tunnel.close()


@pytest.fixture
def cli(sshd: Sshd, echo_port: int) -> Iterator[subprocess.Popen[str]]:
    argv = [
        sys.executable,
        "-m",
        "ensemble_mcp.cli",
        "tunnel",
        f"{sshd.user}@127.0.0.1",
        str(echo_port),
        "--local-port",
        "0",
        "-i",
        str(sshd.user_key),
        "--known-hosts",
        str(sshd.known_hosts),
        "-p",
        str(sshd.port),
    ]
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.communicate(timeout=WAIT_S)


def read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], WAIT_S)
    assert ready, "the CLI printed nothing"
    return proc.stdout.readline()


def test_the_cli_prints_its_port_forwards_and_exits_0_on_sigterm(
    cli: subprocess.Popen[str],
) -> None:
    line = read_line(cli)
    assert line.startswith("forwarding 127.0.0.1:")
    port = int(line.split()[1].rsplit(":", 1)[1])
    assert f"http://127.0.0.1:{port}/mcp" in line
    assert echo_once(port, b"via cli") == b"via cli"
    cli.send_signal(signal.SIGTERM)
    assert cli.wait(WAIT_S) == 0


def test_the_cli_says_the_tunnel_broke_and_exits_1_when_sshd_goes_away(
    cli: subprocess.Popen[str], sshd: Sshd
) -> None:
    assert read_line(cli).startswith("forwarding 127.0.0.1:")
    sshd.stop()
    assert cli.wait(WAIT_S) == 1
    assert cli.stderr is not None
    err = cli.stderr.read()
    assert "ensemble-mcp tunnel: the tunnel broke: " in err
    assert "reconnecting failed" in err


def test_the_cli_reports_a_tunnel_error_and_exits_1(
    sshd: Sshd, echo_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    sshd.known_hosts.write_text("")
    code = tunnel_cli.main(
        [
            f"{sshd.user}@127.0.0.1",
            str(echo_port),
            "-i",
            str(sshd.user_key),
            "--known-hosts",
            str(sshd.known_hosts),
            "-p",
            str(sshd.port),
            "--local-port",
            "0",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "error: unknown host key" in err
    assert "--accept-new-host-key" in err


def test_the_tunnel_command_is_registered_with_its_options() -> None:
    parser = argparse.ArgumentParser()
    tunnel_cli.add_tunnel_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "tunnel",
            "me@login",
            "9276",
            "--local-port",
            "0",
            "-i",
            "k1",
            "-i",
            "k2",
            "-p",
            "2222",
            "--accept-new-host-key",
        ]
    )
    assert args.handler is tunnel_cli.run_tunnel
    assert (args.destination, args.remote_port, args.local_port) == ("me@login", 9276, 0)
    assert (args.key_filename, args.ssh_port) == (["k1", "k2"], 2222)
    assert args.accept_new_host_key
    assert (args.remote_host, args.bind, args.known_hosts) == ("localhost", "127.0.0.1", None)


MCP_SERVER = """
import socket, sys, uvicorn
from mcp.server.mcpserver import MCPServer
server = MCPServer("probe")

@server.tool()
def add(a: int, b: int) -> int:
    \"\"\"Add two integers.\"\"\"
    return a + b

sock = socket.create_server(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
config = uvicorn.Config(server.streamable_http_app(), log_level="warning")
uvicorn.Server(config).run(sockets=[sock])
"""


@pytest.fixture
def mcp_server() -> Iterator[subprocess.Popen[str]]:
    """A one-tool MCP server in its own process; it accepts once it has printed its port."""
    proc = subprocess.Popen([sys.executable, "-c", MCP_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.communicate(timeout=WAIT_S)


async def test_an_mcp_client_calls_a_tool_through_the_tunnel(
    sshd: Sshd, mcp_server: subprocess.Popen[str]
) -> None:
    # Imported here: the MCP client stack loads while the server process starts.
    from examples.agents import client_via_tunnel

    names, result = await client_via_tunnel.call_through_tunnel(
        f"{sshd.user}@127.0.0.1",
        int(read_line(mcp_server)),
        "add",
        {"a": 2, "b": 40},
        key_filename=str(sshd.user_key),
        known_hosts=str(sshd.known_hosts),
        port=sshd.port,
    )
    assert names == ["add"]
    assert not result.is_error
    assert result.structured_content == {"result": 42}
