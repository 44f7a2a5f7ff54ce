"""The per-rank wrapper: which node and rank it is, what it sets, and that it execs cleanly.

Under ``mpiexec`` (tests/core/test_mpi.py) the launcher sets the rank variables; here the tests
set them directly to cover every launcher's names and the error paths.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.rank_env import RankEnvError, decode_ranks, encode_ranks, plan

ROOT = str(Path(__file__).resolve().parents[2])
CMD = ["--", "prog", "arg"]


def test_encode_and_decode_are_inverse() -> None:
    layout = [[0, 1], [2], [10, 11, 12]]
    text = encode_ranks(layout)
    assert text == "0,1;2;10,11,12"
    assert decode_ranks(text, "--cpus") == [["0", "1"], ["2"], ["10", "11", "12"]]
    assert encode_ranks([["0.0", "0.1"], ["MIG-1234"]]) == "0.0,0.1;MIG-1234"


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}, "5"),
        ({"PMI_RANK": "3", "MPI_LOCALRANKID": "1"}, "5"),
        ({"PMIX_RANK": "3"}, "5"),
        ({"PALS_RANKID": "2", "PALS_LOCAL_RANKID": "0"}, "4"),
        ({"PMI_RANK": "0", "PMI_LOCAL_RANK": "0"}, "0"),
        ({"SLURM_PROCID": "1", "SLURM_LOCALID": "1"}, "1"),
    ],
)
def test_node_and_local_rank_come_from_any_launchers_variables(
    variables: dict[str, str], expected: str
) -> None:
    argv = ["--ppn", "2", "--hosts", "h1,h2", "--gpus", "0;1", "--gpus", "4;5", "--selector", "G"]
    _, variables_set, _ = plan([*argv, *CMD], variables, "elsewhere")
    assert variables_set == {"G": expected}


def test_the_host_name_decides_the_node_when_it_is_listed() -> None:
    argv = ["--ppn", "1", "--hosts", "a,b.example.org", "--cpus", "1", "--cpus", "7"]
    # srun may order nodes differently: rank 0 runs on b, and b's CPU is used
    command, _, pin = plan([*argv, *CMD], {"SLURM_PROCID": "0"}, "b.cluster")
    assert (command, pin) == (["prog", "arg"], {7})


def test_one_node_needs_no_global_rank() -> None:
    argv = ["--ppn", "2", "--cpus", "0,1;2,3"]
    assert plan([*argv, *CMD], {"MPI_LOCALRANKID": "1"}, "h")[2] == {2, 3}


def test_cpus_and_gpus_together() -> None:
    argv = ["--ppn", "2", "--hosts", "h", "--cpus", "4;5", "--gpus", "0.0,0.1;1.0"]
    argv += ["--selector", "ZE_AFFINITY_MASK"]
    command, variables, pin = plan([*argv, *CMD], {"PMI_RANK": "0"}, "x")
    assert (command, variables, pin) == (["prog", "arg"], {"ZE_AFFINITY_MASK": "0.0,0.1"}, {4})


def test_a_rank_may_have_no_gpu() -> None:
    argv = ["--ppn", "2", "--gpus", "0;", "--selector", "CUDA_VISIBLE_DEVICES"]
    assert plan([*argv, *CMD], {"PMI_RANK": "1"}, "h")[1] == {"CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--ppn", "1", "prog"], {"PMI_RANK": "0"}, "missing '--' before the command"),
        (["--ppn", "1", "--"], {"PMI_RANK": "0"}, "no command after '--'"),
        (["--ppn", "0", *CMD], {"PMI_RANK": "0"}, "--ppn must be a whole number >= 1"),
        (["--ppn", *CMD], {"PMI_RANK": "0"}, "--ppn needs a value"),
        (["--ppn"], {}, "missing '--'"),
        (["--cpus", "0", "--ppn", *CMD[:1]], {}, "no command after"),
        (["--bogus", "1", *CMD], {"PMI_RANK": "0"}, "unknown option '--bogus'"),
        (["--gpus", "0", *CMD], {"PMI_RANK": "0"}, "--gpus needs --selector"),
        (["--gpus", "0", "--selector", "A-B", *CMD], {}, "--selector 'A-B' is not a variable"),
        (["--cpus", "0;1", *CMD], {"PMI_RANK": "0"}, "a node lists 2 rank.s., --ppn is 1"),
        (["--cpus", "a", *CMD], {"PMI_RANK": "0"}, "local rank 0 needs CPU numbers"),
        (["--cpus", "0 1", *CMD], {"PMI_RANK": "0"}, "'0 1' in '0 1' is not a valid id"),
        (["--cpus", "0", "--cpus", "1", *CMD], {"PMI_RANK": "5"}, "rank 5 falls on node 5"),
        (["--cpus", "0", "--cpus", "1", *CMD], {}, "cannot tell which of 2 nodes"),
        (["--cpus", "0", *CMD], {}, "no rank variable is set"),
        (["--cpus", "0", "--hosts", "a,b", *CMD], {"PMI_RANK": "0"}, "--cpus gives 1 node"),
        (["--ppn", "2", "--cpus", "0;1", *CMD], {"MPI_LOCALRANKID": "2"}, "local rank 2 is beyond"),
    ],
)
def test_bad_arguments_and_unknown_ranks_are_explained(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(RankEnvError, match=message):
        plan(argv, env, "h")


# ---------------------------------------------------------------- the real exec


def run_wrapper(
    argv: list[str], env: dict[str, str], stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "core.rank_env", *argv],
        input=stdin,
        capture_output=True,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": ROOT, **env},
        timeout=60,
        check=False,
    )


def test_the_wrapper_pins_sets_the_selector_and_execs_with_stdin() -> None:
    cpu = max(os.sched_getaffinity(0))
    script = (
        "import os,sys; print(sorted(os.sched_getaffinity(0)), os.environ['CUDA_VISIBLE_DEVICES'],"
        " sys.stdin.read(), os.getppid() == int(sys.argv[1]))"
    )
    argv = ["--ppn", "1", "--cpus", str(cpu), "--gpus", "3,1", "--selector", "CUDA_VISIBLE_DEVICES"]
    argv += ["--", sys.executable, "-c", script, str(os.getpid())]
    done = run_wrapper(argv, {"PMI_RANK": "0"}, stdin=b"secret line\n")
    assert done.returncode == 0, done.stderr
    # exec, not a child: the program's parent is this test process
    assert done.stdout.decode() == f"[{cpu}] 3,1 secret line\n True\n"


def test_the_programs_exit_code_is_the_ranks_exit_code() -> None:
    done = run_wrapper(["--", "sh", "-c", "exit 7"], {"PMI_RANK": "0"})
    assert done.returncode == 7


def test_a_missing_program_exits_127_with_its_name() -> None:
    done = run_wrapper(["--", "no-such-program-xyz"], {"PMI_RANK": "0"})
    assert (done.returncode, done.stderr) == (
        127,
        b"core.rank_env: no-such-program-xyz: command not found\n",
    )


def test_a_program_that_cannot_run_exits_126(tmp_path: Path) -> None:
    not_executable = tmp_path / "prog"
    not_executable.write_text("#!/bin/sh\n")
    done = run_wrapper(["--", str(not_executable)], {"PMI_RANK": "0"})
    assert done.returncode == 126
    assert b"Permission denied" in done.stderr


def test_a_cpu_that_does_not_exist_exits_126_naming_the_allowed_ones() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    done = run_wrapper(["--cpus", "4095", "--", "true"], {"PMI_RANK": "0"})
    assert done.returncode == 126
    assert f"cannot pin to CPUs [4095] (allowed here: {allowed})".encode() in done.stderr


def test_a_partly_missing_cpu_set_is_refused_rather_than_narrowed() -> None:
    cpu = min(os.sched_getaffinity(0))
    done = run_wrapper(["--cpus", f"{cpu},4095", "--", "true"], {"PMI_RANK": "0"})
    assert (done.returncode, done.stderr) == (
        126,
        b"core.rank_env: CPUs [4095] do not exist here\n",
    )


def test_bad_arguments_exit_2() -> None:
    done = run_wrapper(["--cpus", "0", "--", "true"], {})
    assert done.returncode == 2
    assert done.stderr.startswith(b"core.rank_env: no rank variable is set")
