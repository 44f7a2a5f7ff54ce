"""Which nodes a run may use: the allocation's node list, found in a documented order.

:func:`discover_nodes` takes the first source that applies:

1. the ``nodes`` argument (the seed's ``Nodes``): a list of host names, used as given (a
   name listed twice counts once, with no slot count);
2. ``PBS_NODEFILE``: one host per line; each name is cut to its short form (the part before the
   first ``.``, except for IPv4 addresses); a host listed *k* times gets ``slots=k`` (PBS writes
   one line per ``mpiprocs``); blank lines and ``#`` comments are skipped;
3. Slurm: ``SLURM_JOB_NODELIST`` (or the older ``SLURM_NODELIST``) in Slurm's compressed
   hostlist syntax (see :func:`expand_hostlist`), with the per-node counts from
   ``SLURM_JOB_CPUS_PER_NODE`` (else ``SLURM_TASKS_PER_NODE``) in the ``2(x3),1`` form;
4. a hostfile named by ``ENSEMBLE_MCP_HOSTFILE``: one host per line as ``host``, ``host:N``
   (MPICH) or ``host slots=N`` (Open MPI); a bare line counts one slot; repeated hosts add up;
5. the local host (one node, no slot count).

``NodeSpec.slots`` is what the source *says* about a node (PBS: its lines; Slurm: its CPUs;
a hostfile: the count written), not what the node has: the node's own inventory
(``core.inventory``) is the authority on its CPUs and GPUs. Order is kept as the source gives it
(first appearance). A variable that is set but empty counts as unset.

Every malformed input raises :class:`core.errors.ConfigError` naming the variable or file, the
line and the problem. Host names are checked (letters, digits, ``-``, ``_``, ``.``; not starting
with ``-``) because they end up in ``mpiexec`` and ``ssh`` command lines. Not supported: IPv6
literals, Open MPI's ``max_slots=`` (the launcher never oversubscribes), Slurm's
multi-dimensional ``[123x456]`` boxes (BlueGene-era systems).

The module is pure apart from reading the named files: the environment comes in as a mapping.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import product

from core.errors import ConfigError

HOSTFILE_VARIABLE = "ENSEMBLE_MCP_HOSTFILE"
MAX_HOSTS = 1_000_000  # a bound on expansion, far above any machine (Aurora: 10,624 nodes)

_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}", re.ASCII)
_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}", re.ASCII)
_COUNT = re.compile(r"([1-9][0-9]*)(?:\(x([1-9][0-9]*)\))?", re.ASCII)
_TRAILING_DIGITS = re.compile(r"(.*?)([0-9]+)", re.ASCII | re.DOTALL)


def hostname() -> str:
    """This node's short host name."""
    return socket.gethostname().split(".")[0]


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node of the allocation: its host name and the slot count its source gives, if any."""

    name: str
    slots: int | None = None


@dataclass(frozen=True, slots=True)
class Discovery:
    """The nodes found and where they came from (for messages and logs)."""

    nodes: tuple[NodeSpec, ...]
    source: str
    detail: str = ""

    def __str__(self) -> str:
        where = f"{self.source}={self.detail}" if self.detail else self.source
        return f"{len(self.nodes)} node(s) from {where}"


def discover_nodes(
    nodes: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> Discovery:
    """Find the nodes of this run, taking the first source that applies (see the module doc).

    Args:
        nodes: explicit host names (the seed's ``Nodes``); wins over everything else.
        env: the environment to read (default ``os.environ``).

    Raises:
        ConfigError: a source that applies is malformed or unreadable.
    """
    env = os.environ if env is None else env
    if nodes is not None:
        return Discovery(_from_argument(nodes), "Nodes")
    if path := env.get("PBS_NODEFILE"):
        origin = f"PBS_NODEFILE={path}"
        return Discovery(parse_pbs_nodefile(_read(path, origin), origin), "PBS_NODEFILE", path)
    for variable in ("SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        if nodelist := env.get(variable):
            return Discovery(_from_slurm(variable, nodelist, env), variable, nodelist)
    if path := env.get(HOSTFILE_VARIABLE):
        origin = f"{HOSTFILE_VARIABLE}={path}"
        return Discovery(parse_hostfile(_read(path, origin), origin), HOSTFILE_VARIABLE, path)
    return Discovery((NodeSpec(hostname()),), "local host")


def parse_pbs_nodefile(text: str, origin: str = "PBS_NODEFILE") -> tuple[NodeSpec, ...]:
    """Parse a PBS node file: short names, repeats folded into a slot count, order kept."""
    counts: dict[str, int] = {}
    for number, line in _lines(text):
        if len(line.split()) != 1:
            raise ConfigError(f"{origin} line {number}: expected one host name, got {line!r}")
        name = short_name(_checked_host(line, origin, number))
        counts[name] = counts.get(name, 0) + 1
    return _nonempty({name: NodeSpec(name, n) for name, n in counts.items()}, origin)


def parse_hostfile(text: str, origin: str = HOSTFILE_VARIABLE) -> tuple[NodeSpec, ...]:
    """Parse a hostfile of ``host``, ``host:N`` or ``host slots=N`` lines; repeats add up."""
    counts: dict[str, int] = {}
    for number, line in _lines(text):
        name, slots = _hostfile_line(line, origin, number)
        counts[name] = counts.get(name, 0) + slots
    return _nonempty({name: NodeSpec(name, n) for name, n in counts.items()}, origin)


def valid_host(name: object) -> bool:
    """Whether ``name`` is a host name this launcher accepts (safe in mpiexec and ssh argv)."""
    return isinstance(name, str) and bool(_HOST.fullmatch(name)) and not name.startswith("-")


def short_name(name: str) -> str:
    """A host's short name: the part before the first ``.`` (IPv4 addresses are kept whole)."""
    return name if _IPV4.fullmatch(name) else name.split(".", 1)[0]


def expand_hostlist(text: str, origin: str = "hostlist") -> list[str]:
    """Expand a Slurm hostlist expression into host names, in order.

    Items are separated by commas (or blanks) outside brackets. A bracket holds numbers and
    ``lo-hi`` ranges separated by commas; numbers keep the zero padding of ``lo``
    (``nid[008-010]`` is ``nid008 nid009 nid010``). Several bracket groups in one item expand as
    a product, the leftmost varying slowest (``r[1-2]n[1-2]`` is ``r1n1 r1n2 r2n1 r2n2``), and
    text may follow the last group (``n[1-2]-ib``), as recent Slurm versions accept.

    Raises:
        ConfigError: malformed syntax, a reversed range, an invalid host name, or more than
            ``MAX_HOSTS`` names.
    """
    names: list[str] = []
    for item in _split_outside_brackets(text, origin):
        parts = _item_parts(item, origin)
        count = 1
        for part in parts:
            count *= len(part)
        if len(names) + count > MAX_HOSTS:
            raise ConfigError(f"{origin}: {text!r} expands to more than {MAX_HOSTS} hosts")
        for pieces in product(*parts):
            name = "".join(pieces)
            if not valid_host(name):
                raise ConfigError(f"{origin}: {name!r} (from {item!r}) is not a valid host name")
            names.append(name)
    if not names:
        raise ConfigError(f"{origin}: {text!r} names no hosts")
    return names


def compress_hostlist(names: Iterable[str]) -> str:
    """Write host names as a Slurm hostlist, keeping their order (inverse of expand_hostlist).

    Consecutive names with the same prefix and a trailing number share one bracket; runs of
    consecutive numbers become ``lo-hi`` ranges when their padding allows.
    """
    items: list[str] = []
    prefix: str | None = None
    ranges: list[list[str]] = []  # each: [first string, last string]
    for name in names:
        match = _TRAILING_DIGITS.fullmatch(name)
        if match is None:
            _flush(items, prefix, ranges)
            prefix, ranges = None, []
            items.append(name)
            continue
        head, digits = match.groups()
        if head != prefix:
            _flush(items, prefix, ranges)
            prefix, ranges = head, [[digits, digits]]
        elif _follows(ranges[-1], digits):
            ranges[-1][1] = digits
        else:
            ranges.append([digits, digits])
    _flush(items, prefix, ranges)
    return ",".join(items)


def expand_counts(text: str, origin: str = "counts") -> list[int]:
    """Expand Slurm's per-node count form: ``2(x3),1`` is ``[2, 2, 2, 1]``."""
    counts: list[int] = []
    for item in text.split(","):
        match = _COUNT.fullmatch(item.strip())
        if match is None:
            raise ConfigError(
                f"{origin}: {item.strip()!r} in {text!r} is not N or N(xM) with whole numbers ≥ 1"
            )
        value, repeat = int(match[1]), int(match[2] or 1)
        if len(counts) + repeat > MAX_HOSTS:
            raise ConfigError(f"{origin}: {text!r} counts more than {MAX_HOSTS} nodes")
        counts.extend([value] * repeat)
    return counts


def _from_argument(nodes: Sequence[str]) -> tuple[NodeSpec, ...]:
    if isinstance(nodes, str):
        raise ConfigError(f"Nodes: expected a list of host names, got the string {nodes!r}")
    seen: dict[str, NodeSpec] = {}
    for index, name in enumerate(nodes):
        if not valid_host(name):
            raise ConfigError(f"Nodes[{index}]: {name!r} is not a valid host name")
        seen.setdefault(name, NodeSpec(name))
    return _nonempty(seen, "Nodes")


def _from_slurm(variable: str, nodelist: str, env: Mapping[str, str]) -> tuple[NodeSpec, ...]:
    names = expand_hostlist(nodelist, variable)
    if len(set(names)) != len(names):
        twice = next(name for index, name in enumerate(names) if name in names[:index])
        raise ConfigError(f"{variable}: {nodelist!r} lists {twice} more than once")
    for count_variable in ("SLURM_JOB_CPUS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        if text := env.get(count_variable):
            counts = expand_counts(text, count_variable)
            if len(counts) != len(names):
                raise ConfigError(
                    f"{count_variable}={text!r} gives {len(counts)} count(s) but "
                    f"{variable} names {len(names)} node(s)"
                )
            return tuple(NodeSpec(n, c) for n, c in zip(names, counts, strict=True))
    return tuple(NodeSpec(name) for name in names)


def _read(path: str, origin: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read the file: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{origin}: not a text file (byte {exc.start} is not UTF-8)") from exc


def _lines(text: str) -> Iterable[tuple[int, str]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            yield number, line


def _checked_host(name: str, origin: str, number: int) -> str:
    if not valid_host(name):
        raise ConfigError(f"{origin} line {number}: {name!r} is not a valid host name")
    return name


def _hostfile_line(line: str, origin: str, number: int) -> tuple[str, int]:
    first, *options = line.split()
    if ":" in first:
        if options:
            raise ConfigError(f"{origin} line {number}: use host:N or host slots=N, not both")
        name, _, count = first.partition(":")
        return _checked_host(name, origin, number), _slots(count, line, origin, number)
    name, slots = _checked_host(first, origin, number), 1
    for option in options:
        key, equals, value = option.partition("=")
        if key != "slots" or not equals:
            hint = " (the launcher never oversubscribes)" if key == "max_slots" else ""
            raise ConfigError(
                f"{origin} line {number}: {option!r} is not supported{hint}; "
                "write host, host:N or host slots=N"
            )
        slots = _slots(value, line, origin, number)
    return name, slots


def _slots(value: str, line: str, origin: str, number: int) -> int:
    if not value.isascii() or not value.isdigit() or int(value) < 1:
        raise ConfigError(
            f"{origin} line {number}: slot count {value!r} is not a whole number ≥ 1 in {line!r}"
        )
    return int(value)


def _nonempty(found: Mapping[str, NodeSpec], origin: str) -> tuple[NodeSpec, ...]:
    if not found:
        raise ConfigError(f"{origin}: lists no hosts")
    return tuple(found.values())


def _split_outside_brackets(text: str, origin: str) -> list[str]:
    """Items of a hostlist: split on commas, then blanks, outside brackets."""
    pieces: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "[":
            if depth:
                raise ConfigError(f"{origin}: nested '[' in {text!r}")
            depth = 1
        elif char == "]":
            if not depth:
                raise ConfigError(f"{origin}: ']' without '[' in {text!r}")
            depth = 0
        if char == "," and not depth:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise ConfigError(f"{origin}: unclosed '[' in {text!r}")
    pieces.append("".join(current))
    if len(pieces) > 1 and any(not piece.strip() for piece in pieces):
        raise ConfigError(f"{origin}: empty item between commas in {text!r}")
    return [item for piece in pieces for item in _split_blanks(piece)]


def _split_blanks(piece: str) -> list[str]:
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for char in piece:
        depth = 1 if char == "[" else 0 if char == "]" else depth
        if char.isspace() and not depth:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return [item for item in items if item]


def _item_parts(item: str, origin: str) -> list[list[str]]:
    """Split one hostlist item into literal text and bracket expansions."""
    parts: list[list[str]] = []
    rest = item
    while rest:
        opening = rest.find("[")
        if opening < 0:
            parts.append([rest])
            break
        if opening:
            parts.append([rest[:opening]])
        closing = rest.index("]", opening)
        parts.append(_bracket_values(rest[opening + 1 : closing], item, origin))
        rest = rest[closing + 1 :]
    return parts


def _bracket_values(body: str, item: str, origin: str) -> list[str]:
    if not body:
        raise ConfigError(f"{origin}: empty brackets in {item!r}")
    values: list[str] = []
    for piece in body.split(","):
        lo, dash, hi = piece.partition("-")
        if not (lo.isascii() and lo.isdigit()) or (dash and not (hi.isascii() and hi.isdigit())):
            raise ConfigError(f"{origin}: {piece!r} in {item!r} is not a number or a lo-hi range")
        first, last = int(lo), int(hi) if dash else int(lo)
        if last < first:
            raise ConfigError(f"{origin}: range {piece!r} in {item!r} runs backwards")
        if len(values) + last - first + 1 > MAX_HOSTS:
            raise ConfigError(f"{origin}: {item!r} expands to more than {MAX_HOSTS} hosts")
        values.extend(f"{n:0{len(lo)}d}" for n in range(first, last + 1))
    return values


def _follows(run: list[str], digits: str) -> bool:
    first, last = run
    return int(digits) == int(last) + 1 and f"{int(digits):0{len(first)}d}" == digits


def _flush(items: list[str], prefix: str | None, ranges: list[list[str]]) -> None:
    if prefix is None or not ranges:
        return
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        items.append(prefix + ranges[0][0])
        return
    body = ",".join(lo if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)
    items.append(f"{prefix}[{body}]")
