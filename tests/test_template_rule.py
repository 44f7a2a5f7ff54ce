"""One ``{name}`` template rule: an ensemble file and a command-template tool run the same argv.

Every template of the table is filled with every value through three real paths: an ensemble
file expanded by ``core.ensemble.expand_tasks`` and run by a launcher (without and with
``"shell": true``), and a command-template tool called through an in-process MCP client over
JSON-RPC. Each task runs ``/usr/bin/printf``, which prints the arguments it really got, each
ended by a NUL; all three must print the words the table expects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from mcp import Client

from core import Launcher
from core.ensemble import expand_tasks
from ensemble_mcp.server import Server

PRINT_ARGS = "/usr/bin/printf '%s\\0'"

# Each value, and its text under the rule.
VALUES: list[tuple[Any, str]] = [
    ("plain", "plain"),
    ("a b", "a b"),
    ("it's", "it's"),
    ('say "hi"', 'say "hi"'),
    ("x; rm -rf /", "x; rm -rf /"),
    ("$(id -u)", "$(id -u)"),
    ("`id`", "`id`"),
    ("$HOME", "$HOME"),
    ("a\\b", "a\\b"),
    ("*", "*"),
    ("~", "~"),
    ("-n", "-n"),
    ("--help", "--help"),
    ("ünïcødé ☃", "ünïcødé ☃"),
    ("", ""),
    ("new\nline", "new\nline"),
    ("{v}", "{v}"),
    (3, "3"),
    (-2, "-2"),
    (1.5, "1.5"),
    (1e-05, "1e-05"),
    (10.0, "10.0"),
    (True, "true"),
    (False, "false"),
]

# Each template (after the printf command), and the words it prints for a value's text t.
TEMPLATES: list[tuple[str, Callable[[str], list[str]]]] = [
    ("{v}", lambda t: [t]),
    ("--x={v}", lambda t: [f"--x={t}"]),
    ("'a {v}'", lambda t: [f"a {t}"]),
    ('"pre {v} post"', lambda t: [f"pre {t} post"]),
    ("{v}{v} -- {v:>4}", lambda t: [t + t, "--", f"{t:>4}"]),
    ("{{v}} \\; '{v}'\"{v}\"", lambda t: ["{v}", ";", t + t]),
]


@pytest.fixture(scope="module")
def launcher() -> Iterator[Launcher]:
    with Launcher(return_stdout=True) as running:
        yield running


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server("template-rule")
    for i, (template, _) in enumerate(TEMPLATES):
        srv.ensemble_tool(f"{PRINT_ARGS} {template}", name=f"rule{i}", submit_tool=False)
    srv.start()
    try:
        yield srv
    finally:
        srv.shutdown()


def printed(stdout: str | None) -> list[str]:
    assert stdout is not None and stdout.endswith("\0"), stdout
    return stdout.split("\0")[:-1]


def ensemble_argvs(launcher: Launcher, template: str, *, shell: bool) -> list[list[str]]:
    spec = {
        "cmd_template": f"{PRINT_ARGS} {template}",
        "v": [value for value, _ in VALUES],
        "shell": shell,
    }
    tasks = expand_tasks({"ensembles": {"rule": spec}})
    results = launcher.submit_tasks(tasks).results(timeout=60)
    assert [r.status.value for r in results] == ["success"] * len(VALUES)
    return [printed(r.stdout) for r in results]


async def tool_argvs(server: Server, tool: str) -> list[list[str]]:
    async with Client(server, mode="legacy") as client:  # legacy: real JSON-RPC messages
        with anyio.fail_after(60):
            result = await client.call_tool(tool, {"v": [value for value, _ in VALUES]})
    assert not result.is_error, result.content
    tasks = result.structured_content["tasks"]
    assert [t["status"] for t in tasks] == ["success"] * len(VALUES)
    return [printed(t["result"]) for t in tasks]


@pytest.mark.parametrize(("index", "template", "words"), [(i, *t) for i, t in enumerate(TEMPLATES)])
async def test_a_template_gives_the_same_argv_from_a_file_and_from_a_tool(
    launcher: Launcher,
    server: Server,
    index: int,
    template: str,
    words: Callable[[str], list[str]],
) -> None:
    expected = [words(text) for _, text in VALUES]

    assert ensemble_argvs(launcher, template, shell=False) == expected
    assert ensemble_argvs(launcher, template, shell=True) == expected
    assert await tool_argvs(server, f"rule{index}") == expected
