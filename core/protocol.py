"""Wire messages between launcher processes, and their frames.

Every message is ``[header, control]`` or ``[header, control, payloads]``: a 3-byte header (kind,
protocol version) that is never pickle, a small control part (plain tuples, stdlib pickle), and
the opaque payloads of a Submit or Results, concatenated (their sizes in the control part). A
task's arguments and a task's result travel as one payload each, pickled once where they are
made (the client, the worker) and unpickled only where they are used (the worker, the client):
sub-masters route payloads by slot without unpickling them, so they never need the user's
modules, and one bad payload fails one task. Sockets are authenticated (``ipc://`` in a 0700
directory, or CURVE with a ZAP allow-list on ``tcp://``) before anything is unpickled.

Hops: ``Register``, ``Results``, ``SlotsDown``, ``SlotsUp``, ``Heartbeat`` go up (child to parent);
``Submit``, ``Cancel``, ``Shutdown``, ``Heartbeat`` go down.
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import cloudpickle

from core.errors import ProtocolError

PROTOCOL_VERSION = 2
_HEADER = struct.Struct("!BH")


class TaskItem(NamedTuple):
    """What a task runs: a call (``fn`` digest set) or a command (``argv`` set).

    Pickled once, at submission, into the payload a worker receives (``pack``/``unpack``).
    """

    fn: bytes | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    argv: list[str] | None
    env: dict[str, str] | None
    cwd: str | None
    timeout: float | None
    nnodes: int = 1
    ppn: int = 1
    mpi: bool = False
    """Run the command under the MPI launcher even with one process."""

    def pack(self) -> bytes:
        """The payload: the fields as a plain tuple (no class to name or look up per task)."""
        return dumps(tuple(self))

    @classmethod
    def unpack(cls, payload: bytes) -> TaskItem:
        """The item in a payload made by ``pack``."""
        return cls._make(pickle.loads(payload))


def item_fields(
    fn: bytes | None, args: tuple[Any, ...], kwargs: dict[str, Any], argv: list[str] | None,
    env: dict[str, str] | None, cwd: str | None, timeout: float | None, nnodes: int = 1,
    ppn: int = 1, mpi: bool = False,
) -> tuple[Any, ...]:  # fmt: skip
    """A TaskItem's fields as a plain tuple, in order (cheaper to build and pickle per task)."""
    return (fn, args, kwargs, argv, env, cwd, timeout, nnodes, ppn, mpi)


class HostPart(NamedTuple):
    """The share of one node that a placed task holds."""

    node: str
    cpus: tuple[int, ...]
    gpus: tuple[str, ...] = ()


class Placement(NamedTuple):
    """Where a task runs: one part per node, the first one the leader's (where it starts)."""

    parts: tuple[HostPart, ...]

    @property
    def cpus(self) -> tuple[int, ...]:
        """The leader node's CPUs."""
        return self.parts[0].cpus

    @property
    def gpus(self) -> tuple[str, ...]:
        """The leader node's GPUs."""
        return self.parts[0].gpus


class Entry(NamedTuple):
    """One task in a Submit: where it goes, which attempt, and its opaque payload."""

    slot: str
    key: int
    attempt: int
    fn: bytes | None
    placement: Placement | None
    payload: bytes


class Outcome(NamedTuple):
    """How one attempt of a task ended (the payload of a result)."""

    status: str
    value: Any = None
    stdout: str | None = None
    stderr: str | None = None
    returncode: int | None = None
    exception: str | None = None
    exception_type: str | None = None
    start_time: float = 0.0
    end_time: float = 0.0

    def pack(self) -> bytes:
        """The payload: the fields as a plain tuple."""
        return dumps(tuple(self))

    @classmethod
    def unpack(cls, payload: bytes) -> Outcome:
        """The outcome in a payload made by ``pack``."""
        return cls._make(pickle.loads(payload))

    @classmethod
    def ended(cls, status: str, why: str, now: float, exception_type: str | None = None) -> Outcome:
        """An attempt that ended without running (or whose run told nothing but ``why``)."""
        return cls(status, exception=why, exception_type=exception_type, start_time=now,
                   end_time=now)  # fmt: skip


class Done(NamedTuple):
    """One finished attempt in Results: key, attempt, status, run time and pickled Outcome.

    Only the client unpickles the Outcome.
    """

    key: int
    attempt: int
    status: str
    duration_s: float
    payload: bytes


class SlotInfo(NamedTuple):
    """One slot a child brings: its address, node and CPU."""

    slot: str
    node: str
    cpu: int


