"""The simulated cluster (tests/cluster.py) gives hosts that behave like separate nodes."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import paramiko
import pytest

from tests.cluster import (
    ETC_NETNS,
    NETNS_DIR,
    STATE_ROOT,
    Cluster,
    HostDownError,
    remove_stale_clusters,
    skip_if_unavailable,
    unavailable_reason,
)
from tests.cluster import cluster_fixture as _cluster_fixture

pytestmark = pytest.mark.multihost
cluster = _cluster_fixture(scope="module")

ROOT = Path(__file__).resolve().parent.parent
needs_openmpi = pytest.mark.skipif(
    shutil.which("mpiexec.openmpi") is None,
    reason="mpiexec.openmpi missing (apt-get install openmpi-bin)",
)
needs_mpich = pytest.mark.skipif(
    shutil.which("mpiexec.mpich") is None, reason="mpiexec.mpich missing (apt-get install mpich)"
)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone: PID 1 here does not reap orphans)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def netns_names() -> set[str]:
    return set(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else set()


def root_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return sorted(line.split(":")[1].strip() for line in out.splitlines())


def read_ready_line(process: subprocess.Popen[str]) -> str:
    """The first stdout line of ``process`` (it prints one once it is set up)."""
    assert process.stdout is not None
    return process.stdout.readline().strip()


# ----------------------------------------------------------------------------- hosts


def test_three_hosts_come_up_each_with_its_own_name_and_address(cluster: Cluster) -> None:
    assert cluster.hosts == ["h1", "h2", "h3"]
    prefix = cluster.subnet.removesuffix("0/24")
    assert cluster.addresses == {"h1": prefix + "1", "h2": prefix + "2", "h3": prefix + "3"}
    for host in cluster.hosts:
        assert cluster.run(host, ["hostname"]).stdout == f"{host}\n"
        shown = cluster.run(host, ["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
        assert f"inet {cluster.addresses[host]}/24" in shown
        assert cluster.sshd_pid(host) in cluster.pids_on(host)


def test_a_command_on_a_host_inherits_no_descriptor_of_the_test_process(cluster: Cluster) -> None:
    listing = cluster.run("h2", ["ls", "/proc/self/fd"], env={**os.environ}).stdout.split()
    assert sorted(listing, key=int) == ["0", "1", "2", "3"]  # 3: ls's own directory handle


def test_every_host_resolves_every_other_by_name(cluster: Cluster) -> None:
    done = cluster.run("h1", ["getent", "hosts", "h3"])
    assert done.stdout.split() == [cluster.addresses["h3"], "h3"]


def test_ssh_from_h1_to_h2_runs_on_h2_by_name_and_by_address(cluster: Cluster) -> None:
    by_name = cluster.run("h1", [*cluster.ssh_argv("h2"), "hostname"], timeout=30)
    by_address = cluster.run(
        "h1", [*cluster.ssh_argv(cluster.addresses["h2"]), "hostname"], timeout=30
    )
    assert (by_name.returncode, by_name.stdout, by_name.stderr) == (0, "h2\n", "")
    assert (by_address.returncode, by_address.stdout) == (0, "h2\n")


def test_plain_ssh_works_between_hosts_as_on_a_cluster_with_keys_set_up(cluster: Cluster) -> None:
    done = cluster.run("h3", ["ssh", "h1", "hostname"], timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, "h1\n", "")
    listing = cluster.run("h3", ["ls", os.path.expanduser("~/.ssh")]).stdout.split()
    assert listing == ["config", "id_ed25519", "id_ed25519.pub", "known_hosts"]


@needs_mpich
def test_mpich_with_its_default_launcher_reaches_other_hosts(cluster: Cluster) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_")}
    argv = ["mpiexec.mpich", "-hosts", "h2,h3", "-n", "2", "hostname"]
    done = cluster.run("h1", argv, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == ["h2", "h3"]


def test_ssh_refuses_a_host_it_has_no_key_for(cluster: Cluster) -> None:
    done = cluster.run("h1", [*cluster.ssh_argv("h9"), "true"], timeout=30)
    assert done.returncode == 255
    assert "h9" in done.stderr


def test_known_hosts_lists_explicit_names_and_addresses_that_paramiko_reads(
    cluster: Cluster,
) -> None:
    text = cluster.known_hosts.read_text()
    assert "*" not in text and "?" not in text
    keys = paramiko.HostKeys(str(cluster.known_hosts))
    for host in cluster.hosts:
        blob = cluster.host_key_line(host).split()[2]
        assert keys.lookup(host)["ssh-ed25519"].get_base64() == blob
        assert keys.lookup(cluster.addresses[host])["ssh-ed25519"].get_base64() == blob
    assert len({cluster.host_key_line(h).split()[2] for h in cluster.hosts}) == 3


def test_ssh_sessions_skip_roots_shell_start_up_files(cluster: Cluster) -> None:
    done = cluster.run("h1", [*cluster.ssh_argv("h2"), 'echo "[$PYENV_ROOT]"; wc -c < ~/.bashrc'])
    assert done.stdout.split() == ["[]", "0"]
    bashrc = Path.home() / ".bashrc"
    if bashrc.is_file():
        assert bashrc.stat().st_size > 0, "the file shadowed on the hosts is left as it was here"


def test_each_host_has_a_private_tmp_and_dev_shm_shared_by_its_own_processes(
    cluster: Cluster,
) -> None:
    name = f"cluster-test-{uuid.uuid4().hex}"
    for folder in ("/tmp", "/dev/shm"):
        path = f"{folder}/{name}"
        assert cluster.run("h1", ["sh", "-c", f"echo on-h1 > {path}"]).returncode == 0
        assert cluster.run("h1", ["cat", path]).stdout == "on-h1\n"
        assert cluster.run("h1", [*cluster.ssh_argv("h1"), "cat", path]).stdout == "on-h1\n"
        assert cluster.run("h2", ["test", "-e", path]).returncode == 1
        assert cluster.run("h1", [*cluster.ssh_argv("h2"), "test", "-e", path]).returncode == 1
        assert not os.path.exists(path)


# ----------------------------------------------------------------------------- network


ROUTER = """
import socket, sys, zmq
router = zmq.Context().socket(zmq.ROUTER)
router.bind(f"tcp://{sys.argv[1]}:5555")
print("bound", flush=True)
identity, message = router.recv_multipart()
router.send_multipart([identity, message + b" via " + socket.gethostname().encode()])
"""

DEALER = """
import socket, sys, zmq
dealer = zmq.Context().socket(zmq.DEALER)
dealer.connect(f"tcp://{sys.argv[1]}:5555")
dealer.send(b"hello from " + socket.gethostname().encode())
if not dealer.poll(10_000):
    sys.exit("no reply in 10 s")
