"""Property-based tests of what users and agents write: ensemble files and command templates.

The properties: no crash (only ConfigError, or ValueError from a template, whose message names
the key), no hang (each example is bounded by a deadline), no injection (a value never becomes
more than one argv element, and a shell reads a command line as exactly the argv), and every cap
states its number.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core.ensemble import MAX_FILE_BYTES, load_ensembles
from core.errors import ConfigError
from core.spec_values import cut_repr
from core.task import Task
from core.template import CommandTemplate, TextTemplate

MAX_TASKS = 200
bounded = settings(
    deadline=5000,  # ms per example: generous on a shared 2-core machine, and still a bound
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow],
)

# -- strategies ---------------------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
SCALAR = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | TEXT
JSON = st.recursive(
    SCALAR, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
GENERATORS = st.sampled_from(
    [
        "linspace(0, 1, 3)",
        "logspace(-2, 2, 2)",
        "range(3)",
        "range(5, 1, -2)",
        "range(0)",
        "linspace(0, 1)",
        "arange(0, 1, 5)",
        "range(10000000)",
        "linspace(1e999, 0, 2)",
        "range(a)",
    ]
)
NAMES = st.sampled_from(["a", "b", "c"]) | st.from_regex(
    r"[A-Za-z_][A-Za-z0-9_-]{0,6}", fullmatch=True
)
HOSTILE = st.sampled_from(["a b", "$(id)", "`id`", ";", "it's", 'q"q', "-n", "if", "A=1", "~", "*"])
SCALAR_VALUE = (
    st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False) | st.booleans()
    | HOSTILE | TEXT
)  # fmt: skip
GOOD_VALUE = SCALAR_VALUE | st.lists(SCALAR_VALUE, min_size=1, max_size=4)
PARAM_VALUE = st.one_of(
    GOOD_VALUE, GOOD_VALUE, GOOD_VALUE, GENERATORS,
    st.sampled_from([[], None, {"x": 1}, [1, [2]], float("nan")]),
)  # fmt: skip


def _mostly(good: list[Any], bad: list[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(bad))


SETTINGS = {
    "nnodes": _mostly([1, 1.0, [1, 1]], [2, 0, "2"]),
    "ppn": _mostly([1], [3, -1, [1, 2], None]),
    "ngpus_per_process": _mostly([0], [1, -1, "range(2)"]),
    "timeout": _mostly([None, 5, 0.5, [1, 2]], [-1, "x", float("inf")]),
    "shell": _mostly([True, False, [True, False]], ["yes"]),
    "env": _mostly([{"A": "1"}, {}], [{"A": 1}, "x", {"A=B": "1"}, {"A": "a\0"}]),
    "run_dir": _mostly(["runs/{a}", "x", "/abs/{b}"], ["../up", "", None, "r/{a}/../.."]),
    "max_retries": _mostly([None, 0, 2, [0, 1]], [-1, True]),
    "failure_retries": _mostly([None, 0, 3], [1.5, "1"]),
    "relation": _mostly(["one-to-one", "many-to-many"], ["x", 3]),
    "cpu_affinity": _mostly(["0,1", [0], [[0], [1]], "range(2)"], ["x", []]),
    "gpu_affinity": _mostly(["0", ["0.0", "0.1"]], [[[0], [1]], 3]),
    "task_id": st.just("t"),
    "tiemout": st.just(3),
}
KEYS = st.one_of(st.sampled_from(["a", "b", "c"]), NAMES, NAMES, TEXT)


@st.composite
def templates(draw: st.DrawFn, names: list[str]) -> str:
    """A command line of literal words, quotes and placeholders of ``names`` (or of others)."""
    parts = [draw(st.sampled_from(["./exe", "echo", "x", "{a}"]))]
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(names)) if names and draw(st.integers(0, 9)) else draw(NAMES)
        spec = draw(st.sampled_from(["", "", "", "", "", ":>4", ":.2f", ":04d", ":!"]))
        word = draw(
            st.sampled_from(
                ["{p}", "{p}", "--x={p}", "'{p}'", '"{p} q"', "a{p}b", "\\{p}", "{{p}}"]
            )
        )
        parts.append(word.replace("{p}", "{" + name + spec + "}"))
    return " ".join(parts) + draw(st.sampled_from(["", "", "", "", "", "", " '", " {", " }"]))


@st.composite
def specs(draw: st.DrawFn) -> Any:
    """Mostly sensible specs (parameters, some settings, a template using them), some junk."""
    if not draw(st.integers(0, 19)):
        return draw(JSON)
    spec: dict[str, Any] = draw(st.dictionaries(KEYS, PARAM_VALUE, min_size=0, max_size=3))
    for key in draw(st.lists(st.sampled_from(sorted(SETTINGS)), max_size=2, unique=True)):
        spec[key] = draw(SETTINGS[key])
    if draw(st.integers(0, 9)):
        spec["cmd_template"] = draw(templates([k for k in spec if k not in SETTINGS]))
    if not draw(st.integers(0, 9)):
        spec[draw(TEXT)] = draw(JSON)
    return spec


SOURCES = st.one_of(
    st.fixed_dictionaries({"ensembles": st.dictionaries(NAMES, specs(), min_size=1, max_size=2)}),
    st.fixed_dictionaries({"ensembles": st.dictionaries(NAMES, specs(), min_size=1, max_size=2)}),
    st.fixed_dictionaries({"ensembles": st.dictionaries(NAMES | TEXT, JSON, max_size=2)}),
    # anything but a string, which would name a file
    JSON.filter(lambda value: not isinstance(value, str)),
    st.dictionaries(TEXT, JSON, max_size=3),
)

# -- the oracle ---------------------------------------------------------------------------------

_TOP_LEVEL = (
    "ensemble source must be",
    'ensemble source has no "ensembles" key',
    "unknown top-level key(s)",
    '"ensembles" must be a non-empty object',
    "a dict of Task objects may hold only Task objects",
)
_WHOLE_SPEC = re.compile(r": (invalid name|the spec must be an object|key .* is not a string)")


def assert_names_the_field(message: str, source: Any) -> None:
    """A ConfigError names the top-level problem, or the ensemble and (for a spec) the key."""
    if message.startswith(_TOP_LEVEL):
        return
    for name, spec in source["ensembles"].items():
        head = f"ensemble {cut_repr(name, 200)}"
        if not message.startswith(head):
            continue
        rest = message[len(head) :]
        if rest.startswith(": "):
            assert _WHOLE_SPEC.match(rest), message
            return
        keys = [*map(cut_repr, spec), "'cmd_template'"]
        assert any(rest.startswith(f", key {key}: ") for key in keys), message
        return
    raise AssertionError(f"the error names no ensemble of the source: {message!r}")


def check_tasks(source: Any, groups: dict[str, list[Task]]) -> None:
    """Expanded tasks: capped in number, and values never add or remove a word."""
    assert sum(len(tasks) for tasks in groups.values()) <= MAX_TASKS
    for name, tasks in groups.items():
        template = CommandTemplate.parse(source["ensembles"][name]["cmd_template"])
        for task in tasks:
            argv = task.argv()
            words = shlex.split(argv[2]) if task.shell else argv
            assert len(words) == len(template.words), (task.executable, template.words)


# -- ensemble files -----------------------------------------------------------------------------


@bounded
@given(SOURCES)
def test_any_ensemble_source_expands_or_is_refused_naming_the_field(source: Any) -> None:
    try:
        groups = load_ensembles(source, max_tasks=MAX_TASKS, max_value_chars=40)
    except ConfigError as exc:
        assert_names_the_field(str(exc), source)
        assert len(str(exc)) < 2000
        return
    check_tasks(source, groups)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ensemble-files")


@bounded
@given(
    SOURCES.map(json.dumps) | st.text(max_size=200) | st.binary(max_size=200),
    st.integers(0, 300),
)
def test_any_file_text_loads_or_is_refused_with_a_config_error(
    files: Path, text: str | bytes, cut: int
) -> None:
    path = files / "ensembles.json"
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    path.write_bytes(data[: cut or None])
    try:
        load_ensembles(path, max_tasks=MAX_TASKS, max_value_chars=40)
    except ConfigError as exc:
        assert str(exc)
        assert len(str(exc)) < 2000


def test_caps_state_their_numbers(tmp_path: Path) -> None:
    def error(spec: dict[str, Any], **caps: int) -> str:
        with pytest.raises(ConfigError) as caught:
            load_ensembles({"ensembles": {"e": spec}}, **caps)
        return str(caught.value)

    long_list = {"cmd_template": "x {p}", "p": list(range(20_001))}
    assert error(long_list, max_tasks=10_000) == (
        "ensemble 'e', key 'p': 20,001 values, above the cap of 10,000 per list"
    )
    long_value = {"cmd_template": "x {p}", "p": ["a", "b" * 100_001]}
    assert error(long_value) == (
        "ensemble 'e', key 'p': element 1 has 100,001 characters, above the cap of "
        "100,000 per value"
    )
    assert error({"cmd_template": "x {p}", "p": "abc"}, max_value_chars=2) == (
        "ensemble 'e', key 'p': the value has 3 characters, above the cap of 2 per value"
    )
    assert error({"cmd_template": "x" * 11}, max_value_chars=10) == (
        "ensemble 'e', key 'cmd_template': the value has 11 characters, above the cap of 10 "
        "per value"
    )
    assert error({"cmd_template": "x", "env": {"A": "v" * 100_001}}) == (
        "ensemble 'e', key 'env': value of 'A' has 100,001 characters, above the cap of "
        "100,000 per value"
    )
    wide = {"cmd_template": "x {p} {q}", "p": "p" * 99_000, "q": "range(1000000)"}
    assert re.fullmatch(
        r"ensemble 'e', key 'cmd_template': the 1,000,000 commands would hold "
        r"99,\d{3},\d{3},\d{3} characters in all, above the cap of 1,000,000,000; .*",
        error(wide, max_tasks=1_000_000),
    )
    huge = tmp_path / "huge.json"
    with huge.open("wb") as file:
        file.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(ConfigError, match=r"larger than the cap of 100,000,000 bytes"):
        load_ensembles(huge)


def test_an_endless_file_is_read_only_up_to_the_cap() -> None:
    with pytest.raises(ConfigError, match=r"'/dev/zero' is larger than the cap of 100,000,000"):
        load_ensembles("/dev/zero")


# -- command templates --------------------------------------------------------------------------

VALUE_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=20)
SHELL_HARD = st.sampled_from(
    ["", "if", "done", "A=1", "PATH=/x", "~", "#c", "!", "{", "}", "*", "$(id)", "`id`", "a b",
     "it's", 'q"q', "\\", "-n", "x\ny", ";", "&&", "|", ">f", "$HOME", "ü ☃"]
)  # fmt: skip
# Literal text the template author writes: what shlex and sh split alike (no $, `, globs, ;, =).
LITERAL = st.text(st.sampled_from("ab-_./: '\"\\"), max_size=6)


@bounded
@given(st.text(max_size=60))
def test_any_template_text_parses_or_is_refused_with_a_value_error(template: str) -> None:
    for parse in (CommandTemplate.parse, TextTemplate.parse):
        try:
            parse(template)
        except ValueError as exc:
            assert str(exc)


@st.composite
def command_templates(draw: st.DrawFn) -> CommandTemplate:
    """A parsable template: literal text around placeholders {v0}, {v1}, ... in any quoting."""
    pieces = [draw(st.sampled_from(["{v0}", "prog"]))]
    for i in range(draw(st.integers(0, 4))):
        pieces.append(draw(LITERAL))
        pieces.append(f"{{v{i + 1}}}")
    pieces.append(draw(LITERAL))
    try:
        return CommandTemplate.parse("".join(pieces))
    except ValueError:
        assume(False)
        raise


@bounded
@given(command_templates(), st.lists(VALUE_TEXT | SHELL_HARD, min_size=5, max_size=5))
def test_a_value_never_changes_the_words_and_a_shell_reads_exactly_the_argv(
    template: CommandTemplate, texts: list[str]
) -> None:
    values = {f"v{i}": text for i, text in enumerate(texts)}
    argv = template.argv(values)

    assert len(argv) == len(template.words)
    line = template.command_line(values)
    assert shlex.split(line) == argv
    # A real shell, with the command word replaced by a printer of its arguments.
    shell = subprocess.run(
        ["/bin/sh", "-c", "printf '%s\\0' " + line],
        capture_output=True,
        timeout=10,
        check=True,
    )
    assert shell.stdout.decode().split("\0")[:-1] == argv


@pytest.mark.parametrize("value", ["if", "A=1", "done", "PATH=/tmp/x", "while"])
def test_a_value_in_command_position_is_never_shell_syntax(value: str) -> None:
    template = CommandTemplate.parse("{v} --flag")
    line = template.command_line({"v": value})

    shell = subprocess.run(
        ["/bin/sh", "-c", 'f() { printf "%s\\0" "$@"; }; f ' + line],
        capture_output=True,
        timeout=10,
        check=True,
    )
    assert shell.stdout.decode().split("\0")[:-1] == [value, "--flag"]
    shell = subprocess.run(
        ["/bin/sh", "-c", line], capture_output=True, timeout=10, env={"PATH": "/usr/bin:/bin"}
    )
    assert b"not found" in shell.stderr  # the value itself was looked up as the command
    assert value.encode() in shell.stderr
