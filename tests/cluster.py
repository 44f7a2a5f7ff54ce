"""A simulated cluster for tests: several hosts on this machine, built from network namespaces.

Each host is a network namespace ``emcc<N>-<name>`` with the address ``10.200.<N>.<i>`` on a /24
that belongs to this run alone (``N`` is held by a lock under ``/run/ensemble-mcp-cluster``, so two
runs never share a subnet). The hosts are joined by a bridge in its own namespace; nothing is added
to the root namespace, and no address outside the run's own namespaces is touched::

    emcc7-sw:  br0 ── p1 ── p2 ── p3            (the switch)
                      │     │     │  veth pairs
    emcc7-h1: eth0 10.200.7.1   emcc7-h2: ...2   emcc7-h3: ...3

Every host has its own hostname (UTS namespace), its own mount namespace with a private ``/tmp`` and
``/dev/shm`` (tmpfs, as on cluster nodes), ``/etc/hosts`` from ``/etc/netns/<ns>/hosts`` (listing
every host), empty shell start-up files in place of root's (so ssh sessions skip ``~/.bashrc``), and
an OpenSSH sshd on port 22: key authentication only, one host key per host, pinned in a
``known_hosts`` file of explicit names and addresses (paramiko can read it). The hosts' ``~/.ssh``
holds this run's key, ``known_hosts`` and ``config``, as on a cluster where passwordless ssh is set
up: plain ``ssh h2`` and mpiexec's default launchers work there; the rest of the home is shared.

The test process stays outside: :meth:`Cluster.popen` / :meth:`Cluster.run` start a command "on" a
host, inside its namespaces; ``ssh -F cluster.ssh_config h2 ...`` from there reaches another host.
All hosts share this machine's PID space; :meth:`Cluster.pids_on` tells them apart by network
namespace.

Use it as a context manager, or as a pytest fixture made by :func:`cluster_fixture` (module scope by
default: tests of one module share a cluster; a test that breaks hosts builds its own)::

    from tests.cluster import Cluster

    with Cluster(3) as cluster:
        done = cluster.run("h1", [*cluster.ssh_argv("h2"), "hostname"])
        assert done.stdout.strip() == "h2"

Teardown SIGKILLs every process in the hosts' namespaces and removes the namespaces, their
``/etc/netns`` entries and the state directory, also when the body raised. Left on the machine: the
lock directory ``/run/ensemble-mcp-cluster``, iproute2's ``/run/netns`` mount, and an empty
``~/.ssh`` where there was none (the hosts' mount point). A run that was killed
before its teardown leaves objects behind; the next :class:`Cluster` (or ``python -m tests.cluster
down``) removes those whose owner is gone, and only objects of this naming scheme.

Needs root, iproute2, util-linux (unshare, nsenter, mount), OpenSSH client and server;
:func:`unavailable_reason` says what is missing, and the fixture skips with that reason. For
debugging by hand: ``python -m tests.cluster up`` (Ctrl-C tears it down), ``list``, ``down``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import itertools
import os
import pwd
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

STATE_ROOT = Path("/run/ensemble-mcp-cluster")
NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
PREFIX = "emcc"
SUBNET = "10.200.{octet}.0/24"
SSHD = Path("/usr/sbin/sshd")
READY_TIMEOUT_S = 10.0
KILL_TIMEOUT_S = 10.0
REQUIRED_TOOLS = ("ip", "unshare", "nsenter", "mount", "hostname", "sh", "ssh")
SHELL_START_FILES = (".bashrc", ".bash_profile", ".bash_login", ".profile")
HOSTFILE_KINDS = ("pbs", "plain", "openmpi", "mpich")
_HOST_NAME = re.compile(r"^[a-z][a-z0-9]{0,14}$")
_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
)


class ClusterError(RuntimeError):
    """The simulated cluster could not be built, used or removed."""


class ClusterUnavailableError(ClusterError):
    """This machine cannot build the cluster at all (not root, tools missing, no permission)."""


class HostDownError(ClusterError):
    """The host was killed by :meth:`Cluster.kill_host`; nothing can start on it."""


def _which(name: str) -> str | None:
    return shutil.which(name, path=_SEARCH_PATH)


def _tool(name: str) -> str:
    found = _which(name)
    if found is None:
        raise ClusterUnavailableError(f"{name} is not installed")
    return found


def unavailable_reason(euid: int | None = None) -> str | None:
    """Why the cluster cannot be built here, or None when it can.

    Args:
        euid: the effective user id to judge (default: this process's).
    """
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        return (
            f"the simulated cluster needs root (network namespaces, mounts); running as uid {euid}"
        )
    missing = [name for name in REQUIRED_TOOLS if _which(name) is None]
    if not SSHD.is_file():
        missing.append(str(SSHD))
    if missing:
        return (
            "the simulated cluster needs " + ", ".join(missing) + " (packages iproute2, "
            "util-linux, openssh-client, openssh-server)"
        )
    return None


# ----------------------------------------------------------------------------- processes


def _netns_inode(name: str) -> int:
    return os.stat(NETNS_DIR / name).st_ino


def _kept_under_tmp() -> list[str]:
    """This checkout and the Python environment, when they live under /tmp.

    Each host has a /tmp of its own, so these are bound back into it at the same paths.
    """
    root = str(Path(__file__).resolve().parent.parent)
    candidates = sorted({root, os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)})
    kept: list[str] = []
    for path in candidates:
        if (path == "/tmp" or path.startswith("/tmp/")) and not any(
            path.startswith(k + "/") for k in kept
        ):
            kept.append(path)
    return kept


def _processes_in(inodes: set[int]) -> dict[int, int]:
    """Live (not zombie) processes whose network namespace is one of ``inodes``: pid -> inode."""
    found = {}
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            inode = os.stat(f"/proc/{entry.name}/ns/net").st_ino
            if inode not in inodes:
                continue
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                state = stat.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in (b"Z", b"X"):
            found[int(entry.name)] = inode
    return found


def _environ_holds(pid: int, mark: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as env:
            return mark.encode() in env.read().split(b"\0")
    except OSError:
        return False


def _cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmd:
            raw = cmd.read()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def _kill_all_in(inodes: set[int]) -> None:
    """SIGKILL every process in these network namespaces until none is left (bounded)."""
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while pids := _processes_in(inodes):
        if time.monotonic() > deadline:
            raise ClusterError(f"processes survive SIGKILL for {KILL_TIMEOUT_S} s: {sorted(pids)}")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # No event tells when a killed process is gone from /proc; poll briefly.
        time.sleep(0.005)


def _ip(args: Sequence[str], commands: str | None = None) -> None:
    """Run ``ip ARGS`` (with ``-batch -`` reading ``commands``); raise with ip's own words."""
    argv = [_tool("ip"), *args] + (["-batch", "-"] if commands is not None else [])
    done = subprocess.run(argv, input=commands, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        message = f"{shlex.join(argv)} failed: {done.stderr.strip()}"
        if "Operation not permitted" in done.stderr:
            raise ClusterUnavailableError(message)
        raise ClusterError(message)


# ----------------------------------------------------------------------------- subnet locks


@dataclass
class _SubnetLock:
    """flock on ``STATE_ROOT/<octet>.lock``, held while a cluster owns ``10.200.<octet>.0/24``."""

    octet: int
    fd: int

    @property
    def path(self) -> Path:
        return STATE_ROOT / f"{self.octet}.lock"

    @classmethod
    def try_acquire(cls, octet: int) -> _SubnetLock | None:
        """The lock, or None while a live process holds it (the kernel drops it when one dies)."""
        path = STATE_ROOT / f"{octet}.lock"
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return cls(octet, fd)
            os.close(fd)  # its holder unlinked the file before we locked it: take the new one

    def release(self) -> None:
        """Unlink the lock file, then drop the lock (in that order: see ``try_acquire``)."""
        self.path.unlink(missing_ok=True)
        os.close(self.fd)


def _is_held(octet: int) -> bool:
    """Whether a live process holds ``octet``'s lock (probed without taking it over)."""
    try:
        fd = os.open(STATE_ROOT / f"{octet}.lock", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _owner_of(octet: int) -> int | None:
    try:
        return int((STATE_ROOT / f"{octet}.lock").read_text().strip())
    except (OSError, ValueError):
        return None


def _octets_present() -> set[int]:
    """Octets of every object of this naming scheme on the machine: namespaces, files, locks."""
    pattern = re.compile(rf"^{PREFIX}(\d{{1,3}})-")
    octets = set()
    for folder in (NETNS_DIR, ETC_NETNS):
        with contextlib.suppress(FileNotFoundError):
            octets |= {int(m[1]) for name in os.listdir(folder) if (m := pattern.match(name))}
    state = re.compile(r"^(\d{1,3})(\.lock)?$")
    with contextlib.suppress(FileNotFoundError):
        octets |= {int(m[1]) for name in os.listdir(STATE_ROOT) if (m := state.match(name))}
    return octets


def _remove_objects(octet: int) -> list[str]:
    """Remove every object named for ``octet`` (its lock held by the caller); list what went."""
    prefix = f"{PREFIX}{octet}-"
    names = []
    with contextlib.suppress(FileNotFoundError):
        names = sorted(name for name in os.listdir(NETNS_DIR) if name.startswith(prefix))
    inodes = set()
    for name in names:
        with contextlib.suppress(OSError):
            inodes.add(_netns_inode(name))
    _kill_all_in(inodes)
    if names:
        _ip(["-force"], "".join(f"netns del {name}\n" for name in names))
    removed = [f"netns {name}" for name in names]
    for path in [*glob.glob(str(ETC_NETNS / f"{prefix}*")), str(STATE_ROOT / str(octet))]:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    with contextlib.suppress(OSError):
        ETC_NETNS.rmdir()  # only when empty; a concurrent start re-creates it (mkdir parents=True)
    return removed


def remove_stale_clusters() -> list[str]:
    """Remove the objects of clusters whose owning process is gone; live clusters are left alone.

    Returns:
        What was removed, one line per object.
    """
    STATE_ROOT.mkdir(mode=0o700, exist_ok=True)
    removed = []
    for octet in sorted(_octets_present()):
        lock = _SubnetLock.try_acquire(octet)
        if lock is None:
            continue
        try:
            removed += _remove_objects(octet)
        finally:
            lock.release()
    return removed


def _acquire_free_subnet() -> _SubnetLock:
    for octet in range(1, 255):
        lock = _SubnetLock.try_acquire(octet)
        if lock is not None:
            return lock
    raise ClusterError("all 254 subnets 10.200.1-254.0/24 are held by live clusters")


# ----------------------------------------------------------------------------- files


def _write(path: Path, text: str | bytes, mode: int = 0o644) -> Path:
    data = text.encode() if isinstance(text, str) else text
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return path


def _write_key_pair(path: Path, comment: str) -> str:
    """Write a new ed25519 key at ``path`` (0600) and ``path.pub``; return the public part."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    _write(path, private, 0o600)
    _write(path.with_name(path.name + ".pub"), f"{public} {comment}\n")
    return public


# ----------------------------------------------------------------------------- the cluster


@dataclass
class _Host:
    name: str
    address: str
    netns: str
    port: str  # its bridge port in the switch namespace
    netns_inode: int = 0
    sshd: subprocess.Popen[bytes] | None = None
    ns_fds: dict[str, int] = field(
        default_factory=dict
    )  # net/uts/mnt, held open: the host's identity
    down: bool = False


class Cluster:
    """``num_hosts`` simulated hosts with sshds, on a subnet of their own; see the module docstring.

    Attributes:
        hosts: host names, ``["h1", "h2", ...]``; each is a ``hostname`` that resolves everywhere.
        addresses: host name -> IPv4 address.
        subnet: the run's ``10.200.N.0/24``.
        state_dir: keys, configs and logs (under /run, so every host sees it; /tmp is per host).
        ssh_config: a file for ``ssh -F``: the run's user key, ``known_hosts`` checked strictly.
        known_hosts: one line per host, ``h1,10.200.N.1 ssh-ed25519 AAAA...`` (no wildcards).
        user_key: the private key every sshd accepts (``user_key.pub`` next to it).
        ssh_wrapper: an executable ``ssh -F ssh_config "$@"`` (for launchers that want a path).
        startup_s: seconds :meth:`start` took.
    """

    def __init__(self, num_hosts: int = 3, *, name_prefix: str = "h") -> None:
        if num_hosts < 1 or num_hosts > 250:
            raise ValueError(f"num_hosts must be between 1 and 250, got {num_hosts}")
        self.hosts = [f"{name_prefix}{i}" for i in range(1, num_hosts + 1)]
        for name in self.hosts:
            if not _HOST_NAME.match(name):
                raise ValueError(
                    f"name_prefix {name_prefix!r} gives the invalid host name {name!r}"
                )
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.startup_s = 0.0
        self._hosts: dict[str, _Host] = {}
        self._lock: _SubnetLock | None = None
        self._children: list[subprocess.Popen[Any]] = []
        self._hostfiles = itertools.count(1)
        self._closed = False

    # -- lifetime

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> Cluster:
        """Build the namespaces, the bridge and the sshds; return once every sshd accepts.

        Raises:
            ClusterUnavailableError: this machine cannot build it (see :func:`unavailable_reason`).
            ClusterError: a step failed; whatever was built is removed again.
        """
        reason = unavailable_reason()
        if reason is not None:
            raise ClusterUnavailableError(reason)
        began = time.perf_counter()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        remove_stale_clusters()
        self._lock = _acquire_free_subnet()
        try:
            _remove_objects(self._lock.octet)
            self._build(self._lock.octet)
        except BaseException:
            self.close()
            raise
        self.startup_s = time.perf_counter() - began
        return self

    def close(self) -> None:
        """Kill every process on every host; remove namespaces, /etc/netns entries, state; unlock.

        Idempotent. Safe after a failed :meth:`start`.
        """
        if self._closed or self._lock is None:
            self._closed = True
            return
        self._closed = True
        try:
            for fd in (fd for host in self._hosts.values() for fd in host.ns_fds.values()):
                os.close(fd)
            _remove_objects(self._lock.octet)  # kills first, then deletes
            self._reap(wait_s=1.0)
        finally:
            self._lock.release()

    def _reap(self, wait_s: float = 0.0) -> None:
        """Collect the exit status of our children that died (none stays a zombie of ours)."""
        for process in [*self._children, *(h.sshd for h in self._hosts.values() if h.sshd)]:
            if process.poll() is None and wait_s > 0:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=wait_s)
        self._children = [p for p in self._children if p.returncode is None]

    def _build(self, octet: int) -> None:
        self.octet = octet
        self.subnet = SUBNET.format(octet=octet)
        self.state_dir = STATE_ROOT / str(octet)
        self.state_dir.mkdir(mode=0o700)
        switch = f"{PREFIX}{octet}-sw"
        self._switch = switch
        for i, name in enumerate(self.hosts, start=1):
            address = f"10.200.{octet}.{i}"
            self._hosts[name] = _Host(name, address, f"{PREFIX}{octet}-{name}", f"p{i}")
        self.addresses = {h.name: h.address for h in self._hosts.values()}
        self._write_files()
        _ip(
            [],
            f"netns add {switch}\n"
            + "".join(f"netns add {h.netns}\n" for h in self._hosts.values())
            + "".join(
                f"link add eth0 netns {h.netns} type veth peer name {h.port} netns {switch}\n"
                for h in self._hosts.values()
            ),
        )
        for host in self._hosts.values():
            host.netns_inode = _netns_inode(host.netns)
        notify = {name: self._start_sshd(host) for name, host in self._hosts.items()}
        try:
            _ip(
                ["-n", switch],
                "link add br0 type bridge\nlink set br0 up\n"
                + "".join(
                    f"link set {h.port} master br0\nlink set {h.port} up\n"
                    for h in self._hosts.values()
                ),
            )
            self._wait_ready(notify)
        finally:
            for sock in notify.values():
                sock.close()
        for host in self._hosts.values():
            assert host.sshd is not None
            for kind in ("net", "uts", "mnt"):
                path = f"/proc/{host.sshd.pid}/ns/{kind}"
                host.ns_fds[kind] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def _write_files(self) -> None:
        d = self.state_dir
        user_public = _write_key_pair(d / "user_ed25519", f"{PREFIX}{self.octet}-user")
        self.user_key = d / "user_ed25519"
        _write(d / "authorized_keys", user_public + "\n", 0o600)
        known = []
        hosts_lines = "127.0.0.1 localhost\n" + "".join(
            f"{h.address} {h.name}\n" for h in self._hosts.values()
        )
        for host in self._hosts.values():
            public = _write_key_pair(d / f"host_{host.name}_ed25519", f"{host.netns}")
            known.append(f"{host.name},{host.address} {public}\n")
            folder = ETC_NETNS / host.netns
            folder.mkdir(parents=True, exist_ok=True)
            _write(folder / "hosts", hosts_lines)
            _write(d / f"sshd_{host.name}.conf", self._sshd_config(host))
        self.known_hosts = _write(d / "known_hosts", "".join(known))
        self.ssh_config = _write(
            d / "ssh_config",
            "Host *\n"
            f"  User {self.user}\n"
            f"  IdentityFile {self.user_key}\n"
            "  IdentitiesOnly yes\n"
            "  IdentityAgent none\n"
            f"  UserKnownHostsFile {self.known_hosts}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n"
            "  UpdateHostKeys no\n"
            # The default post-quantum exchange costs 80 ms per connection on these CPUs.
            "  KexAlgorithms curve25519-sha256\n"
            "  BatchMode yes\n"
            "  ConnectTimeout 5\n"
            "  ServerAliveInterval 5\n"
            "  ServerAliveCountMax 3\n"
            "  LogLevel ERROR\n",
        )
        dot_ssh = d / "dot_ssh"  # the hosts' ~/.ssh
        dot_ssh.mkdir(mode=0o700)
        for source, target in [
            (self.ssh_config, "config"),
            (self.known_hosts, "known_hosts"),
            (self.user_key, "id_ed25519"),
            (d / "user_ed25519.pub", "id_ed25519.pub"),
        ]:
            _write(dot_ssh / target, source.read_bytes(), 0o600)
        self.ssh_wrapper = _write(
            d / "ssh",
            f'#!/bin/sh\nexec {shlex.join([_tool("ssh"), "-F", str(self.ssh_config)])} "$@"\n',
            0o755,
        )
        _write(d / "empty_shell_rc", "")

    def _sshd_config(self, host: _Host) -> str:
        d = self.state_dir
        return (
            f"ListenAddress {host.address}:22\n"
            f"HostKey {d / f'host_{host.name}_ed25519'}\n"
            "PidFile none\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\n"
            "AuthenticationMethods publickey\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "PermitUserRC no\n"
            "PermitUserEnvironment no\n"
            "X11Forwarding no\n"
            "PrintMotd no\n"
            "PrintLastLog no\n"
            "AllowTcpForwarding yes\n"
            "MaxStartups 200:30:400\n"
            "MaxSessions 200\n"
            "LogLevel INFO\n"
        )

    def _start_sshd(self, host: _Host) -> socket.socket:
        """Start the host's boot shell (hostname, mounts, addresses, then exec sshd); no waiting."""
        d = self.state_dir
        home = Path(pwd.getpwuid(os.geteuid()).pw_dir)  # what sshd uses
        empty = shlex.quote(str(d / "empty_shell_rc"))
        shadows = "".join(
            f"mount --bind {empty} {shlex.quote(str(home / name))}\n"
            for name in SHELL_START_FILES
            if (home / name).is_file()
        )
        (home / ".ssh").mkdir(mode=0o700, exist_ok=True)  # a mount point; stays empty here
        shadows += f"mount --bind {d / 'dot_ssh'} {shlex.quote(str(home / '.ssh'))}\n"
        keep, restore = "", ""  # the checkout and the venv, when they live under /tmp (a CI clone)
        for i, path in enumerate(_kept_under_tmp()):
            spot, where = shlex.quote(str(d / f"keep{i}")), shlex.quote(path)
            keep += f"mkdir -p {spot}\nmount --bind {where} {spot}\n"
            restore += f"mkdir -p {where}\nmount --bind {spot} {where}\n"
        script = (
            "set -e\n"
            f"hostname {host.name}\n"
            f"{keep}"
            f"mount -t tmpfs -o mode=1777 {host.netns}-tmp /tmp\n"
            f"{restore}"
            f"mount -t tmpfs -o mode=1777 {host.netns}-shm /dev/shm\n"
            f"{shadows}"
            "ip -batch - <<EOF\n"
            "link set lo up\n"
            f"addr add {host.address}/24 dev eth0\n"
            "link set eth0 up\n"
            "EOF\n"
            f"exec {SSHD} -D -f {d / f'sshd_{host.name}.conf'} -E {d / f'sshd_{host.name}.log'}\n"
        )
        notify_path = d / f"notify_{host.name}.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        notify.bind(str(notify_path))
        boot = [_tool("ip"), "netns", "exec", host.netns, _tool("unshare"), "--uts", "--mount"]
        boot += ["--", _tool("sh"), "-c", script]
        with open(d / f"boot_{host.name}.log", "wb") as log:
            host.sshd = subprocess.Popen(
                boot,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NOTIFY_SOCKET": str(notify_path)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return notify

    def _wait_ready(self, notify: dict[str, socket.socket]) -> None:
        """Wait for each sshd's ``READY=1`` (Debian's sshd notifies as for systemd) or its exit."""
        exits = {}
        try:
            for name, host in self._hosts.items():
                assert host.sshd is not None
                exits[name] = os.pidfd_open(host.sshd.pid)
            pending = set(self._hosts)
            deadline = time.monotonic() + READY_TIMEOUT_S
            while pending:
                left = deadline - time.monotonic()
                watched = [notify[n].fileno() for n in pending] + [exits[n] for n in pending]
                readable = select.select(watched, [], [], max(left, 0))[0] if left > 0 else []
                if not readable:
                    raise ClusterError(
                        f"sshd on {sorted(pending)} not ready after {READY_TIMEOUT_S} s; "
                        + self._logs(pending)
                    )
                for name in list(pending):
                    if exits[name] in readable:
                        raise ClusterError(f"sshd on {name} exited; " + self._logs([name]))
                    if notify[name].fileno() in readable and b"READY=1" in notify[name].recv(4096):
                        pending.discard(name)
        finally:
            for fd in exits.values():
                os.close(fd)

    def _logs(self, names: Iterable[str]) -> str:
        parts = []
        for name in sorted(names):
            for log in (f"boot_{name}.log", f"sshd_{name}.log"):
                with contextlib.suppress(OSError):
                    parts.append(f"{log}: {(self.state_dir / log).read_text()[-2000:].strip()}")
        return " | ".join(parts)

    # -- running things on hosts

    def _live(self, host: str) -> _Host:
        if self._closed:
            raise ClusterError("the cluster is closed")
        try:
            found = self._hosts[host]
        except KeyError:
            raise ValueError(f"unknown host {host!r}; hosts are {self.hosts}") from None
        if found.down:
            raise HostDownError(f"host {host} was killed")
        return found

    def netns(self, host: str) -> str:
        """The network namespace name of ``host`` (for ``ip -n``)."""
        return self._live(host).netns

    def sshd_pid(self, host: str) -> int:
        """The pid of ``host``'s sshd listener."""
        sshd = self._live(host).sshd
        assert sshd is not None
        return sshd.pid

    def enter_argv(self, host: str, cwd: str | os.PathLike[str] | None = None) -> list[str]:
        """``nsenter ... --`` that runs the rest of an argv on ``host`` (by the sshd's pid).

        Prefer :meth:`popen`, which holds the host's namespaces by file descriptor instead.
        """
        return [
            _tool("nsenter"),
            f"--target={self.sshd_pid(host)}",
            "--net",
            "--uts",
            "--mount",
            f"--wd={self._workdir(cwd)}",
            "--",
        ]

    @staticmethod
    def _workdir(cwd: str | os.PathLike[str] | None) -> str:
        if cwd is not None or any(os.getcwd().startswith(p) for p in _kept_under_tmp()):
            return os.path.abspath(cwd or os.getcwd())
        here = os.getcwd()
        return "/" if here == "/tmp" or here.startswith("/tmp/") else here

    def popen(
        self,
        host: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` on ``host``: its network, hostname and mounts (its own /tmp).

        Args:
            host: a name from :attr:`hosts`.
            argv: the command; found on PATH as usual.
            env: its environment (default: this process's).
            cwd: its working directory, as seen on the host (default: the caller's, or ``/`` when
                that is under /tmp, which is another directory on the host).
            **kwargs: passed to :class:`subprocess.Popen` (stdout, text, start_new_session, ...).

        Raises:
            HostDownError: the host was killed.
        """
        fds = self._live(host).ns_fds
        # Our own descriptors, opened through /proc/<our pid>: the command inherits none of them.
        held = f"/proc/{os.getpid()}/fd"
        prefix = [
            _tool("nsenter"),
            f"--net={held}/{fds['net']}",
            f"--uts={held}/{fds['uts']}",
            f"--mount={held}/{fds['mnt']}",
            f"--wd={self._workdir(cwd)}",
            "--",
        ]
        process = subprocess.Popen(
            [*prefix, *argv], env=None if env is None else dict(env), **kwargs
        )
        self._children.append(process)
        return process

    def run(
        self,
        host: str,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on ``host`` to its end; text stdout and stderr captured.

        The command gets a session of its own; on timeout that whole session is SIGKILLed (with
        mpiexec's local helpers: MPICH's hydra can hang for ever) and TimeoutExpired is raised.
        """
        with self.popen(
            host,
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        ) as process:
            try:
                out, err = process.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                out, err = process.communicate(timeout=10)
                raise subprocess.TimeoutExpired(argv, timeout, out, err) from None
        return subprocess.CompletedProcess(list(argv), process.returncode, out, err)

    def ssh_argv(self, host: str) -> list[str]:
        """``ssh -F <ssh_config> <host>``: append a command; run it from a host (:meth:`run`)."""
        return [_tool("ssh"), "-F", str(self.ssh_config), host]

    def host_key_line(self, host: str) -> str:
        """``host``'s ``known_hosts`` line."""
        self._live(host)
        for line in self.known_hosts.read_text().splitlines():
            if line.split(",", 1)[0] == host:
                return line
        raise AssertionError(f"{host} missing from {self.known_hosts}")

    # -- MPI and allocations

    def mpi_env(
        self, flavour: str, base: Mapping[str, str] | None = None, *, mpi4py: bool = False
    ) -> dict[str, str]:
        """The environment in which ``mpiexec.<flavour>`` launches over this cluster's ssh.

        Args:
            flavour: ``"openmpi"`` (sets ``OMPI_MCA_plm_rsh_agent`` and allows running as root) or
                ``"mpich"`` (sets ``HYDRA_LAUNCHER=ssh`` and ``HYDRA_LAUNCHER_EXEC`` to
                :attr:`ssh_wrapper`).
            base: the environment to extend (default: this process's).
            mpi4py: also make the mpi4py wheel load this flavour's library on every rank
                (``MPI4PY_MPIABI``, forwarded to remote ranks; for MPICH a ``libmpi.so.12`` link
                on ``LD_LIBRARY_PATH``). Without it the wheel picks by ``libmpi.so``, which names
                one flavour only, and under the other the import fails or ranks are singletons.
        """
        env = dict(os.environ if base is None else base)
        if flavour == "openmpi":
            env["OMPI_MCA_plm_rsh_agent"] = f"{_tool('ssh')} -F {self.ssh_config}"
            env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
            env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
            if mpi4py:
                env["MPI4PY_MPIABI"] = "openmpi"
                env["OMPI_MCA_mca_base_env_list"] = "MPI4PY_MPIABI"  # Open MPI forwards only these
        elif flavour == "mpich":
            env["HYDRA_LAUNCHER"] = "ssh"
            env["HYDRA_LAUNCHER_EXEC"] = str(self.ssh_wrapper)
            if mpi4py:  # hydra forwards the whole environment
                env["MPI4PY_MPIABI"] = "mpich"
                paths = [str(self._mpich_abi_dir()), env.get("LD_LIBRARY_PATH", "")]
                env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in paths if p)
        else:
            raise ValueError(f"flavour must be 'openmpi' or 'mpich', got {flavour!r}")
        return env

    def _mpich_abi_dir(self) -> Path:
        folder = self.state_dir / "mpich_abi"
        if not folder.is_dir():
            found = sorted(glob.glob("/usr/lib/*/libmpich.so.12"))
            if not found:
                raise ClusterError(
                    "libmpich.so.12 not found under /usr/lib (apt-get install mpich)"
                )
            folder.mkdir()
            (folder / "libmpi.so.12").symlink_to(found[0])
        return folder

    def hostfile(
        self, kind: str = "pbs", *, slots: int = 1, hosts: Sequence[str] | None = None
    ) -> Path:
        """Write a host list and return its path (in :attr:`state_dir`, visible on every host).

        Args:
            kind: ``"pbs"`` (a ``PBS_NODEFILE``, one line per slot), ``"plain"`` (a name a line),
                ``"openmpi"`` (``h1 slots=N``) or ``"mpich"`` (``h1:N``).
            slots: slots per host.
            hosts: which hosts (default: all).
        """
        names = list(self.hosts if hosts is None else hosts)
        for name in names:
            self._netns_inode_of(name)  # known host (a killed one may be listed)
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        lines = {
            "pbs": [name for name in names for _ in range(slots)],
            "plain": names,
            "openmpi": [f"{name} slots={slots}" for name in names],
            "mpich": [f"{name}:{slots}" for name in names],
        }.get(kind)
        if lines is None:
            raise ValueError(f"kind must be one of {HOSTFILE_KINDS}, got {kind!r}")
        path = self.state_dir / f"hostfile-{next(self._hostfiles)}.{kind}"
        return _write(path, "".join(f"{line}\n" for line in lines))

    # -- looking at and breaking hosts

    def pids_on(self, host: str, mark: str | None = None) -> list[int]:
        """Pids of live processes on ``host`` (also after :meth:`kill_host`: then none).

        Args:
            host: a name from :attr:`hosts`.
            mark: only those whose environment holds this ``NAME=value``.
        """
        inode = self._netns_inode_of(host)
        pids = sorted(_processes_in({inode}))
        return [pid for pid in pids if mark is None or _environ_holds(pid, mark)]

    def cmdlines(self, host: str) -> dict[int, list[str]]:
        """Argv of every live process on ``host``, by pid (for "no secret in any argv" checks)."""
        found = {}
        for pid in self.pids_on(host):
            argv = _cmdline(pid)
            if argv is not None:
                found[pid] = argv
        return found

    def _netns_inode_of(self, host: str) -> int:
        if self._closed:
            raise ClusterError("the cluster is closed")
        if host not in self._hosts:
            raise ValueError(f"unknown host {host!r}; hosts are {self.hosts}")
        return self._hosts[host].netns_inode

    def kill_host(self, host: str, *, cut_network: bool = True) -> None:
        """Lose a whole node: SIGKILL its sshd and every process on it.

        Args:
            host: a name from :attr:`hosts`.
            cut_network: first take its link down, so that its peers hear nothing (no FIN, no RST),
                as when a node crashes: connections to it hang until a timeout (ssh clients give
                up after 15-20 s, ``ServerAliveInterval 5`` x 3). False lets the kernel close its
                sockets, as when only the processes die: peers see the ends at once.
        """
        live = self._live(host)
        if cut_network:
            _ip(["-n", self._switch, "link", "set", live.port, "down"])
        live.down = True
        _kill_all_in({live.netns_inode})
        for fd in live.ns_fds.values():
            os.close(fd)
        live.ns_fds.clear()
        if live.sshd is not None:
            live.sshd.wait(timeout=5)
        self._reap()


def skip_if_unavailable() -> None:
    """Skip the calling test, with the reason, where no cluster can be built here."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def cluster_fixture(
    scope: Literal["session", "package", "module", "class", "function"] = "module",
    num_hosts: int = 3,
    name: str = "cluster",
) -> Any:
    """A pytest fixture giving a started :class:`Cluster`; skips, saying why, where none can run.

    Use at module level: ``cluster = cluster_fixture()``. Module scope (the default) shares one
    cluster among a module's tests; a test that kills hosts should build its own ``Cluster``.
    """

    @pytest.fixture(scope=scope, name=name)
    def _cluster() -> Iterator[Cluster]:
        skip_if_unavailable()
        try:
            built = Cluster(num_hosts).start()
        except ClusterUnavailableError as error:
            pytest.skip(str(error))
        try:
            yield built
        finally:
            built.close()

    return _cluster


# ----------------------------------------------------------------------------- CLI


def _up(num_hosts: int) -> int:
    with Cluster(num_hosts) as cluster:
        print(
            f"cluster {cluster.subnet} up in {cluster.startup_s:.2f} s (held by pid {os.getpid()})"
        )
        for host in cluster.hosts:
            enter = shlex.join([*cluster.enter_argv(host, "/"), "bash"])
            print(f"  {host} {cluster.addresses[host]:<15} enter: {enter}")
        print(f"from a host:   ssh -F {cluster.ssh_config} {cluster.hosts[-1]} hostname")
        openmpi, mpich = cluster.mpi_env("openmpi", {}), cluster.mpi_env("mpich", {})
        print("Open MPI env:  " + " ".join(f"{k}={shlex.quote(v)}" for k, v in openmpi.items()))
        print("MPICH env:     " + " ".join(f"{k}={shlex.quote(v)}" for k, v in mpich.items()))
        print(f"PBS_NODEFILE:  {cluster.hostfile('pbs')}")
        print("Ctrl-C (or SIGTERM) here tears it down.", flush=True)
        stops = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        got = signal.sigwait(stops)
        print(f"{signal.Signals(got).name}: tearing down")
    return 0


def _list() -> int:
    octets = sorted(_octets_present())
    for octet in octets:
        state = "live" if _is_held(octet) else "stale"
        print(f"{SUBNET.format(octet=octet)}  owner pid {_owner_of(octet)}  {state}")
    if not octets:
        print("no cluster")
    return 0


def _down() -> int:
    removed = remove_stale_clusters()
    print("\n".join(removed) if removed else "nothing stale to remove")
    live = _octets_present()
    if live:
        print(f"still live (stop their owners): {[SUBNET.format(octet=o) for o in sorted(live)]}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.cluster up [-n N] | list | down``."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster", description="A simulated cluster for tests, by hand."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="build a cluster and keep it until Ctrl-C")
    up.add_argument("-n", "--hosts", type=int, default=3, help="number of hosts (default 3)")
    commands.add_parser("list", help="list clusters on this machine")
    commands.add_parser("down", help="remove clusters whose owner is gone")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason is not None:
        parser.exit(2, f"cannot: {reason}\n")
    if args.command == "up":
        return _up(args.hosts)
    return _list() if args.command == "list" else _down()


if __name__ == "__main__":
    raise SystemExit(main())