print(dealer.recv().decode())
"""


def test_zeromq_router_on_h1_and_dealer_on_h2_exchange_a_message(cluster: Cluster) -> None:
    address = cluster.addresses["h1"]
    with cluster.popen(
        "h1", [sys.executable, "-c", ROUTER, address], stdout=subprocess.PIPE, text=True
    ) as router:
        try:
            assert read_ready_line(router) == "bound"
            dealer = cluster.run("h2", [sys.executable, "-c", DEALER, address], timeout=30)
            assert (dealer.returncode, dealer.stderr) == (0, "")
            assert dealer.stdout == "hello from h2 via h1\n"
            assert router.wait(timeout=10) == 0
        finally:
            router.kill()


def test_the_root_namespace_has_no_address_on_the_clusters_subnet(cluster: Cluster) -> None:
    shown = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True)
    assert cluster.subnet.removesuffix("0/24") not in shown.stdout
    assert cluster.addresses["h1"] not in shown.stdout


# ----------------------------------------------------------------------------- MPI


@needs_openmpi
def test_openmpi_on_h1_starts_one_rank_on_h2_and_one_on_h3(cluster: Cluster) -> None:
    hostfile = cluster.hostfile("openmpi", hosts=["h2", "h3"])
    argv = ["mpiexec.openmpi", "--hostfile", str(hostfile), "-n", "2", "hostname"]
    done = cluster.run("h1", argv, env=cluster.mpi_env("openmpi"), timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == ["h2", "h3"]


@needs_mpich
def test_mpich_on_h1_starts_one_rank_on_h2_and_one_on_h3(cluster: Cluster) -> None:
    hostfile = cluster.hostfile("mpich", hosts=["h2", "h3"])
    argv = ["mpiexec.mpich", "-f", str(hostfile), "-n", "2", "hostname"]
    done = cluster.run("h1", argv, env=cluster.mpi_env("mpich"), timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == ["h2", "h3"]


@needs_mpich
def test_a_hung_hydra_is_killed_with_its_session_at_the_timeout(cluster: Cluster) -> None:
    before = set(cluster.pids_on("h1"))
    argv = ["mpiexec.mpich", "-hosts", "h9", "-n", "1", "hostname"]
    with pytest.raises(subprocess.TimeoutExpired) as hung:
        cluster.run("h1", argv, env=cluster.mpi_env("mpich"), timeout=1)
    assert "h9" in str(hung.value.stderr)
    assert set(cluster.pids_on("h1")) == before


MPI4PY_HELLO = (  # one write per rank: ranks' output is interleaved write by write
    "import sys; from mpi4py import MPI\n"
    "sys.stdout.write(f'{MPI.COMM_WORLD.Get_size()} {MPI.Get_processor_name()}\\n')"
)


@pytest.mark.parametrize(
    "flavour",
    [pytest.param("openmpi", marks=needs_openmpi), pytest.param("mpich", marks=needs_mpich)],
)
def test_mpi4py_ranks_on_two_hosts_see_a_world_of_two(cluster: Cluster, flavour: str) -> None:
    pytest.importorskip("mpi4py", reason="mpi4py is not installed in this environment")
    hosts = cluster.hostfile(flavour, hosts=["h2", "h3"])
    hostfile_flag = "--hostfile" if flavour == "openmpi" else "-f"
    argv = [
        f"mpiexec.{flavour}",
        hostfile_flag,
        str(hosts),
        "-n",
        "2",
        sys.executable,
        "-c",
        MPI4PY_HELLO,
    ]
    done = cluster.run("h1", argv, env=cluster.mpi_env(flavour, mpi4py=True), timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == ["2 h2", "2 h3"]


def test_hostfiles_list_each_host_in_the_kinds_launchers_read(cluster: Cluster) -> None:
    assert cluster.hostfile("pbs", slots=2).read_text() == "h1\nh1\nh2\nh2\nh3\nh3\n"
    assert cluster.hostfile("plain", hosts=["h3", "h1"]).read_text() == "h3\nh1\n"
    assert (
        cluster.hostfile("openmpi", slots=4).read_text() == "h1 slots=4\nh2 slots=4\nh3 slots=4\n"
    )
    assert cluster.hostfile("mpich", slots=3, hosts=["h2"]).read_text() == "h2:3\n"
    with pytest.raises(ValueError, match="kind must be one of"):
        cluster.hostfile("slurm")
    with pytest.raises(ValueError, match="unknown host 'h7'"):
        cluster.hostfile("pbs", hosts=["h7"])
    with pytest.raises(ValueError, match="flavour must be 'openmpi' or 'mpich'"):
        cluster.mpi_env("intel")


# ----------------------------------------------------------------------------- processes


SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"


def test_pids_on_finds_a_marked_process_on_its_host_only(cluster: Cluster) -> None:
    mark = f"CLUSTER_TEST_MARK={uuid.uuid4().hex}"
    name, value = mark.split("=")
    local_argv = [sys.executable, "-c", SLEEPER, "started-here"]
    remote_argv = [sys.executable, "-c", SLEEPER, "started-over-ssh"]
    started = cluster.popen(
        "h2", local_argv, env={**os.environ, name: value}, stdout=subprocess.PIPE, text=True
    )
    remote = cluster.popen(
        "h1",
        [*cluster.ssh_argv("h2"), "exec env", mark, shlex.join(remote_argv)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert read_ready_line(started) == read_ready_line(remote) == "ready"
        on_h2 = cluster.pids_on("h2", mark)
        assert started.pid in on_h2 and len(on_h2) == 2
        over_ssh = (set(on_h2) - {started.pid}).pop()
        assert cluster.cmdlines("h2")[over_ssh] == remote_argv
        assert cluster.cmdlines("h2")[started.pid] == local_argv
        assert cluster.pids_on("h3", mark) == [] and cluster.pids_on("h1", mark) == []
        assert started.pid not in cluster.pids_on("h3")
    finally:
        started.kill()
        remote.kill()
        started.communicate()
        remote.communicate()


@pytest.mark.parametrize("cut_network", [True, False])
def test_kill_host_leaves_nothing_on_it_and_spares_the_others(cut_network: bool) -> None:
    skip_if_unavailable()
    connect = (
        "import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], 22), timeout=0.5)\n"
    )
    connect += "except OSError as e:\n    print(type(e).__name__)\nelse:\n    print('connected')\n"
    with Cluster(3) as small:
        sleeper = small.popen(
            "h2", ["sh", "-c", "echo ready; exec sleep 60"], stdout=subprocess.PIPE, text=True
        )
        session = small.popen(
            "h1",
            [*small.ssh_argv("h2"), "echo ready; exec sleep 62"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert read_ready_line(sleeper) == read_ready_line(session) == "ready"
        sshd = small.sshd_pid("h2")
        assert len(small.pids_on("h2")) >= 4  # sshd, its session's sshd and sleep, our sleep

        small.kill_host("h2", cut_network=cut_network)

        assert small.pids_on("h2") == []
        assert not alive(sshd) and sleeper.wait(timeout=5) == -signal.SIGKILL
        with pytest.raises(HostDownError, match="h2 was killed"):
            small.popen("h2", ["true"])
        probe = small.run("h1", [sys.executable, "-c", connect, small.addresses["h2"]], timeout=10)
        assert probe.stdout.strip() == ("TimeoutError" if cut_network else "ConnectionRefusedError")
        if not cut_network:
            assert (
                session.wait(timeout=10) == 255
            )  # the kernel closed h2's end: ssh sees it at once
        assert small.run("h3", [*small.ssh_argv("h1"), "hostname"]).stdout == "h1\n"
        session.kill()
        session.communicate()
        sleeper.communicate()


# ----------------------------------------------------------------------------- lifetime


def test_teardown_after_a_failing_body_leaves_no_process_namespace_file_or_mount() -> None:
    skip_if_unavailable()
    links_before = root_links()
    started: list[int] = []
    with pytest.raises(RuntimeError, match="the test body failed"), Cluster(3) as doomed:
        names = {doomed.netns(h) for h in doomed.hosts} | {f"emcc{doomed.octet}-sw"}
        state_dir, octet = doomed.state_dir, doomed.octet
        for host in doomed.hosts:
            child = doomed.popen(
                host, ["sh", "-c", "echo ready; exec sleep 60"], stdout=subprocess.PIPE, text=True
            )
            assert read_ready_line(child) == "ready"
            orphan = doomed.run(host, ["sh", "-c", "setsid sleep 63 >/dev/null 2>&1 & echo $!"])
            started += [child.pid, int(orphan.stdout), doomed.sshd_pid(host)]
        assert names <= netns_names()
        raise RuntimeError("the test body failed")
    assert [pid for pid in started if alive(pid)] == []
    assert names.isdisjoint(netns_names())
    assert not any(name.startswith(f"emcc{octet}-") for name in os.listdir(ETC_NETNS))
    assert not state_dir.exists() and not (STATE_ROOT / f"{octet}.lock").exists()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert not any(name in mounts for name in names)
    assert root_links() == links_before


def test_two_live_clusters_get_distinct_subnets_and_stale_removal_spares_both() -> None:
    skip_if_unavailable()
    with Cluster(2) as first, Cluster(2) as second:
        assert first.subnet != second.subnet
        assert {first.netns(h) for h in first.hosts}.isdisjoint(
            {second.netns(h) for h in second.hosts}
        )
        remove_stale_clusters()
        for each in (first, second):
            assert each.run("h2", [*each.ssh_argv("h1"), "hostname"]).stdout == "h1\n"


def test_a_killed_runs_leftovers_are_removed_and_only_those() -> None:
    skip_if_unavailable()
    script = (
        "import time\nfrom tests.cluster import Cluster\n"
        "c = Cluster(2).start()\n"
        "print(c.octet, *map(c.netns, c.hosts), *map(c.sshd_pid, c.hosts), flush=True)\n"
        "time.sleep(120)\n"
    )
    with Cluster(2) as bystander:
        owner = subprocess.Popen(
            [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        try:
            fields = read_ready_line(owner).split()
        finally:
            owner.kill()
            owner.wait(timeout=10)
        octet, names, sshds = int(fields[0]), fields[1:3], [int(pid) for pid in fields[3:]]
        assert set(names) <= netns_names() and all(alive(pid) for pid in sshds), "left behind"

        removed = remove_stale_clusters()

        assert {f"netns {name}" for name in names} <= set(removed)
        assert set(names).isdisjoint(netns_names())
        assert [pid for pid in sshds if alive(pid)] == []
        assert not (STATE_ROOT / str(octet)).exists()
        assert bystander.run("h1", [*bystander.ssh_argv("h2"), "hostname"]).stdout == "h2\n"


def test_the_reason_to_skip_names_root_when_not_root() -> None:
    reason = unavailable_reason(euid=1000)
    assert reason is not None and "needs root" in reason and "uid 1000" in reason


def test_the_cli_lists_a_live_cluster(cluster: Cluster) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.cluster", "list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert f"{cluster.subnet}  owner pid {os.getpid()}  live" in done.stdout.splitlines()


def test_the_cli_up_prints_how_to_enter_a_host_and_tears_down_on_ctrl_c() -> None:
    skip_if_unavailable()
    up = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster", "up", "-n", "2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert up.stdout is not None
        lines = []
        while (line := up.stdout.readline()) not in (
            "",
            "Ctrl-C (or SIGTERM) here tears it down.\n",
        ):
            lines.append(line)
        assert line, "the CLI ended before it was up"
        subnet = lines[0].split()[1]
        enter = next(line for line in lines if line.startswith("  h2 ")).split("enter: ")[1].split()
        assert enter[-1] == "bash"
        on_h2 = subprocess.run(
            [*enter[:-1], "hostname"], capture_output=True, text=True, timeout=10
        )
        assert on_h2.stdout == "h2\n"
    finally:
        up.send_signal(signal.SIGINT)
        out, err = up.communicate(timeout=30)
    assert (up.returncode, out, err) == (0, "SIGINT: tearing down\n", "")
    octet = subnet.split(".")[2]
    assert not any(name.startswith(f"emcc{octet}-") for name in netns_names())
