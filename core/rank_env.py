r"""Per-rank pinning for MPI tasks: ``python -m core.rank_env [options] -- command ...``.

``mpiexec`` starts this wrapper as every rank; it finds which node and which local rank it is,
pins itself to that rank's CPUs, sets the GPU selector variable to that rank's GPU ids
(comma-joined) and ``os.execvp``'s the command (no shell; stdin, stdout, stderr and the pid are
the command's). The layout comes on the command line, one option per node, ranks separated by
``;`` and ids by ``,``::

    python -m core.rank_env --ppn 2 --hosts h1,h2 \
        --cpus '0;1' --cpus '4;5' --gpus '0;1' --gpus '2;3' --selector CUDA_VISIBLE_DEVICES -- cmd

Which node: the host whose short name equals this host's short name, if the list names it once;
otherwise global rank // ppn (every launcher here maps ranks to hosts in blocks, but ``srun`` may
reorder nodes, and a cluster's node names need not be its host names). Global rank from
``OMPI_COMM_WORLD_RANK``, ``PMIX_RANK``, ``PMI_RANK``, ``PALS_RANKID`` or ``SLURM_PROCID``; local
rank from ``OMPI_COMM_WORLD_LOCAL_RANK``, ``MPI_LOCALRANKID``, ``PMI_LOCAL_RANK``,
``PALS_LOCAL_RANKID`` or ``SLURM_LOCALID`` (else global rank % ppn).

Why pin here rather than with the launcher's binding flags: ``--cpu-set``/rankfiles (Open MPI),
``-bind-to user:`` (MPICH), ``--cpu-bind list:`` (PALS) and ``--cpu-bind=map_cpu:`` (srun) all
apply one list to every host of the job, Open MPI reads its lists as hwloc *logical* ids (on a
node with hyperthreads, logical PU 1 is not OS CPU 1), and Intel MPI pins inside ``MPI_Init``.
``sched_setaffinity`` with OS CPU ids is exact on every launcher and per host; MPI_Init keeps
it (checked with Open MPI 5.0 and MPICH 4.0).

Exit codes when the wrapper itself fails: 2 bad arguments or unknown rank, 126 the command
cannot be run or a CPU cannot be pinned, 127 the command is not found (as a shell would).
This module imports only the standard library: it starts once per rank.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

GLOBAL_RANK_VARIABLES = (
    "OMPI_COMM_WORLD_RANK",
    "PMIX_RANK",
    "PMI_RANK",
    "PALS_RANKID",
    "SLURM_PROCID",
)
LOCAL_RANK_VARIABLES = (
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "MPI_LOCALRANKID",
    "PMI_LOCAL_RANK",
    "PALS_LOCAL_RANKID",
    "SLURM_LOCALID",
)
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*", re.ASCII)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


class RankEnvError(Exception):
    """The wrapper cannot place this rank; the message says why."""


@dataclass(slots=True)
class _Options:
    ppn: int = 1
    hosts: list[str] = field(default_factory=list)
    cpus: list[str] = field(default_factory=list)
    gpus: list[str] = field(default_factory=list)
    selector: str | None = None


def valid_id(text: str) -> bool:
    """Whether ``text`` can be a CPU or GPU id in a layout (no separators, no blanks)."""
    return bool(_ID.fullmatch(text))


def encode_ranks(per_rank: Sequence[Sequence[object]]) -> str:
    """One node's ids as the wrapper reads them: ``'0,1;2,3'`` for two ranks of two ids."""
    return ";".join(",".join(str(item) for item in ids) for ids in per_rank)


def decode_ranks(text: str, what: str) -> list[list[str]]:
    """The inverse of :func:`encode_ranks`; every id must be well-formed."""
    ranks = [[] if not part else part.split(",") for part in text.split(";")]
    for ids in ranks:
        for item in ids:
            if not valid_id(item):
                raise RankEnvError(f"{what}: {item!r} in {text!r} is not a valid id")
    return ranks


def plan(
    argv: Sequence[str], env: Mapping[str, str], host: str
) -> tuple[list[str], dict[str, str], set[int] | None]:
    """Work out what to run for this rank: (command, variables to set, CPUs to pin or None).

    Args:
        argv: the wrapper's arguments (without the program name).
        env: this rank's environment.
        host: this host's name.

    Raises:
        RankEnvError: bad arguments, or this rank cannot be told apart.
    """
    options, command = _parse(argv)
    ppn, hosts, cpus, gpus = options.ppn, options.hosts, options.cpus, options.gpus
    nnodes = max(len(cpus), len(gpus), len(hosts), 1)
    for name, layout in (("--cpus", cpus), ("--gpus", gpus), ("--hosts", hosts)):
        if layout and len(layout) != nnodes:
            raise RankEnvError(f"{name} gives {len(layout)} node(s), expected {nnodes}")
    node, local = _whereami(env, host, hosts, ppn, nnodes)
    variables: dict[str, str] = {}
    pin: set[int] | None = None
    if gpus and options.selector:
        per_rank = decode_ranks(gpus[node], "--gpus")
        variables[options.selector] = ",".join(_rank_entry(per_rank, local, ppn, "--gpus"))
    if cpus:
        per_rank = decode_ranks(cpus[node], "--cpus")
        entry = _rank_entry(per_rank, local, ppn, "--cpus")
        if not entry or not all(item.isdigit() for item in entry):
            raise RankEnvError(f"--cpus: local rank {local} needs CPU numbers, got {entry}")
        pin = {int(item) for item in entry}
    return command, variables, pin


