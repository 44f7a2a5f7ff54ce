"""Forward a local port to the MCP server on a compute node over SSH, with the host key verified.

::

    client --TCP--> listener (127.0.0.1:local_port)            one selector thread moves the bytes
                      |  accept -> opener pool -> direct-tcpip channel
                      v
    SshConnection (paramiko Transport, TCP_NODELAY, keepalive, pty session) --> sshd --> dest:port

``start_tunnel`` returns a ``Tunnel``; ``stop_tunnel`` (or ``Tunnel.close``) frees the local port
at once and leaves no thread or socket behind. A dropped SSH connection is re-made once per drop.
The SSH connection itself (config, host keys, login) is :mod:`ensemble_mcp.ssh`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import logging
import os
import selectors
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

import paramiko

from ensemble_mcp.ssh import (
    BROKEN,
    SshConnection,
    Target,
    TunnelError,
    channel_error,
    probe,
    resolve_target,
)

__all__ = ("Tunnel", "TunnelError", "start_tunnel", "stop_tunnel")

logger = logging.getLogger(__name__)

_READ_SIZE = 256 * 1024
# Read a channel's whole receive window at once: paramiko's buffer moves what a read leaves behind.
_CHAN_READ_SIZE = 2 * 1024 * 1024
# One SSH packet carries at most 32 KiB (OpenSSH's and paramiko's packet limit for TCP channels).
_SEND_SLICE = 32 * 1024
_TICK_S = 1.0
_WINDOW_POLL_S = 0.001


def _listen(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise TunnelError(
                f"local port {port} on {host} is already in use; pass another local_port "
                f"(CLI: --local-port; 0 picks a free one) or stop the program listening there "
                f"(`ss -ltnp 'sport = :{port}'`)"
            ) from e
        raise TunnelError(f"cannot listen on {host}:{port}: {e.strerror}") from e
    sock.setblocking(False)
    return sock


class _Link:
    """One forwarded connection: a local socket, its channel, and bytes not yet delivered."""

    __slots__ = (
        "chan",
        "chan_eof",
        "chan_fd",
        "chan_mask",
        "on_chan",
        "on_sock",
        "sock",
        "sock_eof",
        "sock_fd",
        "sock_mask",
        "to_chan",
        "to_sock",
    )

    def __init__(self, sock: socket.socket, chan: paramiko.Channel) -> None:
        self.sock, self.chan = sock, chan
        self.sock_fd, self.chan_fd = sock.fileno(), chan.fileno()
        self.on_sock: Callable[[int], None] = _ignore
        self.on_chan: Callable[[int], None] = _ignore
        self.to_chan = memoryview(b"")
        self.to_sock = memoryview(b"")
        self.sock_eof = self.chan_eof = False
        self.sock_mask = self.chan_mask = 0


class Tunnel:
    """A running port forward; close it with ``close()``, ``stop_tunnel`` or a ``with`` block.

    Attributes:
        local_host: Address the local listener is bound to.
        local_port: Port of the local listener (the real one when 0 was asked).
        remote_host: Destination host, as seen from the SSH server.
        remote_port: Destination port on ``remote_host``.
        ssh_host: The SSH host as given (an alias of ``~/.ssh/config`` or a name).
        error: Why the tunnel stopped by itself, or None.
    """

    def __init__(
        self,
        listener: socket.socket,
        ssh: SshConnection,
        target: Target,
        remote_host: str,
        remote_port: int,
    ) -> None:
        self.local_host, self.local_port = listener.getsockname()[:2]
        self.remote_host, self.remote_port = remote_host, remote_port
        self.ssh_host = target.alias
        self.error: TunnelError | None = None
        self._listener, self._ssh, self._target = listener, ssh, target
        self._lock = threading.Lock()
        self._ssh_lock = threading.Lock()
        self._closing = False
        self._closed = False
        self._reconnect_queued = False
        self._ready: list[_Link] = []
        self._links: set[_Link] = set()
        self._blocked: set[_Link] = set()
        self._stopped = threading.Event()
        self._waker, self._wake_end = socket.socketpair()
        self._waker.setblocking(False)
        self._wake_end.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(listener, selectors.EVENT_READ, self._on_accept)
        self._sel.register(self._wake_end, selectors.EVENT_READ, self._on_wake)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tunnel-open")
        self._thread = threading.Thread(
            target=self._run, name=f"tunnel-{self.local_port}", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        state = "closed" if self._stopped.is_set() else "open"
        return (
            f"<Tunnel {self.local_host}:{self.local_port} -> {self.ssh_host} -> "
            f"{self.remote_host}:{self.remote_port} {state}>"
        )

    def __enter__(self) -> Tunnel:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[Tunnel]:
        """Yield the tunnel itself, so the seed's ``stop_tunnel(*start_tunnel(...))`` works."""
        return iter((self,))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the tunnel has stopped (closed, or broken: see ``error``); True if it has."""
        return self._stopped.wait(timeout)

    def close(self) -> None:
        """Stop forwarding: free the local port, close every connection, end every thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = self._closing = True
        self._wake()
        self._thread.join()
        with self._ssh_lock:
            self._ssh.close()
        self._pool.shutdown(wait=True)  # queued opens run, fail fast, and close their sockets
        for link in self._ready:
            self._drop(link)
        self._ready.clear()
        self._sel.close()
        self._waker.close()
        self._wake_end.close()

    # -- opener pool: SSH work that may block --------------------------------------------------

    def _transport(self) -> paramiko.Transport:
        with self._ssh_lock:
            if self._ssh.active:
                return self._ssh.transport
            if self.error is not None:
                raise self.error
            if self._closing:
                raise TunnelError("the tunnel is closed")
            logger.warning("SSH connection to %s dropped; reconnecting once", self._target.where)
            self._ssh.close()
            try:
                self._ssh = SshConnection.open(self._target)
            except TunnelError as e:
                self._fail(
                    TunnelError(
                        f"SSH connection to {self._target.where} dropped and "
                        f"reconnecting failed: {e}"
                    )
                )
                raise
            return self._ssh.transport

    def _reconnect(self) -> None:
        with contextlib.suppress(TunnelError):
            self._transport()
        self._reconnect_queued = False

    def _open(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        dest = (self.remote_host, self.remote_port)
        chan = None
        for attempt in (1, 2):
            try:
                chan = self._transport().open_channel(
                    "direct-tcpip", dest, peer, timeout=self._target.timeout_s
                )
                break
            except TunnelError:
                break
            except paramiko.ChannelException as e:
                logger.warning("%s", channel_error(e, self._target, dest))
                break
            except BROKEN as e:
                if attempt == 2:
                    logger.warning("cannot open a channel to %s:%s: %r", *dest, e)
        if chan is None:
            sock.close()
            return
        chan.settimeout(0.0)
        with self._lock:
            if not self._closing:
                self._ready.append(_Link(sock, chan))
                chan = None
        if chan is not None:
            self._drop(_Link(sock, chan))
        self._wake()

    def _fail(self, error: TunnelError) -> None:
        logger.error("%s", error)
        with self._lock:
            if self.error is None:
                self.error = error
            self._closing = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._waker.send(b"\0")

    # -- selector thread: all byte moving ------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._closing:
                timeout = _WINDOW_POLL_S if self._blocked else _TICK_S
                for key, mask in self._sel.select(timeout):
                    key.data(mask)
                for link in [b for b in self._blocked if b.chan.send_ready()]:
                    self._flush_to_chan(link)
                if not self._ssh.active and not self._reconnect_queued and not self._closing:
                    self._reconnect_queued = True
                    self._pool.submit(self._reconnect)
        except Exception as e:
            logger.exception("tunnel %s failed", self)
            self.error = TunnelError(f"the tunnel stopped on an internal error: {e!r}")
        finally:
            self._sel.unregister(self._listener)
            self._listener.close()
            with self._lock:
                self._closing = True
                ready, self._ready = self._ready, []
            for link in [*self._links, *ready]:
                self._drop(link)
            self._stopped.set()

    def _on_wake(self, _: int) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_end.recv(4096)
        with self._lock:
            ready, self._ready = self._ready, []
        for link in ready:
            link.on_sock = functools.partial(self._on_sock, link)
            link.on_chan = functools.partial(self._on_chan, link)
            self._links.add(link)
            self._update(link)

    def _on_accept(self, _: int) -> None:
        while True:
            try:
                sock, peer = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                logger.warning("accept on %s:%s failed: %s", self.local_host, self.local_port, e)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pool.submit(self._open, sock, peer[:2])

    def _on_sock(self, link: _Link, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush_to_sock(link)
        if mask & selectors.EVENT_READ and link in self._links and not link.to_chan:
            try:
                data = link.sock.recv(_READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                self._drop(link)
                return
            if data:
                link.to_chan = memoryview(data)
                self._flush_to_chan(link)
                return
            link.sock_eof = True
            with contextlib.suppress(*BROKEN):
                link.chan.shutdown_write()
        self._update(link)

    def _on_chan(self, link: _Link, _: int) -> None:
        try:
            data = link.chan.recv(_CHAN_READ_SIZE)
        except TimeoutError:
            return
        except BROKEN:
            self._drop(link)
            return
        if data:
            link.to_sock = memoryview(data)
            self._flush_to_sock(link)
            return
        link.chan_eof = True
        with contextlib.suppress(OSError):
            link.sock.shutdown(socket.SHUT_WR)
        self._update(link)

    def _flush_to_chan(self, link: _Link) -> None:
        data = link.to_chan
        while data:
            try:
                sent = link.chan.send(data[:_SEND_SLICE].tobytes())
            except TimeoutError:
                break
            except BROKEN:
                self._drop(link)
                return
            if sent == 0:
                self._drop(link)
                return
            data = data[sent:]
        link.to_chan = data
        if data:
            self._blocked.add(link)
        else:
            self._blocked.discard(link)
        self._update(link)

    def _flush_to_sock(self, link: _Link) -> None:
        data = link.to_sock
        try:
            while data:
                data = data[link.sock.send(data) :]
        except BlockingIOError:
            pass
        except OSError:
            self._drop(link)
            return
        link.to_sock = data
        self._update(link)

    def _update(self, link: _Link) -> None:
        """Watch each side for what the link can take next; drop it once both sides are done."""
        if link not in self._links:
            return
        pending = link.to_sock or link.to_chan
        chan_gone = link.chan_eof and link.chan.closed
        if not pending and ((link.sock_eof and link.chan_eof) or chan_gone):
            self._drop(link)
            return
        sock_mask = (0 if link.sock_eof or link.to_chan else selectors.EVENT_READ) | (
            selectors.EVENT_WRITE if link.to_sock else 0
        )
        chan_mask = 0 if link.chan_eof or link.to_sock else selectors.EVENT_READ
        link.sock_mask = self._watch(link.sock_fd, link.sock_mask, sock_mask, link.on_sock)
        link.chan_mask = self._watch(link.chan_fd, link.chan_mask, chan_mask, link.on_chan)

    def _watch(self, fd: int, old: int, new: int, callback: Callable[[int], None]) -> int:
        if new == old:
            return old
        if old == 0:
            self._sel.register(fd, new, callback)
        elif new == 0:
            self._sel.unregister(fd)
        else:
            self._sel.modify(fd, new, callback)
        return new

    def _drop(self, link: _Link) -> None:
        self._links.discard(link)
        self._blocked.discard(link)
        for fd, mask in ((link.sock_fd, link.sock_mask), (link.chan_fd, link.chan_mask)):
            if mask:
                self._sel.unregister(fd)
        link.sock_mask = link.chan_mask = 0
        link.sock.close()
        with contextlib.suppress(*BROKEN):
            link.chan.close()


def _ignore(_: int) -> None:
    pass


def start_tunnel(
    user_name: str | None,
    compute_node_host: str,
    local_port: int,
    remote_port: int,
    remote_dest_host: str = "localhost",
    *,
    key_filename: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    known_hosts: str | os.PathLike[str] | None = None,
    port: int | None = None,
    accept_new_host_key: bool = False,
    bind_host: str = "127.0.0.1",
    keepalive_s: float = 30.0,
    timeout_s: float = 10.0,
    check_remote: bool = True,
    pty_session: bool = True,
) -> Tunnel:
    """Forward ``bind_host:local_port`` to ``remote_dest_host:remote_port`` seen from an SSH host.

    Args:
        user_name: Login name; None takes ``User`` from ``~/.ssh/config``, else the local user.
        compute_node_host: SSH host name or ``~/.ssh/config`` alias (HostName, User, Port and
            IdentityFile are honoured).
        local_port: Local port to listen on; 0 picks a free one (see ``Tunnel.local_port``).
        remote_port: Port of the server, on ``remote_dest_host``.
        remote_dest_host: Destination as the SSH host sees it; ``localhost`` is the host itself.
        key_filename: Private key file(s) to try before the ssh-agent and ``~/.ssh/id_*``.
        known_hosts: known_hosts file to verify the host key against (default
            ``~/.ssh/known_hosts`` plus ``/etc/ssh/ssh_known_hosts``).
        port: SSH port; None takes ``Port`` from ``~/.ssh/config``, else 22.
        accept_new_host_key: Trust an unknown host key and save it to known_hosts (OpenSSH's
            ``accept-new``). A *changed* key is always refused.
        bind_host: Local address to listen on; keep loopback unless others must reach it.
        keepalive_s: Seconds between SSH keepalive packets.
        timeout_s: Limit for connecting, logging in and opening each channel.
        check_remote: Open one channel at start so a closed remote port fails here, not later.
        pty_session: Hold a pty session so OpenSSH's sshd turns Nagle off (~1 ms instead of
            ~40 ms per small round trip); turn off where sessions are not allowed.

    Returns:
        The running ``Tunnel``; use it in a ``with`` block or pass it to ``stop_tunnel``.

    Raises:
        TunnelError: The host is unreachable, its key is unknown or changed, login failed, the
            local port is in use, or the remote port is closed.
        ValueError: An argument is out of range.
    """
    _check_port("local_port", local_port, allow_zero=True)
    _check_port("remote_port", remote_port)
    if port is not None:
        _check_port("port", port)
    for name, value in (
        ("compute_node_host", compute_node_host),
        ("remote_dest_host", remote_dest_host),
        ("bind_host", bind_host),
    ):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be a non-empty host name, got {value!r}")
    if not keepalive_s > 0 or not timeout_s > 0:
        raise ValueError(f"keepalive_s and timeout_s must be > 0, got {keepalive_s}, {timeout_s}")
    target = resolve_target(
        user_name,
        compute_node_host,
        port,
        key_filename,
        known_hosts,
        accept_new_host_key,
        timeout_s,
        keepalive_s,
        pty_session,
    )
    if not _is_loopback(bind_host):
        logger.warning(
            "tunnel listens on %s: anyone who can reach it uses your SSH login", bind_host
        )
    listener = _listen(bind_host, local_port)
    try:
        ssh = SshConnection.open(target)
    except BaseException:
        listener.close()
        raise
    try:
        if check_remote:
            probe(ssh.transport, target, (remote_dest_host, remote_port))
        return Tunnel(listener, ssh, target, remote_dest_host, remote_port)
    except BaseException:
        listener.close()
        ssh.close()
        raise


def stop_tunnel(tunnel: Tunnel) -> None:
    """Close ``tunnel``: the local port is free and its threads have ended when this returns."""
    if not isinstance(tunnel, Tunnel):
        raise TypeError(f"stop_tunnel expects the Tunnel from start_tunnel, got {tunnel!r}")
    tunnel.close()


def _check_port(name: str, value: int, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
        raise ValueError(f"{name} must be an integer in {low}..65535, got {value!r}")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
