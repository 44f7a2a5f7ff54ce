"""Wire messages between launcher processes, and their frames.

Every message is two frames: a 3-byte header (kind, protocol version) that is never pickle, and a
payload pickled with cloudpickle. Sockets are authenticated (``ipc://`` in a 0700 directory, or
CURVE with a ZAP allow-list on ``tcp://``) before any payload is unpickled.
"""

from __future__ import annotations

import pickle
import struct
from array import array
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import cloudpickle

from core.errors import ProtocolError

PROTOCOL_VERSION = 1
_HEADER = struct.Struct("!BH")


class TaskItem(NamedTuple):
    """One task as a worker receives it: a call (``fn`` digest set) or a command (``argv`` set)."""

    key: int
    fn: bytes | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    argv: list[str] | None
    env: dict[str, str] | None
    cwd: str | None
    timeout: float | None
    nprocs: int = 1


class ResultItem(NamedTuple):
    """One finished task as a worker reports it."""

    key: int
    status: str
    value: Any
    stdout: str | None
    stderr: str | None
    returncode: int | None
    exception: str | None
    exception_type: str | None
    start_time: float
    end_time: float
    node: str = ""
    cpus: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Register:
    """Child -> parent, once: who I am and which slots I bring."""

    node: str
    pid: int
    cpus: tuple[int, ...]
    gpus: tuple[str, ...] = ()
    nslots: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Submit:
    """Parent -> child: run these tasks; ``functions`` holds callables not sent before."""

    items: list[TaskItem]
    functions: dict[bytes, bytes] = field(default_factory=dict)
    cpus: dict[int, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Results:
    """Child -> parent: these tasks ended."""

    items: list[ResultItem]


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected:
    """Child -> parent: a Submit with these tasks could not be unpickled here."""

    keys: list[int]
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel:
    """Parent -> child: cancel these tasks (queued or running)."""

    keys: list[int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Shutdown:
    """Parent -> child: stop, killing whatever still runs."""


Message = Register | Submit | Results | Rejected | Cancel | Shutdown
_KINDS: tuple[type[Any], ...] = (Register, Submit, Results, Cancel, Shutdown, Rejected)
_SUBMIT = _KINDS.index(Submit)


class UndecodableSubmit(ProtocolError):
    """A Submit arrived whose payload cannot be unpickled here; ``keys`` are its tasks."""

    def __init__(self, keys: list[int], cause: BaseException) -> None:
        super().__init__(f"could not unpickle the tasks' arguments: {cause!r}")
        self.keys = keys


_KIND_OF = {cls: i for i, cls in enumerate(_KINDS)}


def encode(message: Message) -> list[bytes]:
    """The frames of a message."""
    header = _HEADER.pack(_KIND_OF[type(message)], PROTOCOL_VERSION)
    fields = tuple(getattr(message, name) for name in message.__slots__)
    try:
        payload = pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):
        # lambdas, local classes: by value (cloudpickle is slower, so only when needed)
        payload = cloudpickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL)
    if isinstance(message, Submit):  # the keys travel apart, readable even if the rest is not
        return [header, payload, array("q", [i.key for i in message.items]).tobytes()]
    return [header, payload]


def decode(frames: list[bytes]) -> Message:
    """The message in ``frames``; raises ProtocolError on a bad header or version."""
    if len(frames) not in (2, 3) or len(frames[0]) != _HEADER.size:
        raise ProtocolError(f"malformed message: {len(frames)} frames")
    kind, version = _HEADER.unpack(frames[0])
    if (len(frames) == 3) != (kind == _SUBMIT):
        raise ProtocolError(f"malformed message: {len(frames)} frames for kind {kind}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version} from peer, this process speaks "
            f"{PROTOCOL_VERSION}; run the same ensemble-mcp version everywhere"
        )
    if kind >= len(_KINDS):
        raise ProtocolError(f"unknown message kind {kind}")
    cls = _KINDS[kind]
    if kind == _SUBMIT:
        try:
            fields = pickle.loads(frames[1])
        except Exception as exc:
            raise UndecodableSubmit(array("q", frames[2]).tolist(), exc) from exc
        return cls(**dict(zip(cls.__slots__, fields, strict=True)))  # type: ignore[no-any-return]
    fields = pickle.loads(frames[1])
    return cls(**dict(zip(cls.__slots__, fields, strict=True)))  # type: ignore[no-any-return]
