"""From the user's configs and the run's nodes to what the top master starts.

Pure apart from reading this host's name and the route to the other nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.children import NodeConfig, TreeOptions, WorkerSettings
from core.config import LauncherConfig, SystemConfig, hostname
from core.errors import ConfigError
from core.inventory import PRESETS, probe_node
from core.master import TopPlan
from core.nodes import NodeSpec
from core.protocol import SlotInfo
from core.transport import CurveKeys
from core.tree import check_topology, top_shares


@dataclass(frozen=True, slots=True)
class RunPlan:
    """Everything the top master needs to start the run."""

    config: LauncherConfig
    tree: TreeOptions
    top: TopPlan
    nodes: tuple[NodeSpec, ...]


def plan_run(
    system_config: SystemConfig | None,
    launcher_config: LauncherConfig | None,
    nodes: list[NodeSpec],
    *,
    run_id: str,
    pin: bool,
    log_dir: str | None,
    cwd: str,
) -> RunPlan:
    """Resolve the configuration for ``nodes`` and lay out the tree's top.

    Raises:
        ConfigError: a setting that cannot work over these nodes (say ``nlevels=0`` on several
            nodes, or children started by ``multiprocessing`` on another node).
    """
    if not nodes:
        raise ConfigError("the run has no node")
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise ConfigError(f"node list names a node twice: {names}")
    here = hostname()
    local = names == [here]
    config = launcher_config or LauncherConfig.auto(len(nodes))
    if launcher_config is None and not local and config.nlevels == 0:
        config = LauncherConfig.auto(2)  # one node, not this one: it needs a sub-master there
    check_topology(len(nodes), config.nlevels, config.nchildren, local)
    remote = [n for n in names if n != here]
    if remote and config.child_executor_name == "multiprocessing":
        raise ConfigError(
            f"child_executor_name='multiprocessing' starts processes on this host ({here}) only, "
            f"but the run has other nodes ({', '.join(remote[:5])}"
            f"{', ...' if len(remote) > 5 else ''}); use 'mpi' or 'ssh'"
        )
    tcp = bool(remote) or config.comm_name == "zmq"
    if system_config is not None:
        cpus, gpus = tuple(system_config.cpus), tuple(str(g) for g in system_config.gpus)
        preset = PRESETS.get(system_config.name.lower())
        found_selector = preset.gpu_selector if preset is not None else None
    else:  # this node as it is; the other nodes' sub-masters probe their own
        found = probe_node()
        cpus, gpus, found_selector = found.cpus, found.gpus, found.gpu_selector
    explicit = system_config is not None
    node_config = NodeConfig(
        cpus=cpus if explicit else None,
        gpus=gpus if explicit else None,
        slots=tuple((n.name, n.slots) for n in nodes if n.slots is not None),
    )
    selector = config.gpu_selector or found_selector or "ZE_AFFINITY_MASK"
    worker = WorkerSettings(
        pin=pin, return_stdout=config.return_stdout, tail_bytes=config.tail_bytes,
        gpu_selector=selector, mpiexec=config.mpiexec,
        task_mpi=config.task_executor_name == "mpi",
        report_interval_s=config.report_interval if config.worker_logs else 0.0,
    )  # fmt: skip
    launcher = config.child_executor_name if remote else "multiprocessing"
    tree = TreeOptions(
        run_id=run_id, node=here, levels=config.nlevels, nchildren=config.nchildren,
        local_tcp=config.comm_name == "zmq", bind_host=config.bind_host,
        keys=CurveKeys.generate() if tcp else None,
        remote_launcher=(launcher, config.mpiexec), node_config=node_config, worker=worker,
        heartbeat_interval_s=config.heartbeat_interval,
        heartbeat_timeout_s=config.heartbeat_timeout, launch_timeout_s=config.launch_timeout,
        log_dir=log_dir, cwd=cwd,
    )  # fmt: skip
    cap = nodes[0].slots if local else None
    if cap is not None:
        cpus = cpus[:cap]
    if config.nlevels == 0:
        slots = tuple(SlotInfo(f"{here}:{cpu}", here, cpu) for cpu in cpus)
        top = TopPlan(slots=slots, gpus=gpus)
    else:
        shares = top_shares(names, config.nlevels, config.nchildren, cpus if local else ())
        top = TopPlan(shares=tuple(shares))
    return RunPlan(config, tree, top, tuple(nodes))
