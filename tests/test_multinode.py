"""The launcher over several nodes, for real: hosts in network namespaces, each with its own sshd.

Everything runs *on* the simulated hosts (``tests.cluster``): the client on h1, sub-masters
started on h2 and h3 through ``mpiexec`` (Open MPI or MPICH) or ssh, ZeroMQ with CURVE across
the bridge. Needs root, iproute2 and OpenSSH (CI has them); skips with the reason elsewhere.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cluster, cluster_fixture

pytestmark = [pytest.mark.multihost, pytest.mark.mpi]
cluster = cluster_fixture(scope="module")
REPO = str(Path(__file__).resolve().parent.parent)
RUN = "ENSEMBLE_MCP_RUN"


def env_for(cluster: Cluster, flavour: str = "openmpi", **extra: str) -> dict[str, str]:
    env = {**os.environ, **cluster.mpi_env(flavour), **extra}
    env["PBS_NODEFILE"] = str(cluster.hostfile("pbs", slots=2))
    return env


class Driver:
    """``tests.multinode_driver`` running on h1; its JSON lines, read with a deadline."""

    def __init__(self, cluster: Cluster, args: dict[str, Any], env: dict[str, str]) -> None:
        self.process = cluster.popen(
            "h1", [sys.executable, "-m", "tests.multinode_driver", json.dumps(args)],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self._stderr_reader = threading.Thread(target=self._drain, daemon=True)
        self._stderr_reader.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put("")

    def _drain(self) -> None:
        assert self.process.stderr is not None
        self.stderr.extend(self.process.stderr)

    def read(self, key: str, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if not line:
                break
            message = json.loads(line)
            if key in message:
                return message[key] if len(message) == 1 else message
        self.process.kill()
        raise AssertionError(f"no {key!r} from the driver; its stderr ends with:\n{self.close()}")

    def close(self) -> str:
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        time.sleep(0.1)  # the stderr thread reads the rest
        return "".join(self.stderr)[-5000:]


def left_on(cluster: Cluster, run_id: str) -> dict[str, list[int]]:
    """Processes of the run still on each host (zombies excepted: nothing reaps them here)."""
    return {host: [p for p in cluster.pids_on(host, f"{RUN}={run_id}") if not _zombie(p)]
            for host in cluster.hosts}  # fmt: skip


def no_process_of(cluster: Cluster, run_id: str, timeout_s: float = 10.0) -> dict[str, list[int]]:
    deadline = time.monotonic() + timeout_s
    while True:
        left = {h: p for h, p in left_on(cluster, run_id).items() if p}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def strays(cluster: Cluster, before: dict[str, set[int]]) -> dict[str, list[str]]:
    """Processes on any host that were not there before, sshds and zombies excepted."""
    found = {}
    for host, argvs in ((h, cluster.cmdlines(h)) for h in cluster.hosts):
        extra = [
            " ".join(a) for p, a in argvs.items()
            if p not in before[host] and not _zombie(p) and "sshd" not in " ".join(a)
        ]  # fmt: skip
        if extra:
            found[host] = extra
    return found


@pytest.mark.parametrize(("nlevels", "flavour"), [(1, "openmpi"), (2, "openmpi"), (1, "mpich")])
def test_an_ensemble_file_spreads_over_every_node_of_a_pbs_allocation(
    cluster: Cluster, nlevels: int, flavour: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    work = Path("/var/tmp") / f"emcp-{os.getpid()}-{nlevels}-{flavour}"  # /tmp is per host
    work.mkdir(exist_ok=True)
    spec = {"ensembles": {"where": {"cmd_template": "hostname", "replica": "range(600)"}}}
    (work / "ensemble.json").write_text(json.dumps(spec))
    mpiexec = f"mpiexec.{flavour}"
    (work / "config.json").write_text(json.dumps(
        {"child_executor_name": "mpi", "nlevels": nlevels, "mpiexec": mpiexec}
    ))  # fmt: skip
    before = {h: set(cluster.pids_on(h)) for h in cluster.hosts}
    done = cluster.run(
        "h1",
        [sys.executable, "-m", "ensemble_mcp.cli", "run", str(work / "ensemble.json"), "--config",
         str(work / "config.json"), "--stdout", "--no-progress", "-o", str(work / "out.json")],
        env=env_for(cluster, flavour), cwd=REPO, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((work / "out.json").read_text())["results"]
    assert len(results) == 600
    assert {r["status"] for r in results} == {"success"}
    assert all(r["node"] == r["stdout"].strip() for r in results)  # each names its own host
    per_host = Counter(r["node"] for r in results)
    assert set(per_host) == set(cluster.hosts)
    assert min(per_host.values()) >= 600 // 5, per_host
    assert strays(cluster, before) == {}


def test_an_mcp_server_in_the_allocation_spreads_one_call_over_every_node(
    cluster: Cluster,
) -> None:
    port = 9700 + os.getpid() % 200
    env = env_for(cluster, ENSEMBLE_MCP_TOKEN="t" * 32)
    server = cluster.popen(
        "h1",
        [sys.executable, "-m", "ensemble_mcp.cli", "serve", "tests.multinode_server:server",
         "--port", str(port)],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        client = cluster.run(
            "h1", [sys.executable, "-m", "tests.multinode_server", str(port), "200"],
            env=env, cwd=REPO, timeout=120,
        )  # fmt: skip
        assert client.returncode == 0, client.stderr[-3000:]
        hosts = Counter(json.loads(client.stdout))
        assert sum(hosts.values()) == 200
        assert set(hosts) == set(cluster.hosts), hosts
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A cluster this test may break."""
    from tests.cluster import skip_if_unavailable

    skip_if_unavailable()
    with Cluster(3) as fresh:
        yield fresh


