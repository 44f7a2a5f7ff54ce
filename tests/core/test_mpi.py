"""Launcher detection and command lines, run for real with the installed MPIs and an sshd.

Open MPI (Debian 4.1) and MPICH (Debian 4.0) run here; Intel MPI, Cray PALS and srun do not, so
their ``--version`` texts are recorded ones and their command lines are checked as argv. Every
real ``mpiexec`` runs under a wall-clock timeout in its own session, and each test checks that
no process carrying its mark is left. Multi-host runs come with the network-namespace harness;
here the multi-host builders are checked as argv.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.config import hostname
from core.errors import ConfigError, LaunchError
from core.mpi import (
    Command,
    Flavour,
    HostSlots,
    MpiLauncher,
    RankSlots,
    clear_detection_cache,
    detect_launcher,
    identify,
    launch_on_host,
    mpi_task_command,
    ssh_command,
)
from tests.conftest import wait_until_gone
from tests.ensemble_mcp.sshd import free_port, keygen, sshd_missing_reason

ROOT = str(Path(__file__).resolve().parents[2])
RUN_TIMEOUT_S = 90.0

# ---------------------------------------------------------------- detection

# `--version` outputs. Open MPI 4.1.4 and MPICH 4.0.2: this machine (Debian 12); Open MPI 5.0.11:
# the PyPI wheel. Recorded elsewhere: PRRTE (prterun), Intel MPI, Slurm (upstream and Debian's
# slurm-wlm). PALS: no recording was available; PALS is recognised by its name in the text or by
# its install path (/opt/cray/pals/<version>/bin/mpiexec), and the text below is illustrative.
VERSION_TEXTS = {
    "openmpi4": (
        "mpiexec.openmpi (OpenRTE) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/\n"
    ),
    "openmpi5": "mpiexec (Open MPI) 5.0.11\n\nReport bugs to https://www.open-mpi.org/community/help/\n",
    "prrte": "prterun (PRRTE) 3.0.12\n\nReport bugs to https://github.com/openpmix/prrte\n",
    "mpich": (
        "HYDRA build details:\n"
        "    Version:                                 4.0.2\n"
        "    Release Date:                            Thu Apr  7 12:34:45 CDT 2022\n"
        "    Process Manager:                         pmi\n"
        "    Launchers available:                     ssh rsh fork slurm ll lsf sge\n"
    ),
    "intel": (
        "Intel(R) MPI Library for Linux* OS, Version 2021.10 Build 20230619 (id: c2e19c2f3e)\n"
        "Copyright 2003-2023, Intel Corporation.\n"
    ),
    "srun": "slurm 23.02.7\n",
    "srun-debian": "slurm-wlm 22.05.8\n",
    "pals": "mpiexec (Cray PALS) 1.2.12\n",
}


@pytest.mark.parametrize(
    ("name", "flavour", "version"),
    [
        ("openmpi4", Flavour.OPENMPI, (4, 1, 4)),
        ("openmpi5", Flavour.OPENMPI, (5, 0, 11)),
        ("prrte", Flavour.OPENMPI, (5,)),
        ("mpich", Flavour.MPICH, (4, 0, 2)),
        ("intel", Flavour.INTEL_MPI, (2021, 10)),
        ("srun", Flavour.SRUN, (23, 2, 7)),
        ("srun-debian", Flavour.SRUN, (22, 5, 8)),
        ("pals", Flavour.PALS, (1, 2, 12)),
    ],
)
def test_version_texts_identify_the_flavour(
    name: str, flavour: Flavour, version: tuple[int, ...]
) -> None:
    assert identify(VERSION_TEXTS[name]) == (flavour, version)


def test_pals_is_also_recognised_by_its_install_path() -> None:
    assert identify("mpiexec version 1.2\n", "/opt/cray/pals/1.2/bin/mpiexec") == (Flavour.PALS, ())


def test_an_unknown_launcher_is_not_guessed() -> None:
    assert identify("Usage: frobnicate [options]\n", "/usr/bin/frobnicate") is None


needs_openmpi = pytest.mark.skipif(
    shutil.which("mpiexec.openmpi") is None, reason="needs mpiexec.openmpi (apt: openmpi-bin)"
)
needs_mpich = pytest.mark.skipif(
    shutil.which("mpiexec.mpich") is None, reason="needs mpiexec.mpich (apt: mpich)"
)


@pytest.mark.mpi
@needs_openmpi
def test_the_installed_open_mpi_is_detected() -> None:
    launcher = detect_launcher("mpiexec.openmpi")
    assert (launcher.executable, launcher.flavour) == ("mpiexec.openmpi", Flavour.OPENMPI)
    assert launcher.version[:1] == (4,)


@pytest.mark.mpi
@needs_mpich
def test_the_installed_mpich_is_detected() -> None:
    launcher = detect_launcher("mpiexec.mpich")
    assert (launcher.executable, launcher.flavour) == ("mpiexec.mpich", Flavour.MPICH)
    assert launcher.version[:1] == (4,)


def fake_launcher(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_detection_is_cached_per_resolved_path(tmp_path: Path) -> None:
    counter = tmp_path / "calls"
    real = fake_launcher(
        tmp_path / "bin", "mpiexec.fake", f"echo x >> {counter}\necho 'slurm 23.02.7'\n"
    )
    (tmp_path / "bin" / "srun").symlink_to(real)
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    clear_detection_cache()
    first = detect_launcher("mpiexec.fake", env=env)
    second = detect_launcher("srun", env=env)
    assert (first.flavour, second.flavour) == (Flavour.SRUN, Flavour.SRUN)
    assert (first.executable, second.executable) == ("mpiexec.fake", "srun")
    assert counter.read_text() == "x\n"  # the second name resolves to the same file: no rerun


def test_a_missing_launcher_says_what_to_do() -> None:
    with pytest.raises(LaunchError, match=r"'no-such-mpiexec' not found on PATH; load your MPI"):
        detect_launcher("no-such-mpiexec", env={"PATH": "/nonexistent"})


def test_an_unrecognised_launcher_shows_its_output(tmp_path: Path) -> None:
    fake_launcher(tmp_path / "bin", "mpiexec", "echo 'Frobnicator 2.0'\nexit 3\n")
    with pytest.raises(LaunchError, match=r"cannot tell which MPI launcher .* Frobnicator 2.0"):
        detect_launcher("mpiexec", env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})


def test_a_hanging_launcher_is_cut_off_and_leaves_nothing(tmp_path: Path, mark: str) -> None:
    fake_launcher(tmp_path / "bin", "mpiexec", "sleep 60\necho 'slurm 23.02.7'\n")
    name, value = mark.split("=", 1)
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", name: value}
    with pytest.raises(LaunchError, match=r"--version' did not answer within 0.5 s"):
        detect_launcher("mpiexec", timeout_s=0.5, env=env)
    assert wait_until_gone(mark) == []


# ---------------------------------------------------------------- command lines (argv)

OMPI4 = MpiLauncher("mpiexec", Flavour.OPENMPI, (4, 1, 4))
OMPI5 = MpiLauncher("mpirun", Flavour.OPENMPI, (5, 0, 3))
MPICH = MpiLauncher("mpiexec.hydra", Flavour.MPICH, (4, 0, 2))
INTEL = MpiLauncher("mpiexec", Flavour.INTEL_MPI, (2021, 10))
PALS = MpiLauncher("/opt/cray/pals/1.2/bin/mpiexec", Flavour.PALS)
SRUN = MpiLauncher("srun", Flavour.SRUN, (23, 2))
CHILD = ["/venv/bin/python", "-m", "core", "submaster", "opts"]
MARK = {"ENSEMBLE_MCP_RUN": "r1", "PYTHONPATH": "/a:/b"}


@pytest.mark.parametrize(
    ("launcher", "extra", "argv"),
    [
        (
            OMPI4,
            {"rsh_agent": "/x/sshw", "as_root": True},
            [
                "mpiexec", "-n", "1", "--host", "n7", "--bind-to", "none", "--allow-run-as-root",
                "--mca", "plm_rsh_agent", "/x/sshw",
                "-x", "ENSEMBLE_MCP_RUN=r1", "-x", "PYTHONPATH=/a:/b",
            ],
        ),
        (
            OMPI5,
            {"rsh_agent": "/x/sshw", "as_root": False},
            [
                "mpirun", "-n", "1", "--host", "n7", "--bind-to", "none",
                "--prtemca", "plm_ssh_agent", "/x/sshw",
                "-x", "ENSEMBLE_MCP_RUN=r1", "-x", "PYTHONPATH=/a:/b",
            ],
        ),
        (
            MPICH,
            {"rsh_agent": "/x/sshw"},
            [
                "mpiexec.hydra", "-n", "1", "-hosts", "n7", "-launcher", "ssh", "-launcher-exec",
                "/x/sshw", "-genv", "ENSEMBLE_MCP_RUN", "r1", "-genv", "PYTHONPATH", "/a:/b",
            ],
        ),
        (
            INTEL,
            {"rsh_agent": "/x/sshw"},
            [
                "mpiexec", "-n", "1", "-hosts", "n7", "-bootstrap", "ssh", "-bootstrap-exec",
                "/x/sshw", "-genv", "ENSEMBLE_MCP_RUN", "r1", "-genv", "PYTHONPATH", "/a:/b",
            ],
        ),
        (
            PALS,
            {},
            [
                "/opt/cray/pals/1.2/bin/mpiexec", "-n", "1", "--ppn", "1", "--hosts", "n7",
                "--cpu-bind", "none", "--env", "ENSEMBLE_MCP_RUN=r1", "--env", "PYTHONPATH=/a:/b",
            ],
        ),
        (
            SRUN,
            {"srun_cpus": 64},
            [
                "srun", "--nodes=1", "--ntasks=1", "--nodelist=n7", "--cpu-bind=none",
                "--overlap", "--cpus-per-task=64",
            ],
        ),
    ],
    ids=["openmpi4", "openmpi5", "mpich", "intel", "pals", "srun"],
)  # fmt: skip
def test_launch_on_host_argv_per_flavour(
    launcher: MpiLauncher, extra: dict[str, object], argv: list[str]
) -> None:
    command = launch_on_host(launcher, "n7", CHILD, env=MARK, **extra)  # type: ignore[arg-type]
    assert command == Command((*argv, *CHILD), MARK)


def test_open_mpi_root_permission_follows_the_effective_user() -> None:
    argv = launch_on_host(OMPI4, "n7", CHILD).argv
    assert ("--allow-run-as-root" in argv) == (os.geteuid() == 0)
    assert "--allow-run-as-root" not in launch_on_host(MPICH, "n7", CHILD, as_root=True).argv


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: launch_on_host(OMPI4, "-oProxyCommand=x", CHILD), "host '-oProxyCommand=x'"),
        (lambda: launch_on_host(OMPI4, "n1;reboot", CHILD), "host 'n1;reboot' is not a valid"),
        (lambda: launch_on_host(OMPI4, "n1", []), "command must be a non-empty argv list"),
        (lambda: launch_on_host(OMPI4, "n1", "python -m core"), "non-empty argv list"),  # type: ignore[arg-type]
        (lambda: launch_on_host(OMPI4, "n1", ["a\0b"]), "without NUL bytes"),
        (lambda: launch_on_host(OMPI4, "n1", CHILD, env={"A-B": "1"}), "name 'A-B' is not valid"),
        (lambda: launch_on_host(OMPI4, "n1", CHILD, env={"A": 1}), "A has a bad value 1"),  # type: ignore[dict-item]
        (lambda: launch_on_host(PALS, "n1", CHILD, rsh_agent="/x"), "rsh_agent applies to Open"),
        (lambda: launch_on_host(SRUN, "n1", CHILD, rsh_agent="/x"), "not srun"),
        (lambda: launch_on_host(OMPI4, "n1", CHILD, rsh_agent="ssh -F c"), "one program path"),
        (lambda: launch_on_host(MPICH, "n1", CHILD, srun_cpus=4), "srun_cpus applies to srun"),
        (lambda: ssh_command("n1", CHILD, ssh=()), "the ssh program is missing"),
    ],
)  # fmt: skip
def test_bad_launch_requests_are_refused(call: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call()  # type: ignore[operator]


def layout(*hosts: str, cpus: bool = True, gpus: bool = True) -> list[HostSlots]:
    """Two ranks per host; host i gets CPUs 10i.. and GPUs 'i.0', 'i.1'."""
    return [
        HostSlots(
            host,
            tuple(
                RankSlots(
                    cpus=(10 * i + 2 * r, 10 * i + 2 * r + 1) if cpus else (),
                    gpus=(f"{i}.{r}",) if gpus else (),
                )
                for r in range(2)
            ),
        )
        for i, host in enumerate(hosts)
    ]


WRAPPED = [
    "/py", "-m", "core.rank_env", "--ppn", "2", "--hosts", "h1,h2,h3",
    "--cpus", "0,1;2,3", "--gpus", "0.0;0.1",
    "--cpus", "10,11;12,13", "--gpus", "1.0;1.1",
    "--cpus", "20,21;22,23", "--gpus", "2.0;2.1",
    "--selector", "ZE_AFFINITY_MASK", "--", "./app", "in put",
]  # fmt: skip


@pytest.mark.parametrize(
    ("launcher", "head"),
    [
        (
            OMPI4,
            [
                "mpiexec", "-n", "6", "--host", "h1:2,h2:2,h3:2", "--map-by", "ppr:2:node",
                "--bind-to", "none", "-x", "K=v",
            ],
        ),
        (
            MPICH,
            [
                "mpiexec.hydra", "-n", "6", "-ppn", "2", "-hosts", "h1,h2,h3", "-bind-to", "none",
                "-genv", "K", "v",
            ],
        ),
        (
            INTEL,
            [
                "mpiexec", "-n", "6", "-ppn", "2", "-hosts", "h1,h2,h3", "-genv", "I_MPI_PIN", "0",
                "-genv", "K", "v",
            ],
        ),
        (
            PALS,
            [
                "/opt/cray/pals/1.2/bin/mpiexec", "-n", "6", "--ppn", "2", "--hosts", "h1,h2,h3",
                "--cpu-bind", "none", "--env", "K=v",
            ],
        ),
        (
            SRUN,
            [
                "srun", "--nodes=3", "--ntasks=6", "--ntasks-per-node=2", "--nodelist=h1,h2,h3",
                "--distribution=block", "--cpu-bind=none", "--overlap", "--kill-on-bad-exit=1",
                "--cpus-per-task=2",
            ],
        ),
    ],
    ids=["openmpi", "mpich", "intel", "pals", "srun"],
)  # fmt: skip
def test_mpi_task_argv_on_three_hosts_per_flavour(launcher: MpiLauncher, head: list[str]) -> None:
    command = mpi_task_command(
        launcher,
        layout("h1", "h2", "h3"),
        ["./app", "in put"],
        gpu_selector="ZE_AFFINITY_MASK",
        env={"K": "v"},
        as_root=False,
        python="/py",
    )
    assert command == Command((*head, *WRAPPED), {"K": "v"})


def test_an_mpi_task_without_cpus_or_gpus_runs_the_program_directly() -> None:
    command = mpi_task_command(
        MPICH, layout("h1", "h2", cpus=False, gpus=False), ["./app"], as_root=False
    )
    assert command.argv == (
        "mpiexec.hydra", "-n", "4", "-ppn", "2", "-hosts", "h1,h2", "-bind-to", "none", "./app",
    )  # fmt: skip


def test_gpus_only_need_no_cpu_pinning() -> None:
    argv = mpi_task_command(
        OMPI4, layout("h1", cpus=False), ["./app"], gpu_selector="CUDA_VISIBLE_DEVICES"
    ).argv
    wrapper = argv[argv.index("core.rank_env") + 1 : argv.index("--")]
    assert list(wrapper) == [
        "--ppn", "2", "--hosts", "h1", "--gpus", "0.0;0.1", "--selector", "CUDA_VISIBLE_DEVICES",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("hosts", "selector", "message"),
    [
        ([], None, "needs at least one host"),
        ([HostSlots("h1", ())], None, r"same number \(≥ 1\) of ranks"),
        (
            [HostSlots("h1", (RankSlots(),)), HostSlots("h2", (RankSlots(), RankSlots()))],
            None,
            r"same number \(≥ 1\) of ranks, got \{'h1': 1, 'h2': 2\}",
        ),
        ([HostSlots("h1", (RankSlots(),)), HostSlots("h1", (RankSlots(),))], None, "a host twice"),
        ([HostSlots("h 1", (RankSlots(),))], None, "host 'h 1' is not a valid host name"),
        (
            [HostSlots("h1", (RankSlots(cpus=(0,)), RankSlots()))],
            None,
            "give cpus to every rank of an MPI task or to none",
        ),
        ([HostSlots("h1", (RankSlots(cpus=(-1,)),))], None, "CPU ids must be whole numbers"),
        ([HostSlots("h1", (RankSlots(cpus=(True,)),))], None, "CPU ids must be whole numbers"),
        ([HostSlots("h1", (RankSlots(gpus=("0;1",)),))], "CUDA_VISIBLE_DEVICES", "bad GPU id"),
        ([HostSlots("h1", (RankSlots(gpus=("0",)),))], None, "gpu_selector must name"),
        ([HostSlots("h1", (RankSlots(gpus=("0",)),))], "CUDA-X", "gpu_selector must name"),
    ],
)
def test_inconsistent_mpi_layouts_are_refused(
    hosts: list[HostSlots], selector: str | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        mpi_task_command(OMPI4, hosts, ["./app"], gpu_selector=selector)


# ---------------------------------------------------------------- real runs on this host


def run_command(
    command: Command, mark: str, stdin: bytes = b"", timeout_s: float = RUN_TIMEOUT_S
) -> subprocess.CompletedProcess[bytes]:
    """Run in a new session under a timeout (SIGTERM, then SIGKILL to the session).

    Afterwards nothing marked ``mark`` may be left.
    """
    name, value = mark.split("=", 1)
    env = {**os.environ, "PYTHONPATH": ROOT, **command.env, name: value}
    env.setdefault("OMPI_MCA_btl_base_warn_component_unused", "0")
    process = subprocess.Popen(
        command.argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(stdin, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
        pytest.fail(f"{command.argv[0]} ran past {timeout_s} s: {err.decode()[-2000:]}")
    finally:
        assert wait_until_gone(mark) == []
    return subprocess.CompletedProcess(command.argv, process.returncode, out, err)


REPORT = (
    "import json,os;"
    "status=open('/proc/self/status').read();"
    "cpus=[l.split()[1] for l in status.splitlines() if l.startswith('Cpus_allowed_list')][0];"
    "print(json.dumps({'rank': os.environ.get('OMPI_COMM_WORLD_RANK') or os.environ['PMI_RANK'],"
    "'cpus': cpus, 'gpus': os.environ.get('CUDA_VISIBLE_DEVICES')}), flush=True)"
)

LAUNCHERS = [
    pytest.param("mpiexec.openmpi", marks=[pytest.mark.mpi, needs_openmpi], id="openmpi"),
    pytest.param("mpiexec.mpich", marks=[pytest.mark.mpi, needs_mpich], id="mpich"),
]


@pytest.fixture
def two_cpus() -> tuple[int, int]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two usable CPUs")
    return cpus[0], cpus[1]


@pytest.mark.parametrize("executable", LAUNCHERS)
def test_two_ranks_run_on_the_two_cpus_given_with_their_own_gpus(
    executable: str, two_cpus: tuple[int, int], mark: str
) -> None:
    first, second = two_cpus
    hosts = [HostSlots(hostname(), (RankSlots((second,), ("7",)), RankSlots((first,), ("8", "9"))))]
    command = mpi_task_command(
        detect_launcher(executable),
        hosts,
        [sys.executable, "-c", REPORT],
        gpu_selector="CUDA_VISIBLE_DEVICES",
    )
    done = run_command(command, mark)
    assert done.returncode == 0, done.stderr.decode()
    # ranks write at once: the launcher may join their lines, so read each object on its own
    reports = [json.loads(text) for text in re.findall(rb"\{[^{}]*\}", done.stdout)]
    assert sorted(reports, key=lambda r: r["rank"]) == [
        {"rank": "0", "cpus": str(second), "gpus": "7"},
        {"rank": "1", "cpus": str(first), "gpus": "8,9"},
    ]


WAIT_FOR_PEER = (
    "import os,sys,time,pathlib;"
    "me,peer=pathlib.Path(sys.argv[1]),pathlib.Path(sys.argv[2]);"
    "status=open('/proc/self/status').read();"
    "me.write_text([l.split()[1] for l in status.splitlines() "
    "if l.startswith('Cpus_allowed_list')][0]);"
    "deadline=time.monotonic()+60\n"
    "while not peer.exists() and time.monotonic()<deadline: time.sleep(0.01)\n"
    "print('overlapped' if peer.exists() else 'alone')"
)


@pytest.mark.parametrize("executable", LAUNCHERS)
def test_two_concurrent_one_rank_tasks_stay_on_their_own_cpus(
    executable: str, two_cpus: tuple[int, int], tmp_path: Path, mark: str
) -> None:
    launcher = detect_launcher(executable)
    files = [tmp_path / "a", tmp_path / "b"]
    name, value = mark.split("=", 1)
    processes = []
    for cpu, me, peer in ((two_cpus[0], files[0], files[1]), (two_cpus[1], files[1], files[0])):
        command = mpi_task_command(
            launcher,
            [HostSlots(hostname(), (RankSlots((cpu,)),))],
            [sys.executable, "-c", WAIT_FOR_PEER, str(me), str(peer)],
        )
        processes.append(
            subprocess.Popen(
                command.argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": ROOT, **command.env, name: value},
                start_new_session=True,
            )
        )
    try:
        outputs = [p.communicate(timeout=RUN_TIMEOUT_S) for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        assert wait_until_gone(mark) == []
    assert [p.returncode for p in processes] == [0, 0], [err.decode() for _, err in outputs]
    assert [out for out, _ in outputs] == [b"overlapped\n", b"overlapped\n"]
    assert [f.read_text() for f in files] == [str(two_cpus[0]), str(two_cpus[1])]


ECHO_ONE_LINE = (
    "import sys,json,os; line=sys.stdin.readline();"
    "print(json.dumps([line, sys.argv[1:], os.environ.get('NM_CHILD_VAR')]), flush=True)"
)
SECRET = "key=Zm9vYmFy; $(rm -rf /) 'quoted' \"double\" ünï\n"


@pytest.mark.parametrize("executable", LAUNCHERS)
def test_one_launched_process_gets_its_stdin_line_argv_and_env(executable: str, mark: str) -> None:
    args = ["a b", "", "-x", "$(echo no)"]
    command = launch_on_host(
        detect_launcher(executable),
        hostname(),
        [sys.executable, "-c", ECHO_ONE_LINE, *args],
        env={"NM_CHILD_VAR": "v,1 2"},
    )
    done = run_command(command, mark, stdin=SECRET.encode())
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout) == [SECRET, args, "v,1 2"]


@pytest.mark.parametrize("executable", LAUNCHERS)
def test_a_launched_process_is_not_pinned(executable: str, mark: str) -> None:
    script = "import os; print(sorted(os.sched_getaffinity(0)))"
    command = launch_on_host(
        detect_launcher(executable), hostname(), [sys.executable, "-c", script]
    )
    done = run_command(command, mark)
    assert done.stdout.decode() == f"{sorted(os.sched_getaffinity(0))}\n"


# ---------------------------------------------------------------- ssh, with a real sshd


@dataclass
class SshHost:
    """An sshd on 127.0.0.1 reachable as host ``nmtest`` through ``ssh -F config``."""

    config: Path
    process: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
def ssh_host(tmp_path: Path) -> Iterator[SshHost]:
    if reason := sshd_missing_reason():
        pytest.skip(reason)
    root = tmp_path / "ssh"
    root.mkdir()
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    host_key, user_key = keygen(root / "host_ed25519"), keygen(root / "user_ed25519")
    (root / "authorized_keys").write_text(user_key.with_suffix(".pub").read_text())
    port = free_port()
    (root / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1:{port}\nHostKey {host_key}\nPidFile {root / 'pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nLogLevel ERROR\n"
    )
    kind, blob = host_key.with_suffix(".pub").read_text().split()[:2]
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {kind} {blob}\n")
    (root / "config").write_text(
        f"Host nmtest\n  HostName 127.0.0.1\n  Port {port}\n  User {getpass.getuser()}\n"
        f"  IdentityFile {user_key}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {root / 'known_hosts'}\n  StrictHostKeyChecking yes\n"
        "  LogLevel ERROR\n"
    )
    sshd = ["/usr/sbin/sshd", "-D", "-f", str(root / "sshd_config"), "-E", str(root / "log")]
    if os.geteuid() == 0 and shutil.which("unshare"):
        # Sessions start the login shell, which sources ~/.bashrc; root's may run slow tools
        # (pyenv). Give this sshd a private mount namespace with an empty ~/.bashrc.
        empty = root / "empty_bashrc"
        empty.write_text("")
        bashrc = Path.home() / ".bashrc"
        mount = f"mount --bind {empty} {bashrc} && " if bashrc.exists() else ""
        script = f'{mount}exec "$@"'
        sshd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *sshd]
    process = subprocess.Popen(sshd, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:  # no readiness event across unshare: poll the port, bounded
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"sshd did not start: {(root / 'log').read_text()}")
                time.sleep(0.02)
        yield SshHost(root / "config", process, root / "log")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


PRINT_ARGV = (
    "import json,sys,os;"
    "print(json.dumps([sys.argv[1:], sys.stdin.readline(), os.environ.get('NM_V')]))"
)
NASTY = [
    "two words",
    "it's",
    'say "hi"',
    "a;b",
    "$(touch /tmp/nm-pwned)",
    "`touch /tmp/nm-pwned`",
    "$HOME",
    "*",
    "",
    "-n",
    "new\nline",
    "back\\slash",
    "tab\there",
    "ünïcode",
]


@pytest.mark.ssh
def test_ssh_delivers_every_argument_byte_for_byte_and_stdin(ssh_host: SshHost, mark: str) -> None:
    command = ssh_command(
        "nmtest",
        [sys.executable, "-c", PRINT_ARGV, *NASTY],
        env={"NM_V": "x y;$(z)"},
        ssh=("ssh", "-F", str(ssh_host.config)),
    )
    assert command.argv[:8] == (
        "ssh", "-F", str(ssh_host.config), "-o", "BatchMode=yes", "-T", "--", "nmtest",
    )  # fmt: skip
    done = run_command(command, mark, stdin=SECRET.encode())
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout) == [NASTY, SECRET, "x y;$(z)"]
    assert not Path("/tmp/nm-pwned").exists()


@pytest.mark.ssh
def test_ssh_keeps_host_key_checking_on(ssh_host: SshHost, tmp_path: Path, mark: str) -> None:
    config = ssh_host.config.read_text()
    stranger = tmp_path / "config_unknown_key"
    stranger.write_text(
        config.replace("StrictHostKeyChecking yes", "StrictHostKeyChecking ask").replace(
            "known_hosts", "known_hosts_empty"
        )
    )
    command = ssh_command("nmtest", ["true"], ssh=("ssh", "-F", str(stranger)))
    done = run_command(command, mark)
    assert done.returncode == 255
    assert b"Host key verification failed" in done.stderr