class NodeInfo(NamedTuple):
    """What a node offers beyond its CPU slots."""

    node: str
    gpus: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Register:
    """Child -> parent, once its subtree is up: the slots and nodes it brings."""

    pid: int
    slots: tuple[SlotInfo, ...]
    nodes: tuple[NodeInfo, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Submit:
    """Parent -> child: run these tasks; ``functions`` holds callables not sent to it before."""

    entries: list[Entry]
    functions: dict[bytes, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Results:
    """Child -> parent: these attempts ended."""

    done: list[Done]


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel:
    """Parent -> child: cancel these tasks on ``slot``; ``hard`` replaces its worker."""

    slot: str
    keys: tuple[int, ...]
    hard: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Shutdown:
    """Parent -> child: stop, killing whatever still runs."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """Either way, on links between masters: I am alive."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotsDown:
    """Child -> parent: these slots are gone (their worker or sub-master died)."""

    slots: tuple[str, ...]
    reason: str
    node_lost: bool = False
    """A sub-master (and so its node) was lost: the slots are gone for good."""
    gone: bool = False
    """The slots will not come back (a worker that keeps dying at start)."""
    running: tuple[int, int] | None = None
    """``(key, attempt)`` the dead worker was running, when it is known (one slot)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotsUp:
    """Child -> parent: these slots are back (a replacement worker registered)."""

    slots: tuple[SlotInfo, ...]


Message = Register | Submit | Results | Cancel | Shutdown | Heartbeat | SlotsDown | SlotsUp
_KINDS: tuple[type[Any], ...] = (
    Register, Submit, Results, Cancel, Shutdown, Heartbeat, SlotsDown, SlotsUp,
)  # fmt: skip
_KIND_OF = {cls: i for i, cls in enumerate(_KINDS)}
_SUBMIT, _RESULTS = _KIND_OF[Submit], _KIND_OF[Results]
_DUMP = pickle.HIGHEST_PROTOCOL


def dumps(value: Any) -> bytes:
    """Pickle ``value``: stdlib pickle, cloudpickle for what it cannot do (lambdas, locals)."""
    try:
        return pickle.dumps(value, protocol=_DUMP)
    except (pickle.PicklingError, AttributeError, TypeError):
        return bytes(cloudpickle.dumps(value, protocol=_DUMP))


def encode(message: Message) -> list[bytes]:
    """The frames of a message.

    The payloads of a Submit or Results travel concatenated in one frame (their lengths in the
    control part): one frame per task would cost a Python-level send and receive per task.
    """
    header = _HEADER.pack(_KIND_OF[type(message)], PROTOCOL_VERSION)
    if isinstance(message, Submit):
        entries = message.entries
        rows = [(e.slot, e.key, e.attempt, e.fn, e.placement, len(e.payload)) for e in entries]
        blobs = list(message.functions.items())
        control = (rows, [(digest, len(blob)) for digest, blob in blobs])
        payloads = b"".join([*(e.payload for e in entries), *(blob for _, blob in blobs)])
        return [header, pickle.dumps(control, protocol=_DUMP), payloads]
    if isinstance(message, Results):
        done = message.done
        results = [(d.key, d.attempt, d.status, d.duration_s, len(d.payload)) for d in done]
        payloads = b"".join([d.payload for d in done])
        return [header, pickle.dumps(results, protocol=_DUMP), payloads]
    fields = tuple(getattr(message, name) for name in message.__slots__)
    return [header, pickle.dumps(fields, protocol=_DUMP)]


def _entry(fields: tuple[Any, ...]) -> Entry:
    return tuple.__new__(Entry, fields)


def _done(fields: tuple[Any, ...]) -> Done:
    return tuple.__new__(Done, fields)


def _cut(blob: bytes, sizes: list[int]) -> list[bytes]:
    """``blob`` cut into consecutive pieces of ``sizes``; ProtocolError if they do not add up."""
    if sum(sizes) != len(blob):
        raise ProtocolError(f"payload frame of {len(blob)} bytes, {sum(sizes)} announced")
    pieces, start = [], 0
    for size in sizes:
        pieces.append(blob[start : start + size])
        start += size
    return pieces


def decode(frames: list[bytes]) -> Message:
    """The message in ``frames``; raises ProtocolError on a bad header, version or layout."""
    if len(frames) < 2 or len(frames[0]) != _HEADER.size:
        raise ProtocolError(f"malformed message: {len(frames)} frames")
    kind, version = _HEADER.unpack(frames[0])
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version} from peer, this process speaks {PROTOCOL_VERSION}; "
            "run the same ensemble-mcp version everywhere"
        )
    if kind >= len(_KINDS):
        raise ProtocolError(f"unknown message kind {kind}")
    try:
        control = pickle.loads(frames[1])
        if kind == _SUBMIT:
            if len(frames) != 3:
                raise ProtocolError(f"Submit has {len(frames)} frames, not 3")
            rows, blobs = control
            pieces = _cut(frames[2], [row[5] for row in rows] + [size for _, size in blobs])
            entries = [_entry((*row[:5], pieces[i])) for i, row in enumerate(rows)]
            functions = {digest: pieces[len(rows) + i] for i, (digest, _) in enumerate(blobs)}
            return Submit(entries=entries, functions=functions)
        if kind == _RESULTS:
            if len(frames) != 3:
                raise ProtocolError(f"Results has {len(frames)} frames, not 3")
            pieces = _cut(frames[2], [row[4] for row in control])
            return Results(done=[_done((*row[:4], pieces[i])) for i, row in enumerate(control)])
        cls = _KINDS[kind]
        return cls(**dict(zip(cls.__slots__, control, strict=True)))  # type: ignore[no-any-return]
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"malformed {_KINDS[kind].__name__}: {exc!r}") from exc
