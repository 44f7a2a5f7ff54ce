"""Property-based tool calls through a real in-process MCP client: any arguments, any values.

A call either runs (every task's result is what its own arguments give: a command's argv is the
values' texts, one element each, never split or read by a shell) or is refused before anything
runs with a text that names a parameter (or ``relation``) and says "Nothing was run.". Never an
unexpected error, never a hang (each call is bounded), and every cap states its number.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import cloudpickle
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mcp import Client

from core.template import render_value
from ensemble_mcp.errors import NOTHING_RUN
from ensemble_mcp.plan import InputLimits
from ensemble_mcp.server import Server
from tests.ensemble_mcp.conftest_mcp import warm

MAX_TASKS = 30
PRINT_ARGV = "import json, sys; print(json.dumps(sys.argv[1:]))"
TEMPLATE = f"{sys.executable} -c {shlex.quote(PRINT_ARGV)} {{a}} --b={{b}} '{{c}} x'"


def labelled(x: float, label: str = "a", flag: bool = False) -> str:
    """Echo the arguments as JSON."""
    return json.dumps([x, label, flag])


def build() -> Server:
    server = Server(
        "fuzz",
        max_tasks=MAX_TASKS,
        input_limits=InputLimits(value_chars=60, total_chars=3000),
    )
    server.ensemble_tool(labelled, submit_tool=False)
    server.ensemble_tool(TEMPLATE, name="argv", submit_tool=False)
    return server


cloudpickle.register_pickle_by_value(sys.modules[__name__])
PARAMS = {"labelled": ("x", "label", "flag"), "argv": ("a", "b", "c")}

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=70)
HOSTILE = st.sampled_from(
    ["a b", "$(id)", "`id`", "; rm -rf /", "it's", 'q"q', "-n", "if", "A=1", "~", "*", "\\",
     "x\ny", "", "nan", "inf", "1e400", "[1, 2]", '["a", 3]', "[[[[", "\0"]
)  # fmt: skip
SCALAR = (
    st.none() | st.booleans() | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False) | TEXT | HOSTILE
)  # fmt: skip
VALUE = st.one_of(
    SCALAR,
    st.lists(SCALAR, max_size=6),
    st.lists(SCALAR, max_size=6),
    st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner)),
)
RELATION = st.one_of(
    st.sampled_from(["one-to-one", "many-to-many", None, ["many-to-many"]]),
    st.sampled_from(["one-to-one", "many-to-many"]),
    st.sampled_from(["x", "", 0, {}, [], ["a", "b"]]),
)


NUMBER = st.integers(-(10**6), 10**6) | st.floats(allow_nan=False, allow_infinity=False)
WORD = TEXT.filter(lambda text: "\0" not in text) | HOSTILE.filter(lambda text: "\0" not in text)
PLAIN = NUMBER | WORD | st.booleans()
GOOD = {
    "x": NUMBER,
    "label": WORD,
    "flag": st.booleans(),
    "a": PLAIN,
    "b": PLAIN,
    "c": PLAIN,
}


@st.composite
def arguments(draw: st.DrawFn, tool: str) -> dict[str, Any]:
    """Mostly well-typed lists and bare values of the tool's parameters, sometimes anything."""
    args: dict[str, Any] = {}
    length = draw(st.integers(1, 5))  # most lists share it, so that one-to-one calls run too
    for name in PARAMS[tool]:
        if draw(st.integers(0, 9)) < (9 if name in ("x", "a", "b", "c") else 5):
            good = GOOD[name]
            size = draw(st.sampled_from([length, length, 1, 0, 6]))
            listed = st.lists(good, min_size=size, max_size=size)
            args[name] = draw(st.one_of(good, listed, listed, VALUE))
    if draw(st.booleans()):
        args["relation"] = draw(RELATION)
    if not draw(st.integers(0, 9)):
        args[draw(TEXT)] = draw(VALUE)
    return args


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from warm(build())


def call(server: Server, tool: str, args: dict[str, Any]) -> Any:
    async def go() -> Any:
        async with Client(server) as client:
            with anyio.fail_after(60):
                return await client.call_tool(tool, args)

    return anyio.run(go)


