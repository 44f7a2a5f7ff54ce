"""Captured output is bounded by ``LauncherConfig.tail_bytes``, and the cut says how much went."""

from __future__ import annotations

import re
import sys

from core import Launcher, LauncherConfig, TaskStatus
from core.task import TaskOptions

FLOOD = (
    "import sys; sys.stdout.write('o' * 3_000_000 + 'END-OUT'); "
    "sys.stderr.write('e' * 2_000_000 + 'END-ERR'); sys.exit(4)"
)


def test_a_command_flooding_stdout_and_stderr_keeps_only_the_tail_and_counts_the_rest() -> None:
    config = LauncherConfig(nlevels=0, tail_bytes=1000)
    with Launcher(launcher_config=config, return_stdout=True) as launcher:
        (result,) = launcher.submit_commands(
            [[sys.executable, "-c", FLOOD]], options=TaskOptions(timeout=60)
        ).results(timeout=90)

    assert (result.status, result.returncode) == (TaskStatus.FAILED, 4)
    streams = [(result.stdout, 3_000_007, "END-OUT"), (result.stderr, 2_000_007, "END-ERR")]
    for text, total, end in streams:
        assert text is not None
        marker = re.match(r"\[\.\.\. (\d+) bytes cut \.\.\.\]\n", text)
        assert marker, text[:80]
        assert int(marker.group(1)) == total - 1000
        assert len(text) - marker.end() == 1000
        assert text.endswith(end)
