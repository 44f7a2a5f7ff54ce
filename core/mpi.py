"""Command lines for ``mpiexec``, ``srun`` and ``ssh``: which launcher this is, and what to run.

Detection. :func:`detect_launcher` runs ``<executable> --version`` under a timeout (cached per
resolved path) and recognises Open MPI (``mpirun``/``mpiexec (Open MPI)``, ``(OpenRTE)``,
``prterun (PRRTE)``, the runtime of Open MPI 5), Intel MPI (checked before MPICH: it is Hydra too),
MPICH/Hydra (``HYDRA build details``), ``srun`` (``slurm N``) and Cray PALS (``PALS`` in the
text or ``/pals/`` in the path).

Builders (pure; each returns a :class:`Command`: an argv and variables to add to the environment
of the process that runs it):

- :func:`launch_on_host` starts ONE process on ONE host (a sub-master on another node).
  Binding is switched off (Open MPI binds a lone rank to core 0 by default, and the child's
  workers would inherit that). stdin reaches the process: Open MPI and Hydra forward it to
  rank 0 (checked here with ``-n 1``). Keep it to one short line: Open MPI 5.0 never delivers
  EOF on it (measured with 5.0.11) and MPICH 4.0 aborts ("process reading stdin too slowly")
  when more than 64 KiB arrive before the process reads them.
- :func:`ssh_command` is the fallback without an MPI launcher: ``ssh -o BatchMode=yes -T --
  host 'exec env K=V cmd ...'``. ssh joins its arguments into one line for the remote *shell*, so
  every word is quoted with :func:`shlex.quote` (POSIX shells; csh/tcsh login shells are not
  supported). Host keys are checked as ssh is configured: nothing here turns that off. A
  remote process does not die with its ssh client: it must watch its stdin or its parent.
- :func:`mpi_task_command` runs an MPI task on the slots the scheduler reserved: ``-n``
  (hosts x ppn), processes per node, the explicit host list, launcher binding off, and, when
  CPUs or GPUs are given, ranks started through ``python -m core.rank_env``, which pins each
  rank to exactly its OS CPU ids and sets the GPU selector per rank (see that module for why
  the launchers' own binding flags are not used). Two tasks on one node then run on their own
  CPUs, which every launcher's default binding gets wrong (each puts its rank 0 on core 0).

Environment: variables in ``env`` must not be secret. Every launcher is told them explicitly,
in argv (Open MPI ``-x``, Hydra ``-genv``, PALS ``--env``, ssh ``env``), since Open MPI and ssh
pass nothing else to other nodes; ``srun`` gets them in its own environment, which it forwards
(its ``--export`` list cannot carry commas). Secrets go through stdin. Root: Open MPI refuses
to run as root without ``--allow-run-as-root``, added only then; the others need nothing.

Tested here with Debian Open MPI 4.1 and MPICH 4.0 (and the PyPI Open MPI 5.0 wheel by hand);
Intel MPI, PALS and srun argv follow their documentation and are untested on a real system.
Not supported: launchers' fault-tolerance modes (one launch per child makes them unnecessary),
hosts with different ranks per node in one task, IPv6 literals as host names.
"""

from __future__ import annotations

import enum
import os
import re
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from core.errors import ConfigError, LaunchError
from core.inventory import run_tool
from core.nodes import valid_host
from core.rank_env import encode_ranks, valid_id

_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_NUMBER = r"(\d+(?:\.\d+)*)"


class Flavour(enum.Enum):
    """The kind of launcher an executable is."""

    OPENMPI = "Open MPI"
    MPICH = "MPICH"
    INTEL_MPI = "Intel MPI"
    PALS = "Cray PALS"
    SRUN = "srun"


