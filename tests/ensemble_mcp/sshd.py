"""A real OpenSSH sshd on 127.0.0.1 for tests: generated keys, a free port, a clean stop."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = shutil.which("ssh-keygen")
READY_TIMEOUT_S = 10.0


def sshd_missing_reason() -> str | None:
    """Why a real sshd cannot run here, or None when it can."""
    if not SSHD.exists():
        return f"{SSHD} is absent (apt-get install openssh-server)"
    if SSH_KEYGEN is None:
        return "ssh-keygen is not on PATH (apt-get install openssh-client)"
    return None


def keygen(path: Path) -> Path:
    """Write a fresh ed25519 key pair at ``path`` and ``path.pub``; return ``path``."""
    assert SSH_KEYGEN is not None
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        timeout=10,
    )
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sshd:
    """One running sshd that accepts ``user_key`` for the current user and allows TCP forwarding."""

    root: Path
    port: int
    host_key: Path
    user_key: Path
    known_hosts: Path
    process: subprocess.Popen[bytes]
    log: Path
    extra_config: str = field(default="")

    @property
    def user(self) -> str:
        """The login name the test connects as (the current user)."""
        import getpass

        return getpass.getuser()

    @property
    def host_key_line(self) -> str:
        """The ``known_hosts`` line that pins this server's host key."""
        kind, blob = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {blob}\n"

    def connection_pids(self) -> list[int]:
        """Pids of the per-connection sshd children (killing them drops those SSH connections)."""
        return [pid for pid, ppid in _process_parents().items() if ppid == self.process.pid]

    def descendants(self) -> list[int]:
        """Pids of every process below the listener: connection handlers and session commands."""
        parents = _process_parents()
        found: list[int] = []
        frontier = [self.process.pid]
        while frontier:
            children = [pid for pid, ppid in parents.items() if ppid in frontier]
            found += children
            frontier = children
        return found

    def stop(self) -> None:
        """Stop the listener and every process it started; wait for the listener."""
        below = self.descendants()
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        for pid in below:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def log_text(self) -> str:
        """What sshd logged so far (for assertion messages)."""
        return self.log.read_text() if self.log.exists() else ""


def _process_parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def start_sshd(root: Path, extra_config: str = "") -> Sshd:
    """Start sshd under ``root`` on a free port and return once it listens.

    Readiness comes from sshd's own systemd-style ``READY=1`` notification (Debian's sshd sends it);
    a datagram socket stands in for systemd, so no polling is involved.
    """
    root.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    host_key = keygen(root / "host_ed25519")
    user_key = keygen(root / "user_ed25519")
    authorized = root / "authorized_keys"
    authorized.write_text(user_key.with_suffix(".pub").read_text())
    for attempt in range(5):
        port = free_port()
        log = root / f"sshd.{attempt}.log"
        config = root / "sshd_config"
        config.write_text(
            f"ListenAddress 127.0.0.1:{port}\n"
            f"HostKey {host_key}\n"
            f"PidFile {root / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {authorized}\n"
            "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "AllowTcpForwarding yes\nMaxSessions 50\nMaxStartups 100\n"
            "LogLevel INFO\n" + extra_config
        )
        process, ready = _spawn(config, log, root)
        if ready:
            break
        process.wait(timeout=10)
    else:
        raise RuntimeError(f"sshd did not start: {log.read_text() if log.exists() else ''}")
    known_hosts = root / "known_hosts"
    server = Sshd(root, port, host_key, user_key, known_hosts, process, log, extra_config)
    known_hosts.write_text(server.host_key_line)
    return server


def _spawn(config: Path, log: Path, root: Path) -> tuple[subprocess.Popen[bytes], bool]:
    notify_path = root / "notify.sock"
    notify_path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        process = subprocess.Popen(
            [str(SSHD), "-D", "-f", str(config), "-E", str(log)],
            env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        exited = os.pidfd_open(process.pid)
        try:
            readable, _, _ = select.select([notify.fileno(), exited], [], [], READY_TIMEOUT_S)
        finally:
            os.close(exited)
        ready = notify.fileno() in readable and b"READY=1" in notify.recv(4096)
    if ready or (process.poll() is None and _accepts(config)):
        return process, True
    process.kill()
    return process, False


def _accepts(config: Path) -> bool:
    """Fallback for an sshd built without systemd notification: does its port answer?"""
    address = config.read_text().split()[1].rsplit(":", 1)
    try:
        socket.create_connection((address[0], int(address[1])), timeout=1).close()
    except OSError:
        return False
    return True
