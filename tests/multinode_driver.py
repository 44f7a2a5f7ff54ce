"""A client for multi-node tests, run *on* a simulated host: ``python -m tests.multinode_driver``.

The test process cannot reach the namespace hosts, so it starts this on the first host and reads
its JSON lines from stdout: ``{"run_id": ..., "secrets": [...]}`` once the launcher is up,
``{"submitted": n}`` once the tasks are in, ``{"results": [...]}`` at the end. The one argument is
a JSON object: ``config`` (LauncherConfig fields), ``argv`` (the command of every task, with
``{i}`` replaced by the task's index), ``count``, and optional ``system`` (SystemConfig fields)
and ``task`` (extra Task fields).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from core import Launcher, LauncherConfig, SystemConfig, Task
from core.transport import CurveKeys

_secrets: list[str] = []
_generate = CurveKeys.generate.__func__  # type: ignore[attr-defined]


def _recording_generate(cls: type[CurveKeys]) -> CurveKeys:
    keys: CurveKeys = _generate(cls)
    _secrets.extend(k.decode() for k in (keys.server_secret, keys.client_secret))
    return keys


CurveKeys.generate = classmethod(_recording_generate)  # type: ignore[assignment, method-assign]


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def main(args: dict[str, Any]) -> None:
    config = LauncherConfig(**args.get("config", {}))
    system = SystemConfig(**args["system"]) if "system" in args else None
    with Launcher(system, config) as launcher:
        say(run_id=launcher.run_id, slots=launcher.num_slots, secrets=_secrets)
        argv = args["argv"]
        extra = args.get("task", {})
        tasks = [
            Task(task_id=f"t{i}", executable=[a.replace("{i}", str(i)) for a in argv], **extra)
            for i in range(args["count"])
        ]
        batch = launcher.submit_tasks(tasks)
        say(submitted=len(tasks))
        results = batch.results(timeout=args.get("timeout", 300))
        say(
            results=[
                {
                    "id": r.task_id, "status": r.status.value, "node": r.node, "hosts": r.hosts,
                    "cpus": r.cpus, "gpus": r.gpus, "attempts": r.attempts, "history": r.history,
                    "stdout": (r.stdout or "").strip(), "error": r.exception,
                    "type": r.exception_type,
                }
                for r in results
            ]
        )  # fmt: skip


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