@dataclass(frozen=True, slots=True)
class MpiLauncher:
    """A launcher executable and what it is."""

    executable: str
    flavour: Flavour
    version: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Command:
    """An argv to run, and variables to add to the environment of the process that runs it."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RankSlots:
    """What one MPI rank gets on its host: OS CPU ids and GPU ids (empty: no pinning)."""

    cpus: tuple[int, ...] = ()
    gpus: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HostSlots:
    """The ranks of an MPI task on one host, in local-rank order."""

    host: str
    ranks: tuple[RankSlots, ...]


# (flavour, pattern, fixed version): first match wins. Intel MPI before MPICH (both are Hydra);
# prterun is Open MPI 5's runtime, whose own version number is not Open MPI's.
_IDENTIFIERS: tuple[tuple[Flavour, re.Pattern[str], tuple[int, ...] | None], ...] = (
    (Flavour.INTEL_MPI, re.compile(rf"Intel\(R\) MPI Library.*?Version {_NUMBER}", re.S), None),
    (Flavour.OPENMPI, re.compile(r"\(PRRTE\)"), (5,)),
    (Flavour.OPENMPI, re.compile(rf"\((?:Open MPI|OpenRTE)\) {_NUMBER}"), None),
    (Flavour.MPICH, re.compile(rf"HYDRA build details:.*?Version:\s+{_NUMBER}", re.S), None),
    (Flavour.SRUN, re.compile(rf"^slurm(?:-wlm)? {_NUMBER}", re.M), None),
    (Flavour.PALS, re.compile(rf"\bPALS\b(?:.*?{_NUMBER})?", re.S | re.I), None),
)
_detected: dict[tuple[str, int], tuple[Flavour, tuple[int, ...]]] = {}


def identify(version_text: str, executable: str = "") -> tuple[Flavour, tuple[int, ...]] | None:
    """The flavour and version a ``--version`` output shows, or None if it is none we know."""
    for flavour, pattern, fixed in _IDENTIFIERS:
        if match := pattern.search(version_text):
            if fixed is not None:
                return flavour, fixed
            number = match.group(1)
            return flavour, tuple(int(part) for part in number.split(".")) if number else ()
    if "/pals/" in executable:
        return Flavour.PALS, ()
    return None


def detect_launcher(
    executable: str, *, timeout_s: float = 10.0, env: Mapping[str, str] | None = None
) -> MpiLauncher:
    """Run ``executable --version`` and tell what launcher it is (cached per resolved path).

    Raises:
        LaunchError: the executable is missing, hangs past ``timeout_s``, or is not a launcher
            this module knows.
    """
    env = os.environ if env is None else env
    path = shutil.which(executable, path=env.get("PATH", os.defpath))
    if path is None:
        raise LaunchError(
            f"MPI launcher {executable!r} not found on PATH; load your MPI module or set "
            "LauncherConfig.mpiexec to its full path"
        )
    resolved = os.path.realpath(path)
    key = (resolved, os.stat(resolved).st_mtime_ns)
    if key in _detected:
        return MpiLauncher(executable, *_detected[key])
    done = run_tool([path, "--version"], env, timeout_s)
    if done is None:
        raise LaunchError(f"'{path} --version' did not answer within {timeout_s:g} s")
    code, text = done
    found = identify(text, resolved)
    if found is None:
        tail = text.strip()[-500:] or f"(no output, exit code {code})"
        raise LaunchError(
            f"cannot tell which MPI launcher {path} is from its --version output: {tail}"
        )
    _detected[key] = found
    return MpiLauncher(executable, *found)


def clear_detection_cache() -> None:
    """Forget what :func:`detect_launcher` found (e.g. after a module switch in a test)."""
    _detected.clear()


def launch_on_host(
    launcher: MpiLauncher,
    host: str,
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    rsh_agent: str | None = None,
    as_root: bool | None = None,
    srun_cpus: int | None = None,
) -> Command:
    """Start one process running ``command`` on ``host`` through an MPI launcher or srun.

    Args:
        launcher: what :func:`detect_launcher` found (or a hand-made :class:`MpiLauncher`).
        host: the node to run on.
        command: the process's argv.
        env: non-secret variables the process needs (e.g. the run's mark, ``PYTHONPATH``).
        rsh_agent: path of an ssh-like program the launcher should use to reach other nodes
            (Open MPI, MPICH, Intel MPI only).
        as_root: add Open MPI's root permission (None: when this process runs as root).
        srun_cpus: CPUs the srun step gets (srun only). Without it Slurm gives one, and with
            task/cgroup the process and every worker it starts share that one CPU.

    Raises:
        ConfigError: a bad host, command, variable, or an option the flavour cannot honour.
    """
    _check_host(host)
    argv = _check_command(command)
    env = _check_env(env)
    _check_agent(launcher, rsh_agent)
    if srun_cpus is not None and launcher.flavour is not Flavour.SRUN:
        raise ConfigError(f"srun_cpus applies to srun only, not to {launcher.flavour.value}")
    exe = launcher.executable
    flavour = launcher.flavour
    if flavour is Flavour.OPENMPI:
        head = [exe, "-n", "1", "--host", host, "--bind-to", "none"]
        head += _openmpi_extras(launcher, rsh_agent, as_root, env)
    elif flavour in (Flavour.MPICH, Flavour.INTEL_MPI):
        head = [exe, "-n", "1", "-hosts", host, *_hydra_extras(launcher, rsh_agent, env)]
    elif flavour is Flavour.PALS:
        head = [exe, "-n", "1", "--ppn", "1", "--hosts", host, "--cpu-bind", "none"]
        head += _pals_env(env)
    else:
        head = [exe, "--nodes=1", "--ntasks=1", f"--nodelist={host}", "--cpu-bind=none"]
        head += ["--overlap", *([f"--cpus-per-task={srun_cpus}"] if srun_cpus else [])]
    return Command((*head, *argv), dict(env))


def ssh_command(
    host: str,
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    ssh: Sequence[str] = ("ssh",),
) -> Command:
    """Start ``command`` on ``host`` with plain ssh, every word quoted for the remote shell.

    Args:
        host: the node to run on.
        command: the remote process's argv.
        env: non-secret variables to set on the remote side (ssh forwards none by default).
        ssh: the ssh program and any options of the caller's (e.g. ``("ssh", "-F", config)``).
    """
    _check_host(host)
    argv = _check_command(command)
    env = _check_env(env)
    if not ssh:
        raise ConfigError("ssh: the ssh program is missing")
    assignments = [f"{name}={value}" for name, value in env.items()]
    words = ["env", *assignments, *argv] if assignments else argv
    remote = "exec " + " ".join(shlex.quote(word) for word in words)
    return Command((*ssh, "-o", "BatchMode=yes", "-T", "--", host, remote), {})


def mpi_task_command(
    launcher: MpiLauncher,
    hosts: Sequence[HostSlots],
    command: Sequence[str],
    *,
    gpu_selector: str | None = None,
    env: Mapping[str, str] | None = None,
    rsh_agent: str | None = None,
    as_root: bool | None = None,
    python: str = sys.executable,
) -> Command:
    """The command line of an MPI task on the slots the scheduler reserved for it.

    Args:
        launcher: the launcher to use.
        hosts: one entry per host, each with the same number of ranks (processes per node);
            ranks carry their OS CPU ids and GPU ids, all or none of them.
        command: the program's argv.
        gpu_selector: the variable that receives each rank's GPU ids (needed with GPUs).
        env: non-secret variables for every rank.
        rsh_agent: see :func:`launch_on_host`.
        as_root: see :func:`launch_on_host`.
        python: the interpreter that runs ``core.rank_env`` on every host (same path there).

    Raises:
        ConfigError: an inconsistent layout, a bad name or id, or an unusable option.
    """
    argv = _check_command(command)
    env = _check_env(env)
    _check_agent(launcher, rsh_agent)
    ppn = _check_layout(hosts)
    pinned = hosts[0].ranks[0].cpus != ()
    with_gpus = hosts[0].ranks[0].gpus != ()
    if with_gpus and (gpu_selector is None or not _VARIABLE.fullmatch(gpu_selector)):
        raise ConfigError(f"gpu_selector must name an environment variable, got {gpu_selector!r}")
    names = [slot.host for slot in hosts]
    inner = argv
    if pinned or with_gpus:
        wrapper = [python, "-m", "core.rank_env", "--ppn", str(ppn), "--hosts", ",".join(names)]
        for slot in hosts:
            if pinned:
                wrapper += ["--cpus", encode_ranks([rank.cpus for rank in slot.ranks])]
            if with_gpus:
                wrapper += ["--gpus", encode_ranks([rank.gpus for rank in slot.ranks])]
        if with_gpus and gpu_selector:
            wrapper += ["--selector", gpu_selector]
        inner = [*wrapper, "--", *argv]
    nprocs = str(ppn * len(hosts))
    exe = launcher.executable
    flavour = launcher.flavour
    if flavour is Flavour.OPENMPI:
        head = [exe, "-n", nprocs, "--host", ",".join(f"{name}:{ppn}" for name in names)]
        head += ["--map-by", f"ppr:{ppn}:node", "--bind-to", "none"]
        head += _openmpi_extras(launcher, rsh_agent, as_root, env)
    elif flavour in (Flavour.MPICH, Flavour.INTEL_MPI):
        head = [exe, "-n", nprocs, "-ppn", str(ppn), "-hosts", ",".join(names)]
        head += ["-bind-to", "none"] if flavour is Flavour.MPICH else ["-genv", "I_MPI_PIN", "0"]
        head += _hydra_extras(launcher, rsh_agent, env)
    elif flavour is Flavour.PALS:
        head = [exe, "-n", nprocs, "--ppn", str(ppn), "--hosts", ",".join(names)]
        head += ["--cpu-bind", "none", *_pals_env(env)]
    else:
        per_rank = len(hosts[0].ranks[0].cpus)
        head = [exe, f"--nodes={len(hosts)}", f"--ntasks={nprocs}", f"--ntasks-per-node={ppn}"]
        head += [f"--nodelist={','.join(names)}", "--distribution=block", "--cpu-bind=none"]
        head += ["--overlap", "--kill-on-bad-exit=1"]
        head += [f"--cpus-per-task={per_rank}"] if per_rank else []
    return Command((*head, *inner), dict(env))


def _openmpi_extras(
    launcher: MpiLauncher, rsh_agent: str | None, as_root: bool | None, env: Mapping[str, str]
) -> list[str]:
    extras = []
    if as_root if as_root is not None else os.geteuid() == 0:
        extras.append("--allow-run-as-root")
    if rsh_agent:
        modern = launcher.version >= (5,)
        extras += ["--prtemca", "plm_ssh_agent"] if modern else ["--mca", "plm_rsh_agent"]
        extras.append(rsh_agent)
    for name, value in env.items():
        extras += ["-x", f"{name}={value}"]
    return extras


def _hydra_extras(
    launcher: MpiLauncher, rsh_agent: str | None, env: Mapping[str, str]
) -> list[str]:
    extras = []
    if rsh_agent:
        if launcher.flavour is Flavour.INTEL_MPI:
            extras += ["-bootstrap", "ssh", "-bootstrap-exec", rsh_agent]
        else:
            extras += ["-launcher", "ssh", "-launcher-exec", rsh_agent]
    for name, value in env.items():
        extras += ["-genv", name, value]
    return extras


def _pals_env(env: Mapping[str, str]) -> list[str]:
    return [word for name, value in env.items() for word in ("--env", f"{name}={value}")]


def _check_host(host: str) -> None:
    if not valid_host(host):
        raise ConfigError(f"host {host!r} is not a valid host name")


def _check_command(command: Sequence[str]) -> list[str]:
    if isinstance(command, str) or not command:
        raise ConfigError(f"command must be a non-empty argv list, got {command!r}")
    for word in command:
        if not isinstance(word, str) or "\0" in word:
            raise ConfigError(f"command word {word!r} is not a string without NUL bytes")
    return list(command)


def _check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(env or {})
    for name, value in env.items():
        if not _VARIABLE.fullmatch(name):
            raise ConfigError(f"environment variable name {name!r} is not valid")
        if not isinstance(value, str) or "\0" in value:
            raise ConfigError(f"environment variable {name} has a bad value {value!r}")
    return env


def _check_agent(launcher: MpiLauncher, rsh_agent: str | None) -> None:
    if rsh_agent is not None:
        usable = (Flavour.OPENMPI, Flavour.MPICH, Flavour.INTEL_MPI)
        if launcher.flavour not in usable:
            raise ConfigError(
                f"rsh_agent applies to Open MPI, MPICH and Intel MPI, not {launcher.flavour.value}"
            )
        if not rsh_agent or any(char.isspace() for char in rsh_agent):
            raise ConfigError(f"rsh_agent must be one program path, got {rsh_agent!r}")


def _check_layout(hosts: Sequence[HostSlots]) -> int:
    """Validate an MPI task's layout; returns its processes per node."""
    if not hosts:
        raise ConfigError("an MPI task needs at least one host")
    names = [slot.host for slot in hosts]
    for name in names:
        _check_host(name)
    if len(set(names)) != len(names):
        raise ConfigError(f"an MPI task lists a host twice: {names}")
    ppn = len(hosts[0].ranks)
    if ppn < 1 or any(len(slot.ranks) != ppn for slot in hosts):
        counts = {slot.host: len(slot.ranks) for slot in hosts}
        raise ConfigError(f"every host needs the same number (≥ 1) of ranks, got {counts}")
    ranks = [rank for slot in hosts for rank in slot.ranks]
    for what in ("cpus", "gpus"):
        given = [bool(getattr(rank, what)) for rank in ranks]
        if any(given) and not all(given):
            raise ConfigError(f"give {what} to every rank of an MPI task or to none")
    for slot in hosts:
        for local, rank in enumerate(slot.ranks):
            if any(
                not isinstance(cpu, int) or isinstance(cpu, bool) or cpu < 0 for cpu in rank.cpus
            ):
                raise ConfigError(f"{slot.host} rank {local}: CPU ids must be whole numbers ≥ 0")
            if any(not isinstance(gpu, str) or not valid_id(gpu) for gpu in rank.gpus):
                raise ConfigError(f"{slot.host} rank {local}: bad GPU id in {rank.gpus}")
    return ppn
