"""The template rule (core.template): one parse gives the argv and the command line alike."""

from __future__ import annotations

import shlex
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.template import CommandTemplate, Placeholder, TextTemplate, render_value

quick = settings(deadline=None, max_examples=80)  # no deadline: the machine is shared
TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"))
SHAPES = [
    "./exe {v}",
    "./exe --x={v} -- {v}",
    "./exe 'a {v} b' \"c {v} d\"",
    "./exe '{v}'\"{v}\"{v}",
    "./exe \"$HOME {v}\" 'it''s' \\ {v}",
    "./exe {{v}} {v:>6}",
]


@quick
@given(st.sampled_from(SHAPES), TEXT)
def test_the_command_line_splits_into_exactly_the_argv(template: str, value: str) -> None:
    command = CommandTemplate.parse(template)

    assert shlex.split(command.command_line({"v": value})) == command.argv({"v": value})


@pytest.mark.parametrize("template", SHAPES[:4])
def test_a_shell_reads_the_command_line_as_the_same_words(template: str) -> None:
    values = ["a b", "it's", 'q"q', "$(id)", "`id`", "\\", "*", "", "-n", "ü ☃", "x\ny"]
    command = CommandTemplate.parse(template.replace("./exe", "printf '%s\\0'"))
    for value in values:
        line = command.command_line({"v": value})
        out = subprocess.run(["/bin/sh", "-c", line], capture_output=True, timeout=10, check=True)

        assert out.stdout.decode().split("\0")[:-1] == command.argv({"v": value})[2:]


def test_placeholders_know_the_quotes_they_stand_in() -> None:
    command = CommandTemplate.parse("x {a} '{b}' \"{c:>3}\"")

    assert [p for p in command.pieces if isinstance(p, Placeholder)] == [
        Placeholder("a", "", ""),
        Placeholder("b", "", "'"),
        Placeholder("c", ">3", '"'),
    ]
    assert command.names == ("a", "b", "c")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        (3, "3"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1e16, "1e+16"),
        ([0, 1, 2], "0,1,2"),
        ("as is", "as is"),
    ],
)
def test_a_value_renders_to_one_text(value: object, text: str) -> None:
    assert render_value(value) == text


def test_a_format_applies_to_numbers_and_to_the_text_of_anything_else() -> None:
    command = CommandTemplate.parse("x {t:.2f} {b:>6} {n:03d}")

    assert command.argv({"t": 1, "b": True, "n": 7}) == ["x", "1.00", "  true", "007"]
    with pytest.raises(ValueError, match=r"format \{n:03d\} does not apply to 'seven'"):
        command.argv({"t": 1, "b": True, "n": "seven"})


def test_a_nul_in_a_value_is_refused_when_the_command_is_formed() -> None:
    with pytest.raises(ValueError, match="contains a NUL character"):
        CommandTemplate.parse("x {v}").argv({"v": "a\0b"})


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("x \\{v}", "placeholder {v} is after a backslash"),
        ("x 'a {v}", 'unbalanced quoting: "x \'a {v}" ends inside single quotes'),
        ("x {v.attr}", "only {name} and {name:format} are supported, with a plain name"),
        ("x {v!r}", "only {name} and {name:format} are supported"),
        ("x {v:{w}}", "only {name} and {name:format} are supported"),
        ("x {}", "empty placeholder {}"),
        ("x {v", "write '{{' and '}}' for literal braces"),
        ("  ", "the command is empty"),
        ("x\0", "NUL"),
    ],
)
def test_a_malformed_template_names_the_problem(template: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        CommandTemplate.parse(template)

    assert problem in str(caught.value)


def test_a_text_template_fills_values_unquoted() -> None:
    path = TextTemplate.parse("runs/{mesh}-{dt:.0e}")

    assert path.names == ("mesh", "dt")
    assert path.fill({"mesh": "a b", "dt": 0.001}) == "runs/a b-1e-03"