def test_killing_a_remote_sub_master_runs_its_tasks_again_elsewhere_once_each(
    own_cluster: Cluster,
) -> None:
    cluster = own_cluster
    args = {"config": {"child_executor_name": "mpi", "nlevels": 1, "heartbeat_timeout": 5,
                       "return_stdout": True},
            "argv": ["sh", "-c", "sleep 1; hostname"], "count": 24}  # fmt: skip
    driver = Driver(cluster, args, env_for(cluster))
    up = driver.read("run_id")
    assert up["slots"] == 6
    driver.read("submitted")
    mark = f"{RUN}={up['run_id']}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until h3 runs tasks
        if any("sleep" in " ".join(a) for p, a in cluster.cmdlines("h3").items()
               if p in cluster.pids_on("h3", mark)):  # fmt: skip
            break
        time.sleep(0.05)
    relays = [p for p, a in cluster.cmdlines("h3").items()
              if "core" in a and "master" in a and p in cluster.pids_on("h3", mark)]  # fmt: skip
    assert len(relays) == 1
    os.kill(relays[0], signal.SIGKILL)
    results = driver.read("results", timeout=120)
    err = driver.close()
    assert len(results) == 24 and len({r["id"] for r in results}) == 24
    assert {r["status"] for r in results} == {"success"}, [r["error"] for r in results]
    again = [r for r in results if r["attempts"] == 2]
    assert again, "no task ran again"
    assert all(r["stdout"] in ("h1", "h2") for r in again)
    assert "sub-master on h3 was lost" in err
    assert no_process_of(cluster, up["run_id"]) == {}


def test_sigkill_of_the_client_leaves_no_process_on_any_host_within_10_s(
    own_cluster: Cluster,
) -> None:
    cluster = own_cluster
    before = {h: set(cluster.pids_on(h)) for h in cluster.hosts}
    args = {"config": {"child_executor_name": "mpi", "nlevels": 1, "heartbeat_interval": 0.5,
                       "heartbeat_timeout": 3},
            "argv": ["sleep", "60"], "count": 6}  # fmt: skip
    driver = Driver(cluster, args, env_for(cluster))
    up = driver.read("run_id")
    driver.read("submitted")
    mark = f"{RUN}={up['run_id']}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(
        any("sleep" in " ".join(cluster.cmdlines(h).get(p, [])) for p in cluster.pids_on(h, mark))
        for h in cluster.hosts
    ):
        time.sleep(0.05)
    driver.process.kill()
    driver.close()
    killed = time.monotonic()
    assert no_process_of(cluster, up["run_id"], timeout_s=10) == {}
    while strays(cluster, before) and time.monotonic() - killed < 10:
        time.sleep(0.1)
    assert strays(cluster, before) == {}  # MPI daemons too