def check_refusal(tool: str, args: dict[str, Any], text: str) -> None:
    prefix = f"Error executing tool {tool}: "
    assert text.startswith(prefix) and len(text) > len(prefix), f"an unexpected error: {text!r}"
    assert NOTHING_RUN in text, text
    named = [*PARAMS[tool], "relation", *(repr(k)[:30] for k in args)]
    assert any(name in text for name in named), f"names no parameter: {text!r}"
    assert len(text) < 4000


def expected_labelled(params: dict[str, Any]) -> str:
    return json.dumps([params["x"], params.get("label", "a"), params.get("flag", False)])


def expected_argv(params: dict[str, Any]) -> list[str]:
    a, b, c = (render_value(params[name]) for name in ("a", "b", "c"))
    return [a, f"--b={b}", f"{c} x"]


fuzzed = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


@fuzzed
@given(arguments("labelled"))
def test_any_arguments_to_a_function_tool_run_or_are_refused_naming_a_parameter(
    server: Server, args: dict[str, Any]
) -> None:
    result = call(server, "labelled", args)

    event("refused" if result.is_error else "ran")
    if result.is_error:
        check_refusal("labelled", args, result.content[0].text)
        return
    out = result.structured_content
    assert len(out["tasks"]) == out["summary"]["total"] <= MAX_TASKS
    for task in out["tasks"]:
        assert task["status"] == "success", task
        assert json.loads(task["result"]) == json.loads(expected_labelled(task["params"]))


@fuzzed
@given(arguments("argv"))
def test_any_arguments_to_a_command_tool_give_exactly_one_argv_element_per_value(
    server: Server, args: dict[str, Any]
) -> None:
    result = call(server, "argv", args)

    event("refused" if result.is_error else "ran")
    if result.is_error:
        check_refusal("argv", args, result.content[0].text)
        return
    out = result.structured_content
    assert len(out["tasks"]) == out["summary"]["total"] <= MAX_TASKS
    for task in out["tasks"]:
        assert task["status"] == "success", task
        assert json.loads(task["result"]) == expected_argv(task["params"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            {"a": list(range(31)), "b": 1, "c": 1},
            "'a' has 31 values, above the cap of 30 per list (a call runs at most 30 tasks)",
        ),
        (
            {"a": ["ok", "v" * 61], "b": 1, "c": 1},
            "a[1] has 61 characters, above the cap of 60 per value",
        ),
        (
            {"a": [["v" * 30, "w" * 30]], "b": 1, "c": 1},
            "a[0] has 68 characters as JSON, above the cap of 60 per value",
        ),
        (
            {"a": list(range(30)), "b": "v" * 60, "c": "w" * 60},
            "the values of the 30 tasks add up to 3,600 characters (b: 1,800; a value counts "
            "once per task that uses it), above the cap of 3,000 per call",
        ),
    ],
)
def test_input_caps_state_their_numbers_and_the_parameter(
    server: Server, args: dict[str, Any], message: str
) -> None:
    result = call(server, "argv", args)

    assert result.is_error
    assert message in result.content[0].text
    assert NOTHING_RUN in result.content[0].text


def test_a_number_that_json_cannot_carry_is_refused_not_echoed_as_null(server: Server) -> None:
    result = call(server, "labelled", {"x": ["nan", "1e400", 1.5]})

    assert result.is_error
    text = result.content[0].text
    assert 'x[0] = "nan" is not a valid number: Input should be a finite number' in text
    assert 'x[1] = "1e400" is not a valid number' in text


@settings(deadline=None, max_examples=200)
@given(st.text(max_size=60) | st.from_regex(r"[a-z ./'\"\\{}:-]{0,30}", fullmatch=True))
def test_any_template_text_registers_or_is_refused_naming_the_tool(template: str) -> None:
    server = Server("t")
    try:
        server.ensemble_tool(template, name="sim", submit_tool=False)
    except ValueError as exc:
        assert str(exc).startswith("sim: "), exc
