"""The tunnel's SSH connection: apply ``~/.ssh/config``, verify the host key, log in, tune it."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko

from ensemble_mcp.errors import TunnelError

__all__ = (
    "BROKEN",
    "SshConnection",
    "Target",
    "TunnelError",
    "channel_error",
    "probe",
    "resolve_target",
)

# One logger for the whole tunnel, as before the split, so logging settings keep applying.
logger = logging.getLogger("ensemble_mcp.tunnel")

BROKEN = (OSError, EOFError, paramiko.SSHException)
"""What paramiko raises when the connection or a channel breaks."""
_READ_AHEAD_SIZE = 256 * 1024
# AES-GCM needs no separate HMAC per packet: about a quarter less CPU in paramiko than aes-ctr.
_FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
_PTY_COMMAND = "exec sleep 2147483647"
_KNOWN_HOSTS = "~/.ssh/known_hosts"
_GLOBAL_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")
_SSH_CONFIG = "~/.ssh/config"


@dataclass(frozen=True)
class Target:
    """Where and how to log in, after ``~/.ssh/config`` has been applied."""

    alias: str
    host: str
    port: int
    user: str
    key_files: tuple[str, ...]
    known_hosts: tuple[Path, ...]
    accept_new_host_key: bool
    timeout_s: float
    keepalive_s: float
    pty_session: bool

    @property
    def key_name(self) -> str:
        """The name this host has in known_hosts."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @property
    def where(self) -> str:
        """``user@host:port``, for messages."""
        return f"{self.user}@{self.host}:{self.port}"


class _UnknownHostKeyError(paramiko.SSHException):  # type: ignore[misc]
    def __init__(self, name: str, key: paramiko.PKey) -> None:
        super().__init__(name)
        self.key = key


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """Refuse unknown host keys, or with ``save_to`` accept and save them (OpenSSH accept-new)."""

    def __init__(self, save_to: Path | None) -> None:
        self.save_to = save_to

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        if self.save_to is None:
            raise _UnknownHostKeyError(hostname, key)
        self.save_to.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.save_to, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)
        logger.warning(
            "accepted new host key for %s (%s), saved to %s",
            hostname,
            key.fingerprint,
            self.save_to,
        )


class SshConnection:
    """One authenticated SSH connection, tuned for forwarding."""

    def __init__(
        self,
        client: paramiko.SSHClient,
        transport: paramiko.Transport,
        session: paramiko.Channel | None,
    ) -> None:
        self.client = client
        self.transport = transport
        self.session = session  # paramiko closes a channel once nothing refers to it

    @property
    def active(self) -> bool:
        """Whether the SSH transport is still up."""
        return bool(self.transport.is_active())

    @classmethod
    def open(cls, target: Target) -> SshConnection:
        """Connect, verify the host key, log in; raise TunnelError saying what went wrong."""
        client = paramiko.SSHClient()
        for path in target.known_hosts:
            if path.is_file():
                try:
                    client.get_host_keys().load(str(path))
                except (OSError, paramiko.SSHException) as e:
                    raise TunnelError(f"cannot read known_hosts file {path}: {e}") from e
        sock = _dial(target)
        save_to = target.known_hosts[0] if target.accept_new_host_key else None
        client.set_missing_host_key_policy(_HostKeyPolicy(save_to))
        try:
            client.connect(
                target.host,
                port=target.port,
                username=target.user,
                sock=sock,
                key_filename=list(target.key_files) or None,
                allow_agent=True,
                look_for_keys=True,
                timeout=target.timeout_s,
                banner_timeout=target.timeout_s,
                auth_timeout=target.timeout_s,
                channel_timeout=target.timeout_s,
                transport_factory=_make_transport,
            )
        except BaseException as e:
            client.close()
            sock.close()
            if isinstance(e, Exception):
                raise _connect_error(target, e) from e
            raise
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(max(1, round(target.keepalive_s)))
        session = _open_pty_session(transport, target) if target.pty_session else None
        return cls(client, transport, session)

    def close(self) -> None:
        """Close the connection and wait for paramiko's thread to end."""
        self.client.close()
        if self.transport is not threading.current_thread():
            self.transport.join(10)