def test_no_secret_appears_in_any_command_line_on_any_host(cluster: Cluster) -> None:
    args = {"config": {"child_executor_name": "mpi", "nlevels": 1}, "argv": ["sleep", "3"],
            "count": 6}  # fmt: skip
    driver = Driver(cluster, args, env_for(cluster))
    up = driver.read("run_id")
    driver.read("submitted")
    time.sleep(0.5)  # the tasks run: every process of the tree is up
    argvs = {h: cluster.cmdlines(h) for h in cluster.hosts}
    driver.read("results", timeout=60)
    driver.close()
    assert len(up["secrets"]) == 2
    assert sum(len(a) for a in argvs.values()) > 10
    for host, by_pid in argvs.items():
        for argv in by_pid.values():
            joined = " ".join(argv)
            assert not any(secret in joined for secret in up["secrets"]), (host, argv)


@pytest.mark.parametrize("flavour", ["openmpi", "mpich"])
def test_an_mpi_task_over_two_nodes_runs_one_rank_on_each(cluster: Cluster, flavour: str) -> None:
    args = {"config": {"child_executor_name": "mpi", "nlevels": 1, "return_stdout": True,
                       "mpiexec": f"mpiexec.{flavour}"},
            "argv": ["hostname"], "count": 1, "task": {"nnodes": 2, "ppn": 1}}  # fmt: skip
    driver = Driver(cluster, args, env_for(cluster, flavour))
    driver.read("run_id")
    (result,) = driver.read("results")
    driver.close()
    assert result["status"] == "success", result["error"]
    assert len(result["hosts"]) == 2 and len(set(result["hosts"])) == 2
    assert sorted(result["stdout"].split()) == sorted(result["hosts"])


def test_an_mpi_task_over_two_nodes_killed_at_its_timeout_leaves_no_rank(
    cluster: Cluster,
) -> None:
    task = {"nnodes": 2, "ppn": 1, "timeout": 3}
    args = {"config": {"child_executor_name": "mpi", "nlevels": 1},
            "argv": ["sleep", "60"], "count": 1, "task": task}  # fmt: skip
    before = {h: set(cluster.pids_on(h)) for h in cluster.hosts}
    driver = Driver(cluster, args, env_for(cluster))
    up = driver.read("run_id")
    (result,) = driver.read("results")
    assert result["status"] == "timeout"
    assert len(set(result["hosts"])) == 2
    sleeps = {h: [" ".join(a) for a in cluster.cmdlines(h).values() if a[:2] == ["sleep", "60"]]
              for h in result["hosts"]}  # fmt: skip
    assert sleeps == {h: [] for h in result["hosts"]}  # every rank is gone as the task ends
    driver.close()
    assert no_process_of(cluster, up["run_id"]) == {}
    assert strays(cluster, before) == {}


def wait_for_tasks_on(cluster: Cluster, host: str, mark: str, word: str = "sleep") -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(
            word in " ".join(cluster.cmdlines(host).get(p, [])) for p in cluster.pids_on(host, mark)
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"no task started on {host}")


def test_losing_a_whole_node_runs_its_tasks_again_on_the_others(own_cluster: Cluster) -> None:
    cluster = own_cluster
    args = {"config": {"child_executor_name": "mpi", "nlevels": 1, "heartbeat_interval": 0.5,
                       "heartbeat_timeout": 3, "return_stdout": True},
            "argv": ["sh", "-c", "sleep 1; hostname"], "count": 18}  # fmt: skip
    driver = Driver(cluster, args, env_for(cluster))
    up = driver.read("run_id")
    driver.read("submitted")
    wait_for_tasks_on(cluster, "h3", f"{RUN}={up['run_id']}")
    cluster.kill_host("h3")  # its sshd and every process, network cut: nothing says goodbye
    results = driver.read("results", timeout=120)
    err = driver.close()
    assert len(results) == 18 and {r["status"] for r in results} == {"success"}
    assert {r["stdout"] for r in results} <= {"h1", "h2", "h3"}
    moved = [r for r in results if r["attempts"] == 2]
    assert moved and all(r["stdout"] in ("h1", "h2") for r in moved)
    assert all("sub-master on h3 was lost" in r["history"][0] for r in moved)
    assert "went silent" in err or "was lost" in err


