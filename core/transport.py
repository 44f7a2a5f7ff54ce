"""The only module that talks ZeroMQ: endpoints, sockets, CURVE keys and the ZAP allow-list."""

from __future__ import annotations

import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from core.errors import ConfigError
from core.protocol import Message, decode, encode

MAX_MESSAGE_BYTES = 1 << 31


class PeerGone(Exception):
    """A message could not be handed to its peer (it is not connected, or went away)."""


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """One CURVE identity for the parent (server) and one shared by its children (clients)."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def generate(cls) -> CurveKeys:
        """Fresh keys; call before any zmq context exists (libzmq #4241)."""
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        return cls(server_public, server_secret, client_public, client_secret)


def address_towards(host: str) -> str:
    """The address of this host on the route to ``host`` (what children there can reach).

    Raises:
        ConfigError: ``host`` cannot be resolved or reached.
    """
    try:
        target = socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((target, 9))  # a UDP connect sends nothing; it only picks the route
            return str(probe.getsockname()[0])
    except OSError as exc:
        raise ConfigError(f"node {host!r}: cannot find a route to it from here: {exc}") from None


def private_dir(prefix: str = "ensemble-mcp-") -> Path:
    """A new 0700 directory: ipc:// sockets in it are reachable by this user only."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def new_context() -> zmq.Context[zmq.Socket[bytes]]:
    """A ZeroMQ context for this process."""
    return zmq.Context()


class Channel:
    """A ROUTER (parent side, bound) or DEALER (child side, connected) socket of typed messages."""

    def __init__(self, socket: zmq.Socket[bytes]) -> None:
        self.socket = socket

    @classmethod
    def bind_router(
        cls, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, keys: CurveKeys | None = None
    ) -> Channel:
        """Bind a ROUTER at ``endpoint`` (``ipc://path`` or ``tcp://host:port``; port 0 = any).

        On tcp the socket is a CURVE server that admits only the children's key (ZAP).
        """
        sock = _socket(ctx, zmq.ROUTER, endpoint, keys, linger_ms=0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if keys is not None:
            _allow_only(ctx, keys.client_public)
            sock.curve_secretkey = keys.server_secret
            sock.curve_publickey = keys.server_public
            sock.curve_server = True
            if endpoint.endswith(":0"):
                port = sock.bind_to_random_port(endpoint.rsplit(":", 1)[0])
                return cls._bound(sock, f"{endpoint.rsplit(':', 1)[0]}:{port}")
        sock.bind(endpoint)
        return cls._bound(sock, endpoint)

    @classmethod
    def _bound(cls, sock: zmq.Socket[bytes], endpoint: str) -> Channel:
        channel = cls(sock)
        channel.endpoint = endpoint
        return channel

    endpoint: str = ""

    @classmethod
    def connect_dealer(
        cls,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        identity: bytes,
        keys: CurveKeys | None = None,
    ) -> Channel:
        """Connect a DEALER with ``identity`` to a parent's ROUTER."""
        sock = _socket(ctx, zmq.DEALER, endpoint, keys, linger_ms=2000)
        sock.setsockopt(zmq.IDENTITY, identity)
        if keys is not None:
            sock.curve_secretkey = keys.client_secret
            sock.curve_publickey = keys.client_public
            sock.curve_serverkey = keys.server_public
        sock.connect(endpoint)
        return cls._bound(sock, endpoint)

    def send(self, message: Message, to: bytes | None = None) -> None:
        """Send a message (to child ``to`` on a ROUTER).

        Raises:
            PeerGone: ``to`` is not connected (a ROUTER refuses to drop it silently).
        """
        frames = encode(message)
        try:
            self.socket.send_multipart(frames if to is None else [to, *frames])
        except zmq.ZMQError as exc:
            raise PeerGone(f"{to!r}: {exc}") from None

    def recv(self) -> tuple[bytes | None, Message]:
        """Wait for ``(sender or None, message)``; raises ProtocolError on a bad frame."""
        return self._decode(self.socket.recv_multipart())

    def recv_nowait(self) -> tuple[bytes | None, Message] | None:
        """``(sender or None, message)`` if one is waiting, else None; ProtocolError if bad."""
        try:
            frames = self.socket.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return None
        return self._decode(frames)

    def pending(self) -> bool:
        """Whether a message is waiting (asked of the socket itself: no poller is built)."""
        events = self.socket.getsockopt(zmq.EVENTS)
        return isinstance(events, int) and bool(events & zmq.POLLIN)

    def _decode(self, frames: list[bytes]) -> tuple[bytes | None, Message]:
        if self.socket.type == zmq.ROUTER:
            return frames[0], decode(frames[1:])
        return None, decode(frames)

    def close(self) -> None:
        """Close the socket."""
        self.socket.close(linger=0)


def _socket(
    ctx: zmq.Context[zmq.Socket[bytes]],
    kind: int,
    endpoint: str,
    keys: CurveKeys | None,
    linger_ms: int,
) -> zmq.Socket[bytes]:
    if endpoint.startswith("tcp://") and keys is None:
        raise ValueError("a tcp:// endpoint needs CURVE keys")
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    return sock


_authenticators: dict[int, Any] = {}


def _allow_only(ctx: zmq.Context[zmq.Socket[bytes]], client_public: bytes) -> None:
    """Start this context's ZAP handler admitting only ``client_public`` (once per context)."""
    if id(ctx) in _authenticators:
        return
    import zmq.auth.thread  # loads asyncio: only the tcp:// parent pays for it

    keydir = private_dir("ensemble-mcp-keys-")
    (keydir / "children.key").write_text(
        'metadata\ncurve\n    public-key = "' + client_public.decode() + '"\n'
    )
    auth = zmq.auth.thread.ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(keydir))  # reads the key now
    shutil.rmtree(keydir, ignore_errors=True)
    _authenticators[id(ctx)] = auth


def stop_authenticator(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """Stop the ZAP handler of ``ctx`` if one runs."""
    auth = _authenticators.pop(id(ctx), None)
    if auth is not None:
        auth.stop()


class Poller:
    """Waits on channels and plain file descriptors (wake-up pipes, pidfds) together."""

    def __init__(self) -> None:
        self._poller = zmq.Poller()
        self._channels: dict[zmq.Socket[bytes], Channel] = {}

    def add(self, target: Channel | int) -> None:
        """Watch a channel or a file descriptor for input."""
        if isinstance(target, Channel):
            self._channels[target.socket] = target
            self._poller.register(target.socket, zmq.POLLIN)
        else:
            self._poller.register(target, zmq.POLLIN)

    def remove(self, target: Channel | int) -> None:
        """Stop watching it."""
        if isinstance(target, Channel):
            self._channels.pop(target.socket, None)
            self._poller.unregister(target.socket)
        else:
            self._poller.unregister(target)

    def poll(self, timeout_ms: float | None) -> set[Channel | int]:
        """The channels and fds that are readable, waiting at most ``timeout_ms``."""
        wait = None if timeout_ms is None else max(0, int(timeout_ms + 0.999))
        channels = self._channels
        return {channels.get(sock, sock) for sock, _ in self._poller.poll(wait)}