def main(argv: Sequence[str] | None = None) -> None:
    """Place this rank and exec the command; never returns."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        command, variables, pin = plan(argv, os.environ, socket.gethostname())
    except RankEnvError as exc:
        _fail(2, str(exc))
    if pin is not None:
        try:
            os.sched_setaffinity(0, pin)
        except OSError as exc:
            allowed = sorted(os.sched_getaffinity(0))
            _fail(126, f"cannot pin to CPUs {sorted(pin)} (allowed here: {allowed}): {exc}")
        if os.sched_getaffinity(0) != pin:  # Linux drops ids it does not have without an error
            _fail(126, f"CPUs {sorted(pin - os.sched_getaffinity(0))} do not exist here")
    os.environ.update(variables)
    try:
        os.execvp(command[0], command)  # noqa: S606 - exec without a shell is the point
    except FileNotFoundError:
        _fail(127, f"{command[0]}: command not found")
    except OSError as exc:
        _fail(126, f"{command[0]}: {exc.strerror or exc}")


def _parse(argv: Sequence[str]) -> tuple[_Options, list[str]]:
    if "--" not in argv:
        raise RankEnvError("missing '--' before the command")
    split = list(argv).index("--")
    head, command = list(argv[:split]), list(argv[split + 1 :])
    if not command:
        raise RankEnvError("no command after '--'")
    options = _Options()
    pairs = iter(head)
    for flag in pairs:
        value = next(pairs, None)
        if value is None:
            raise RankEnvError(f"{flag} needs a value")
        if flag == "--ppn":
            if not value.isdigit() or int(value) < 1:
                raise RankEnvError(f"--ppn must be a whole number >= 1, got {value!r}")
            options.ppn = int(value)
        elif flag == "--hosts":
            options.hosts = value.split(",")
        elif flag == "--cpus":
            options.cpus.append(value)
        elif flag == "--gpus":
            options.gpus.append(value)
        elif flag == "--selector":
            if not _NAME.fullmatch(value):
                raise RankEnvError(f"--selector {value!r} is not a variable name")
            options.selector = value
        else:
            raise RankEnvError(f"unknown option {flag!r}")
    if options.gpus and options.selector is None:
        raise RankEnvError("--gpus needs --selector (the variable to set)")
    return options, command


def _whereami(
    env: Mapping[str, str], host: str, hosts: list[str], ppn: int, nnodes: int
) -> tuple[int, int]:
    """(node index, local rank) of this process."""
    rank = _first_int(env, GLOBAL_RANK_VARIABLES)
    local = _first_int(env, LOCAL_RANK_VARIABLES)
    short = [name.split(".", 1)[0] for name in hosts]
    me = host.split(".", 1)[0]
    if short.count(me) == 1:
        node = short.index(me)
    elif rank is not None:
        node = rank // ppn
    elif nnodes == 1:
        node = 0
    else:
        raise RankEnvError(
            f"cannot tell which of {nnodes} nodes this is: host {host!r} is not in --hosts "
            f"and none of {', '.join(GLOBAL_RANK_VARIABLES)} is set"
        )
    if local is None:
        if rank is None:
            names = ", ".join(LOCAL_RANK_VARIABLES + GLOBAL_RANK_VARIABLES)
            raise RankEnvError(f"no rank variable is set ({names}); run this under mpiexec or srun")
        local = rank % ppn
    if not 0 <= node < nnodes:
        raise RankEnvError(f"rank {rank} falls on node {node}, but the layout has {nnodes} node(s)")
    return node, local


def _rank_entry(per_rank: list[list[str]], local: int, ppn: int, what: str) -> list[str]:
    if len(per_rank) != ppn:
        raise RankEnvError(f"{what}: a node lists {len(per_rank)} rank(s), --ppn is {ppn}")
    if local >= ppn:
        raise RankEnvError(f"{what}: local rank {local} is beyond --ppn {ppn}")
    return per_rank[local]


def _first_int(env: Mapping[str, str], names: Sequence[str]) -> int | None:
    for name in names:
        value = env.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def _fail(code: int, message: str) -> NoReturn:
    sys.stderr.write(f"core.rank_env: {message}\n")
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