def test_a_worker_killed_on_a_remote_node_costs_one_attempt(cluster: Cluster) -> None:
    args = {"config": {"child_executor_name": "mpi", "nlevels": 1, "return_stdout": True},
            "argv": ["sh", "-c", "sleep 2; hostname"], "count": 6}  # fmt: skip
    driver = Driver(cluster, args, env_for(cluster))
    up = driver.read("run_id")
    driver.read("submitted")
    mark = f"{RUN}={up['run_id']}"
    wait_for_tasks_on(cluster, "h2", mark)
    marked = cluster.pids_on("h2", mark)
    workers = [p for p, a in cluster.cmdlines("h2").items()
               if a[-3:] == ["core", "worker", "-"] and p in marked]  # fmt: skip
    os.kill(workers[0], signal.SIGKILL)
    results = driver.read("results", timeout=60)
    driver.close()
    assert {r["status"] for r in results} == {"success"}
    assert sorted(r["attempts"] for r in results) == [1, 1, 1, 1, 1, 2]
    assert no_process_of(cluster, up["run_id"]) == {}


CANCEL = """
import json, sys, time
from core import Launcher, LauncherConfig, Task
with Launcher(launcher_config=LauncherConfig(child_executor_name="mpi", nlevels=1)) as launcher:
    print(json.dumps({"run_id": launcher.run_id}), flush=True)
    batch = launcher.submit_tasks([Task(task_id=f"t{i}", executable=["sleep", "60"])
                                   for i in range(12)])
    sys.stdin.readline()  # the test says when every node runs tasks
    batch.cancel()
    print(json.dumps({"results": sorted({r.status.value for r in batch.results(timeout=60)})}),
          flush=True)
"""


def test_cancel_reaches_every_node_and_leaves_no_process(cluster: Cluster) -> None:
    client = cluster.popen(
        "h1", [sys.executable, "-c", CANCEL], env=env_for(cluster), cwd=REPO, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert client.stdout is not None and client.stdin is not None
    run_id = json.loads(client.stdout.readline())["run_id"]
    for host in cluster.hosts:
        wait_for_tasks_on(cluster, host, f"{RUN}={run_id}")
    client.stdin.write("go\n")
    client.stdin.flush()
    assert json.loads(client.stdout.readline()) == {"results": ["cancelled"]}
    client.wait(timeout=60)
    for host in cluster.hosts:
        assert [a for a in cluster.cmdlines(host).values() if a[:2] == ["sleep", "60"]] == []
    assert no_process_of(cluster, run_id) == {}


STRANGER = """
import sys, zmq
from core.protocol import Heartbeat
from core.transport import Channel, CurveKeys, new_context
keys = CurveKeys.generate()
role, endpoint = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
ctx = new_context()
if role == "parent":
    router = Channel.bind_router(ctx, "tcp://0.0.0.0:0", keys)
    print(router.endpoint.rsplit(":", 1)[1], keys.server_public.decode(), flush=True)
    print("got" if router.socket.poll(4000) else "nothing", flush=True)
else:  # a stranger: the right server key, a key pair of its own
    public, secret = zmq.curve_keypair()
    server = sys.stdin.readline().strip().encode()
    spy = Channel.connect_dealer(ctx, endpoint, b"spy", CurveKeys(server, b"", public, secret))
    spy.send(Heartbeat())
    spy.socket.poll(5000)
"""


def test_a_stranger_on_another_node_is_refused_by_curve(cluster: Cluster) -> None:
    parent = cluster.popen("h1", [sys.executable, "-c", STRANGER, "parent"], cwd=REPO, text=True,
                           stdout=subprocess.PIPE)  # fmt: skip
    assert parent.stdout is not None
    port, server_key = parent.stdout.readline().split()
    endpoint = f"tcp://{cluster.addresses['h1']}:{port}"
    stranger = cluster.popen("h2", [sys.executable, "-c", STRANGER, "spy", endpoint], cwd=REPO,
                             text=True, stdin=subprocess.PIPE)  # fmt: skip
    assert stranger.stdin is not None
    stranger.stdin.write(server_key + "\n")
    stranger.stdin.flush()
    assert parent.stdout.readline().strip() == "nothing"
    parent.wait(timeout=30)
    stranger.kill()
    stranger.wait()