def _make_transport(sock: socket.socket, **kwargs: object) -> paramiko.Transport:
    transport = paramiko.Transport(_ReadAheadSocket(sock), **kwargs)
    options = transport.get_security_options()
    options.ciphers = _FAST_CIPHERS + tuple(c for c in options.ciphers if c not in _FAST_CIPHERS)
    return transport


class _ReadAheadSocket:
    """The SSH socket as paramiko sees it, read in large blocks.

    paramiko reads every packet with several small ``recv`` calls (length, body, MAC); serving them
    from one large read saves most system calls of a bulk transfer.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray(_READ_AHEAD_SIZE)
        self._view = memoryview(self._buffer)
        self._start = self._end = 0

    @property
    def _closed(self) -> bool:  # paramiko's Transport.stop_thread reads it
        return bool(getattr(self._sock, "_closed", False))

    def recv(self, nbytes: int) -> bytes:
        if self._start == self._end:
            self._start, self._end = 0, self._sock.recv_into(self._buffer)
            if self._end == 0:
                return b""
        end = min(self._end, self._start + nbytes)
        out = bytes(self._view[self._start : end])
        self._start = end
        return out

    def send(self, data: bytes) -> int:
        return self._sock.send(data)

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def getpeername(self) -> tuple[str, int]:
        host, port = self._sock.getpeername()[:2]
        return host, port

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()


def _dial(target: Target) -> socket.socket:
    try:
        sock = socket.create_connection((target.host, target.port), timeout=target.timeout_s)
    except socket.gaierror as e:
        raise TunnelError(
            f"cannot resolve SSH host {target.host!r}: {e.strerror}; check the "
            f"name or the HostName of {target.alias!r} in {_SSH_CONFIG}"
        ) from e
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise TunnelError(
            f"SSH host {target.host}:{target.port} is unreachable ({reason}); check "
            "the host name, the port, and that you are on the right network"
        ) from e
    # Small requests must not wait for Nagle's algorithm (~40 ms per round trip).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return sock


def _connect_error(target: Target, e: Exception) -> TunnelError:
    files = ", ".join(str(p) for p in target.known_hosts)
    if isinstance(e, _UnknownHostKeyError):
        return TunnelError(
            f"unknown host key for {target.key_name} ({e.key.get_name()} {e.key.fingerprint}); "
            f"it is not in {files}. Check the fingerprint with your site's documentation, then "
            f"either log in once with `ssh -p {target.port} {target.user}@{target.host}` or add it "
            f"with `ssh-keyscan -p {target.port} {target.host} >> {target.known_hosts[0]}`, or "
            "pass accept_new_host_key=True (CLI: --accept-new-host-key) to trust and save it"
        )
    if isinstance(e, paramiko.BadHostKeyException):
        return TunnelError(
            f"host key for {target.key_name} has CHANGED: the server sent {e.key.get_name()} "
            f"{e.key.fingerprint} but {files} pins {e.expected_key.fingerprint}. This may be an "
            "attack; refusing to connect. If the host was really reinstalled, remove the old "
            f"entry with `ssh-keygen -R '{target.key_name}' -f {target.known_hosts[0]}` and "
            "accept the new key"
        )
    if isinstance(e, paramiko.AuthenticationException):
        tried = [*target.key_files, "ssh-agent keys", "~/.ssh/id_* keys"]
        return TunnelError(
            f"authentication failed for {target.where} ({e}); tried: {', '.join(tried)}. Add your "
            "public key to ~/.ssh/authorized_keys on the host, load it into ssh-agent, or pass "
            "key_filename (CLI: -i KEY)"
        )
    if isinstance(e, paramiko.SSHException):
        return TunnelError(f"SSH handshake with {target.where} failed: {e}")
    return TunnelError(f"SSH connection to {target.where} failed during login: {e!r}")


def _open_pty_session(transport: paramiko.Transport, target: Target) -> paramiko.Channel | None:
    # OpenSSH's sshd leaves Nagle on for connections without an interactive session, which
    # delays about one small reply in ten by ~40 ms; a pty session makes it set TCP_NODELAY.
    try:
        chan = transport.open_session(timeout=target.timeout_s)
        chan.get_pty()
        chan.exec_command(_PTY_COMMAND)
    except BROKEN as e:
        logger.info(
            "no pty session on %s (%s): small round trips may take ~40 ms more", target.where, e
        )
        return None
    return chan


def resolve_target(
    user: str | None,
    alias: str,
    port: int | None,
    key_filename: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
    known_hosts: str | os.PathLike[str] | None,
    accept_new: bool,
    timeout_s: float,
    keepalive_s: float,
    pty_session: bool,
) -> Target:
    """Where and how to log in to ``alias``, with ``~/.ssh/config`` applied to it.

    Raises:
        TunnelError: ``~/.ssh/config`` cannot be read.
        ValueError: a key file does not exist.
    """
    options: dict[str, object] = {}
    config_path = Path(_SSH_CONFIG).expanduser()
    if config_path.is_file():
        try:
            options = dict(paramiko.SSHConfig.from_path(str(config_path)).lookup(alias))
        except Exception as e:
            raise TunnelError(f"cannot read {config_path} for host {alias!r}: {e}") from e
    if key_filename is None:
        keys: list[str] = []
    elif isinstance(key_filename, (str, os.PathLike)):
        keys = [os.fspath(key_filename)]
    else:
        keys = [os.fspath(k) for k in key_filename]
    config_keys = options.get("identityfile", [])
    if not keys and isinstance(config_keys, list):
        keys = [k for k in config_keys if Path(k).expanduser().is_file()]
    for key in keys:
        if not Path(key).expanduser().is_file():
            raise ValueError(f"key_filename {key!r} does not exist")
    if known_hosts is not None:
        paths = [Path(known_hosts).expanduser()]
    else:
        configured = str(options.get("userknownhostsfile", _KNOWN_HOSTS)).split()
        paths = [Path(p).expanduser() for p in configured] + [_GLOBAL_KNOWN_HOSTS]
    return Target(
        alias=alias,
        host=str(options.get("hostname", alias)),
        port=port if port is not None else int(str(options.get("port", 22))),
        user=user or str(options.get("user", "")) or _local_user(),
        key_files=tuple(str(Path(k).expanduser()) for k in keys),
        known_hosts=tuple(paths),
        accept_new_host_key=accept_new,
        timeout_s=timeout_s,
        keepalive_s=keepalive_s,
        pty_session=pty_session,
    )


def _local_user() -> str:
    import getpass

    return getpass.getuser()


def probe(transport: paramiko.Transport, target: Target, dest: tuple[str, int]) -> None:
    """Open and close one channel to ``dest``, so a closed remote port fails now.

    Raises:
        TunnelError: the channel was refused or the connection broke.
    """
    try:
        chan = transport.open_channel(
            "direct-tcpip", dest, ("127.0.0.1", 0), timeout=target.timeout_s
        )
    except paramiko.ChannelException as e:
        raise TunnelError(channel_error(e, target, dest)) from e
    except BROKEN as e:
        raise TunnelError(
            f"SSH connection to {target.where} failed while checking {dest[0]}:{dest[1]}: {e!r}"
        ) from e
    with contextlib.suppress(*BROKEN):
        chan.close()


def channel_error(e: paramiko.ChannelException, target: Target, dest: tuple[str, int]) -> str:
    """Why the SSH server refused a channel to ``dest``, and what to do about it."""
    if e.code == paramiko.common.OPEN_FAILED_CONNECT_FAILED:
        return (
            f"remote port closed: nothing accepts connections on {dest[0]}:{dest[1]} as seen "
            f"from {target.host}; start the server there or check remote_port/remote_dest_host"
        )
    if e.code == paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED:
        return (
            f"the SSH server {target.host} refuses port forwarding to {dest[0]}:{dest[1]} "
            "(sshd_config AllowTcpForwarding/PermitOpen); ask its administrators"
        )
    return f"the SSH server {target.host} refused a channel to {dest[0]}:{dest[1]}: {e.text}"
