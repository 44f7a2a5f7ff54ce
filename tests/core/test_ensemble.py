"""Ensemble definitions: relations, broadcast, generators, placeholders, ids and bad input."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.ensemble import Task, expand_tasks, load_ensembles
from core.errors import ConfigError
from core.generators import parse_generator
from core.task import Task as CoreTask

DATA = Path(__file__).resolve().parent.parent / "data"
quick = settings(deadline=None, max_examples=60)  # no deadline: the machine is shared


def one(spec: dict[str, Any], name: str = "sweep") -> list[Task]:
    return expand_tasks({"ensembles": {name: spec}})


def error_of(source: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        expand_tasks(source, **kwargs)
    return str(caught.value)


# --- the seed's format --------------------------------------------------------------------------


def test_seed_readme_example_expands_to_five_paired_tasks() -> None:
    tasks = expand_tasks(DATA / "seed_example.json")

    assert [t.task_id for t in tasks] == [f"example_ensemble-{i}" for i in range(5)]
    assert [t.argv() for t in tasks] == [
        ["./exe", "-a", a, "-b", b]
        for a, b in zip(
            ["0.0", "2.5", "5.0", "7.5", "10.0"], ["0.0", "0.25", "0.5", "0.75", "1.0"], strict=True
        )
    ]
    assert {(t.nnodes, t.ppn, t.shell) for t in tasks} == {(1, 1, False)}


def test_task_is_importable_from_core_ensemble() -> None:
    assert Task is CoreTask


def test_a_dict_source_gives_the_same_tasks_as_its_json_file() -> None:
    from_file = expand_tasks(str(DATA / "sweeps.json"))
    from_dict = expand_tasks(json.loads((DATA / "sweeps.json").read_text()))

    assert from_file == from_dict


def test_every_ensemble_of_a_file_expands_in_file_order() -> None:
    groups = load_ensembles(DATA / "sweeps.json")

    assert {name: len(tasks) for name, tasks in groups.items()} == {
        "flame": 4,
        "grid": 6,
        "scaling": 4,
        "pinned_ensemble": 1,
    }
    assert list(groups) == ["flame", "grid", "scaling", "pinned_ensemble"]
    assert [t.task_id for t in expand_tasks(DATA / "sweeps.json")][:6] == [
        "flame-0",
        "flame-1",
        "flame-2",
        "flame-3",
        "grid-0",
        "grid-1",
    ]


def test_seed_pinning_example_gives_affinity_lists() -> None:
    [task] = load_ensembles(DATA / "sweeps.json")["pinned_ensemble"]

    assert (task.ppn, task.ngpus_per_process) == (4, 1)
    assert task.cpu_affinity == [0, 1, 2, 3]
    assert task.gpu_affinity == ["0", "1", "2", "3"]


# --- relations and broadcast --------------------------------------------------------------------


def test_one_to_one_pairs_lists_element_by_element() -> None:
    tasks = one({"cmd_template": "run {a} {b}", "a": [1, 2, 3], "b": ["x", "y", "z"]})

    assert [t.executable for t in tasks] == ["run 1 x", "run 2 y", "run 3 z"]


def test_many_to_many_takes_the_product_with_the_last_key_fastest() -> None:
    tasks = one(
        {
            "cmd_template": "run {a} {b}",
            "relation": "many-to-many",
            "a": [1, 2],
            "b": ["x", "y", "z"],
        }
    )

    assert [t.executable for t in tasks] == [
        "run 1 x",
        "run 1 y",
        "run 1 z",
        "run 2 x",
        "run 2 y",
        "run 2 z",
    ]


def test_a_one_element_list_is_used_for_every_task() -> None:
    tasks = load_ensembles(DATA / "sweeps.json")["flame"]

    assert [t.argv()[2:] for t in tasks] == [
        [p, "--temperature", "300"] for p in ["1", "2", "5", "10"]
    ]


def test_a_bare_value_is_used_for_every_task() -> None:
    tasks = one({"cmd_template": "run {a} {b}", "a": [1, 2], "b": "fixed.json"})

    assert [t.executable for t in tasks] == ["run 1 fixed.json", "run 2 fixed.json"]


def test_many_to_many_counts_a_one_element_list_once() -> None:
    tasks = one(
        {"cmd_template": "run {p} {t}", "relation": "many-to-many", "p": [1, 2, 5, 10], "t": [300]}
    )

    assert [t.executable for t in tasks] == ["run 1 300", "run 2 300", "run 5 300", "run 10 300"]


def test_a_spec_without_lists_gives_one_task() -> None:
    tasks = one({"cmd_template": "./gpu_code", "ppn": 4})

    assert [(t.task_id, t.executable, t.ppn) for t in tasks] == [("sweep-0", "./gpu_code", 4)]


def test_a_list_of_ppn_values_gives_tasks_with_different_ppn() -> None:
    tasks = load_ensembles(DATA / "sweeps.json")["scaling"]

    assert [(t.ppn, t.executable, t.cpu_affinity) for t in tasks] == [
        (1, "./bench --ranks 1", [0]),
        (2, "./bench --ranks 2", [0, 1]),
        (3, "./bench --ranks 3", [0, 1, 2]),
        (4, "./bench --ranks 4", [0, 1, 2, 3]),
    ]


def test_a_list_key_missing_from_the_template_is_still_a_sweep_dimension() -> None:
    tasks = one({"cmd_template": "./simulate", "replica": "range(3)", "nnodes": [1, 2, 3]})

    assert [(t.executable, t.nnodes) for t in tasks] == [
        ("./simulate", 1),
        ("./simulate", 2),
        ("./simulate", 3),
    ]


@quick
@given(st.lists(st.integers(1, 3), min_size=0, max_size=4))
def test_many_to_many_gives_the_product_of_the_lengths(lengths: list[int]) -> None:
    spec: dict[str, Any] = {"cmd_template": "x", "relation": "many-to-many"}
    spec.update({f"k{i}": list(range(n)) for i, n in enumerate(lengths)})

    assert len(one(spec)) == math.prod(lengths)


@quick
@given(st.lists(st.integers(1, 5), min_size=1, max_size=4))
def test_one_to_one_gives_the_common_length_or_names_every_length(lengths: list[int]) -> None:
    spec: dict[str, Any] = {"cmd_template": "x"}
    spec.update({f"k{i}": list(range(n)) for i, n in enumerate(lengths)})
    longer = {n for n in lengths if n > 1}

    if len(longer) <= 1:
        assert len(one(spec)) == max(lengths)
    else:
        message = error_of({"ensembles": {"sweep": spec}})
        shown = ", ".join(f"k{i}: {n}" for i, n in enumerate(lengths))
        assert f"lengths differ ({shown})" in message


# --- placeholders, rendering, ids ---------------------------------------------------------------


def test_numbers_render_in_shortest_form() -> None:
    tasks = one({"cmd_template": "x {v}", "v": [3, 0.25, 1e-05, 1e16, -2.0, True]})

    assert [t.argv()[1] for t in tasks] == ["3", "0.25", "1e-05", "1e+16", "-2.0", "true"]


def test_a_placeholder_may_carry_a_format_spec() -> None:
    tasks = one({"cmd_template": "x {t:.1f} {n:04d}", "t": [300, 1e3], "n": 7})

    assert [t.executable for t in tasks] == ["x 300.0 0007", "x 1000.0 0007"]


def test_double_braces_give_literal_braces() -> None:
    [task] = one({"cmd_template": "awk '{{print $1}}' {f}", "f": "in.txt"})

    assert task.argv() == ["awk", "{print $1}", "in.txt"]


def test_settings_may_be_placeholders_too() -> None:
    [task] = one(
        {
            "cmd_template": "mpiexec -n {ppn} --cpu-list {cpu_affinity} ./a",
            "ppn": 2,
            "cpu_affinity": "0,1",
        }
    )

    assert task.argv() == ["mpiexec", "-n", "2", "--cpu-list", "0,1", "./a"]


def test_task_ids_are_padded_to_the_width_of_the_largest_index() -> None:
    tasks = one({"cmd_template": "x {i}", "i": "range(120)"})

    assert (tasks[7].task_id, tasks[-1].task_id) == ("sweep-007", "sweep-119")
    assert len({t.task_id for t in tasks}) == 120


def test_task_ids_are_deterministic_and_unique_across_ensembles() -> None:
    source = {
        "ensembles": {
            name: {"cmd_template": "x {i}", "i": "range(11)"}
            for name in ["a", "a-1", "a-10", "a.1"]
        }
    }
    first, second = expand_tasks(source), expand_tasks(source)

    assert [t.task_id for t in first] == [t.task_id for t in second]
    assert len({t.task_id for t in first}) == 44


def test_run_dir_placeholders_are_substituted_without_quoting() -> None:
    tasks = load_ensembles(DATA / "sweeps.json")["grid"]

    assert [t.run_dir for t in tasks] == [
        "runs/coarse.msh-0.001",
        "runs/coarse.msh-0.01",
        "runs/coarse.msh-0.1",
        "runs/fine.msh-0.001",
        "runs/fine.msh-0.01",
        "runs/fine.msh-0.1",
    ]


def test_affinities_take_strings_lists_and_per_task_lists() -> None:
    tasks = one({"cmd_template": "x", "cpu_affinity": [[0, 1], "2, 3"], "gpu_affinity": ["0.0", 1]})

    assert [(t.cpu_affinity, t.gpu_affinity) for t in tasks] == [
        ([0, 1], ["0.0", "1"]),
        ([2, 3], ["0.0", "1"]),
    ]


def test_a_generator_on_an_affinity_gives_one_id_per_task() -> None:
    tasks = one({"cmd_template": "x", "gpu_affinity": "range(3)"})

    assert [t.gpu_affinity for t in tasks] == [["0"], ["1"], ["2"]]


def test_env_is_one_value_for_every_task_and_tasks_share_no_mutable_state() -> None:
    tasks = one({"cmd_template": "x {i}", "i": [1, 2], "env": {"A": "1"}, "cpu_affinity": [0]})
    tasks[0].env["A"] = "changed"
    tasks[0].cpu_affinity.append(5)  # type: ignore[union-attr]

    assert (tasks[1].env, tasks[1].cpu_affinity) == ({"A": "1"}, [0])


def test_copied_tasks_equal_freshly_validated_ones() -> None:
    tasks = one(
        {
            "cmd_template": "x {i}",
            "i": "range(3)",
            "timeout": 5,
            "env": {"A": "b"},
            "run_dir": "r/{i}",
            "ppn": [1, 2, 2],
        }
    )

    for task in tasks:
        fresh = CoreTask(**{name: getattr(task, name) for name in task.model_fields_set})
        assert (task, task.model_fields_set) == (fresh, fresh.model_fields_set)


def test_a_dict_of_task_objects_is_returned_as_is() -> None:
    tasks = {
        "task-1": Task(task_id="task-1", executable=print, args=(10, 0.5)),
        "task-2": Task(task_id="task-2", executable="echo hi"),
    }

    assert expand_tasks(tasks) == list(tasks.values())
    assert expand_tasks(tasks)[0] is tasks["task-1"]
    assert load_ensembles(tasks) == {"tasks": list(tasks.values())}


def test_a_generator_string_inside_a_list_is_a_plain_value() -> None:
    [task] = one({"cmd_template": "plot {f}", "f": ["sin(1)"]})

    assert task.argv() == ["plot", "sin(1)"]


# --- injection safety ---------------------------------------------------------------------------

HOSTILE = [
    "a; rm -rf /",
    "$(id)",
    "`id`",
    "a b",
    "'",
    '"',
    "\\",
    "",
    "-rf",
    "*",
    "x\ny",
    "#c",
    "$HOME",
    "a'b\"c",
    "{x}",
    "&& true",
    "|",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_stays_one_argv_element(value: str) -> None:
    [task] = one({"cmd_template": "echo {v} --end", "v": value})

    assert task.argv() == ["echo", value, "--end"]


def test_hostile_values_reach_a_real_shell_literally() -> None:
    tasks = one({"cmd_template": "printf %s {v}", "v": HOSTILE, "shell": True})

    outputs = [
        subprocess.run(t.argv(), capture_output=True, text=True, timeout=10, check=True).stdout
        for t in tasks
    ]
    assert outputs == HOSTILE


@quick
@given(st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0")))
def test_any_text_value_is_exactly_one_argv_element(value: str) -> None:
    [task] = one({"cmd_template": "./exe --name={v} {v}", "v": [value]})

    assert task.argv() == ["./exe", f"--name={value}", value]


@pytest.mark.parametrize(
    ("template", "argv"),
    [
        ("echo '{v}'", ["echo", "a b"]),
        ('echo "{v}"', ["echo", "a b"]),
        ("echo 'a' \"--x={v}\"", ["echo", "a", "--x=a b"]),
        ("echo 'it is {v}!'", ["echo", "it is a b!"]),
    ],
)
def test_a_placeholder_inside_quotes_becomes_part_of_the_quoted_word(
    template: str, argv: list[str]
) -> None:
    [task] = one({"cmd_template": template, "v": "a b"})

    assert task.argv() == argv


def test_a_placeholder_after_a_backslash_is_rejected() -> None:
    message = error_of({"ensembles": {"q": {"cmd_template": "echo \\{v}", "v": 1}}})

    assert message.startswith(
        "ensemble 'q', key 'cmd_template': placeholder {v} is after a backslash"
    )


# --- generators ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("linspace(0, 1, 5)", [0.0, 0.25, 0.5, 0.75, 1.0]),
        ("linspace(0, 1, 11)", [i / 10 for i in range(11)]),
        ("linspace(0.1, 0.5, 5)", [0.1, 0.2, 0.3, 0.4, 0.5]),
        ("linspace(2, -2, 3)", [2.0, 0.0, -2.0]),
        ("linspace(7, 9, 1)", [7.0]),
        ("logspace(-5, 0, 6)", [1e-05, 1e-04, 1e-03, 1e-02, 0.1, 1.0]),
        ("logspace(0, 3, 4)", [1.0, 10.0, 100.0, 1000.0]),
        ("range(3)", [0, 1, 2]),
        ("range(2, 8, 3)", [2, 5]),
        ("range(5, 0, -2)", [5, 3, 1]),
        ("  linspace (\t-1.5e0 ,2.5E+0,  3 )  ", [-1.5, 0.5, 2.5]),
        ("range( -2 , 1 )", [-2, -1, 0]),
    ],
)
def test_generators_give_exact_values(text: str, values: list[float]) -> None:
    result = parse_generator(text)

    assert result == values
    assert [type(v) for v in result or []] == [type(v) for v in values]


@pytest.mark.parametrize(
    "text",
    [
        "input.json",
        "sin(x)",
        "linspace",
        "data(1).csv",
        "range",
        "f(a, b)",
        "",
        "(1, 2)",
        "config-1.json",
    ],
)
def test_a_string_that_is_no_generator_call_is_a_plain_value(text: str) -> None:
    assert parse_generator(text) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("linspace(0, 1)", "linspace takes 3 arguments (linspace(a, b, n)), got 2"),
        ("logspace(0, 1, 2, 3)", "logspace takes 3 arguments"),
        ("range(1, 2, 3, 4)", "range takes 1 to 3 arguments"),
        ("range()", "range needs arguments"),
        ("linspace(0, 1, 0)", "n must be at least 1, got 0"),
        ("linspace(0, 1, -3)", "n must be at least 1, got -3"),
        ("linspace(0, 1, 2.5)", "n must be a whole number, got '2.5'"),
        ("linspace(a, 1, 3)", "argument 1 ('a') is not a number"),
        ("linspace(0, 1e, 3)", "argument 2 ('1e') is not a number"),
        ("linspace(0,, 3)", "argument 2 is empty"),
        ("linspace(0, 1, 3) + 1", "unexpected text after ')': '+ 1'"),
        ("linspace(0, 1, 3", "missing ')'"),
        ("range(0, 5, 0)", "range step must not be 0"),
        ("range(5, 0)", "the range is empty"),
        ("range(1.5)", "range takes integers, got '1.5'"),
        ("range(10**9)", "is not a number"),
        ("range(0, 10000000000)", "over the limit of 1,000,000"),
        ("arange(0, 1, 5)", "unknown generator 'arange'"),
        ("Linspace(0, 1, 5)", "did you mean 'linspace'?"),
        ("linspace(1e999, 1, 2)", "out of the range of a float"),
        ("logspace(0, 400, 2)", "too large for a float"),
    ],
)
def test_a_malformed_generator_names_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_generator(text)

    assert str(caught.value).startswith(repr(text))
    assert problem in str(caught.value)


finite = st.floats(allow_nan=False, allow_infinity=False)


@quick
@given(finite, finite, st.integers(2, 40))
def test_linspace_round_trips_formatted_endpoints(a: float, b: float, n: int) -> None:
    values = parse_generator(f"linspace({a!r}, {b!r}, {n})")

    assert values is not None and len(values) == n
    assert (values[0], values[-1]) == (a, b)
    assert values == sorted(values, reverse=a > b)


@quick
@given(
    st.integers(-(10**4), 10**4), st.integers(-(10**4), 10**4), st.integers(-99, 99).filter(bool)
)
def test_range_matches_python_range(start: int, stop: int, step: int) -> None:
    expected = list(range(start, stop, step))
    if expected:
        assert parse_generator(f"range({start}, {stop}, {step})") == expected
    else:
        with pytest.raises(ConfigError):
            parse_generator(f"range({start}, {stop}, {step})")


@quick
@given(st.sampled_from(["", "linspace(", "logspace (", "range(", "foo("]), st.text(max_size=30))
def test_junk_never_raises_anything_but_config_error(prefix: str, junk: str) -> None:
    try:
        result = parse_generator(prefix + junk)
    except ConfigError:
        return
    assert result is None or all(isinstance(v, (int, float)) for v in result)


# --- bad input ----------------------------------------------------------------------------------


def test_unequal_lengths_name_every_key_and_both_fixes() -> None:
    message = error_of(DATA / "unequal_lengths.json")

    assert message.startswith("ensemble 'sweep', key 'arg2': lengths differ (arg1: 5, arg2: 3)")
    assert '"relation": "many-to-many"' in message
    assert "a 1-element list is used for every task" in message


@pytest.mark.parametrize(
    ("spec", "key", "problem"),
    [
        (
            {"cmd_template": "x", "relation": "zip"},
            "relation",
            "unknown relation 'zip'; use 'one-to-one' or 'many-to-many'",
        ),
        ({"arg1": [1, 2]}, "cmd_template", "missing"),
        ({"cmd_template": ["a", "b"]}, "cmd_template", "must be a non-empty command line string"),
        ({"cmd_template": "  "}, "cmd_template", "must be a non-empty command line string"),
        (
            {"cmd_template": "x {arg3}", "arg1": 1},
            "cmd_template",
            "placeholder {arg3} has no value; add a key 'arg3' to the ensemble (keys given: arg1)",
        ),
        ({"cmd_template": "x {}"}, "cmd_template", "empty placeholder {}"),
        ({"cmd_template": "x {a!r}", "a": 1}, "cmd_template", "only {name} and {name:format}"),
        ({"cmd_template": "x {a:{w}}", "a": 1, "w": 3}, "cmd_template", "only {name} and"),
        ({"cmd_template": "x {a", "a": 1}, "cmd_template", "write '{{' and '}}'"),
        ({"cmd_template": "x } {a}", "a": 1}, "cmd_template", "write '{{' and '}}'"),
        ({"cmd_template": "x {env}", "env": {}}, "cmd_template", "{env} cannot be a placeholder"),
        ({"cmd_template": "x 'oops {a}", "a": 1}, "cmd_template", "inside single quotes"),
        (
            {"cmd_template": "x 'oops", "a": 1},
            "cmd_template",
            'unbalanced quoting: "x \'oops" ends inside single quotes',
        ),
        ({"cmd_template": "x \\", "a": 1}, "cmd_template", "ends after a backslash"),
        ({"cmd_template": "x {a:d}", "a": "text"}, "a", "format {a:d} does not apply to 'text'"),
        ({"cmd_template": "x", "a": "linspace(0, 1)"}, "a", "linspace takes 3 arguments"),
        ({"cmd_template": "x", "a": []}, "a", "the list is empty"),
        ({"cmd_template": "x", "a": [1, None]}, "a", "element 1: must be a string, a number"),
        ({"cmd_template": "x", "a": {"b": 1}}, "a", "must be a string, a number or true/false"),
        ({"cmd_template": "x", "a": "nul\0"}, "a", "contains a NUL byte"),
        (
            {"cmd_template": "x", "nnodes": "two"},
            "nnodes",
            "must be a whole number >= 1, got 'two'",
        ),
        ({"cmd_template": "x", "nnodes": True}, "nnodes", "must be a whole number >= 1, got True"),
        ({"cmd_template": "x", "ppn": [1, 0]}, "ppn", "element 1: must be a whole number >= 1"),
        ({"cmd_template": "x", "ppn": 1.5}, "ppn", "must be a whole number >= 1, got 1.5"),
        ({"cmd_template": "x", "ngpus_per_process": -1}, "ngpus_per_process", ">= 0"),
        ({"cmd_template": "x", "timeout": -1}, "timeout", "must be a number of seconds > 0"),
        ({"cmd_template": "x", "timeout": "soon"}, "timeout", "got 'soon'"),
        ({"cmd_template": "x", "shell": "yes"}, "shell", "must be true or false, got 'yes'"),
        ({"cmd_template": "x", "env": ["A=1"]}, "env", "must be an object of strings"),
        (
            {"cmd_template": "x", "env": {"A": 4}},
            "env",
            "value of 'A' must be a string (write \"4\")",
        ),
        ({"cmd_template": "x", "env": {"A=B": "1"}}, "env", "variable name 'A=B'"),
        (
            {"cmd_template": "x", "cpu_affinity": "0,one"},
            "cpu_affinity",
            "is not a list of CPU ids",
        ),
        (
            {"cmd_template": "x", "cpu_affinity": ["0,1", "2,3"]},
            "cpu_affinity",
            "use a list of lists, e.g. [[0, 1], [2, 3]]",
        ),
        ({"cmd_template": "x", "gpu_affinity": [[]]}, "gpu_affinity", "element 0: must be a comma"),
        ({"cmd_template": "x", "run_dir": "../up"}, "run_dir", "contains '..'"),
        (
            {"cmd_template": "x", "run_dir": "r/{d}", "d": ["ok", "../../etc"]},
            "run_dir",
            "'r/../../etc' contains '..'",
        ),
        ({"cmd_template": "x", "run_dir": "{d}", "d": ["ok", ""]}, "run_dir", "non-empty path"),
        ({"cmd_template": "x", "run_dir": 3}, "run_dir", "non-empty path"),
        ({"cmd_template": "x", "task_id": "t"}, "task_id", "task ids are generated"),
        ({"cmd_template": "x", "executable": "./a"}, "executable", "give the command line as"),
        ({"cmd_template": "x", "tiemout": 5}, "tiemout", "did you mean 'timeout'?"),
        (
            {"cmd_template": "x", "relations": "many-to-many"},
            "relations",
            "did you mean 'relation'?",
        ),
    ],
)
def test_bad_input_names_the_ensemble_key_and_problem(
    spec: dict[str, Any], key: str, problem: str
) -> None:
    message = error_of({"ensembles": {"bad": spec}})

    assert message.startswith(f"ensemble 'bad', key {key!r}: ")
    assert problem in message


def test_a_spec_that_is_not_an_object_of_string_keys_is_rejected() -> None:
    assert error_of({"ensembles": {"bad": ["x"]}}).startswith(
        "ensemble 'bad': the spec must be an object of keys"
    )
    assert error_of({"ensembles": {"bad": {"cmd_template": "x", 1: [2]}}}) == (
        "ensemble 'bad': key 1 is not a string"
    )


@pytest.mark.parametrize("name", ["bad name", "", "-lead", "a/b", "x" * 129, "é"])
def test_an_invalid_ensemble_name_is_rejected(name: str) -> None:
    message = error_of({"ensembles": {name: {"cmd_template": "x"}}})

    assert message.startswith(f"ensemble {name!r}: invalid name")


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ({"runs": {}}, 'ensemble source has no "ensembles" key'),
        ({"ensembles": {}, "extra": 1}, "unknown top-level key(s) 'extra'"),
        ({"ensembles": {}}, '"ensembles" must be a non-empty object'),
        ({"ensembles": [1]}, '"ensembles" must be a non-empty object'),
        ({}, 'must be {"ensembles": {name: spec}}'),
        (42, "must be a JSON file path or a dict"),
        ({"t": Task(task_id="t", executable="x"), "u": {}}, "may hold only Task objects"),
        ({"t": Task(task_id="u", executable="x")}, "task 'u' is stored under key 't'"),
    ],
)
def test_an_unknown_top_level_structure_is_rejected(source: Any, problem: str) -> None:
    assert problem in error_of(source)


def test_an_unreadable_or_invalid_file_is_rejected(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"ensembles": {"a": {"cmd_template": "x",}}}')
    doubled = tmp_path / "doubled.json"
    doubled.write_text('{"ensembles": {"a": {"cmd_template": "x"}, "a": {"cmd_template": "y"}}}')
    nan = tmp_path / "nan.json"
    nan.write_text('{"ensembles": {"a": {"cmd_template": "x", "timeout": NaN}}}')
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe")

    assert "cannot read ensemble file" in error_of(tmp_path / "missing.json")
    assert "No such file" in error_of(tmp_path / "missing.json")
    assert "is not valid JSON: Expecting property name" in error_of(broken)
    assert "(line 1, column 42)" in error_of(broken)
    assert "duplicate key 'a'" in error_of(doubled)
    assert "NaN is not a valid JSON number" in error_of(nan)
    assert "not UTF-8 text" in error_of(binary)
    assert "cannot read ensemble file" in error_of(tmp_path)


def test_a_fan_out_over_the_cap_gives_the_count_and_the_cap() -> None:
    spec = {"cmd_template": "x", "relation": "many-to-many", "a": "range(2000)", "b": "range(2000)"}

    assert error_of({"ensembles": {"big": spec}}) == (
        "ensemble 'big', key 'relation': many-to-many gives 4,000,000 tasks (a: 2000, b: 2000), "
        "over the limit of 1,000,000; nothing was built"
    )
    assert "3,000 with the ensembles before it, over the limit of 2,500" in error_of(
        {
            "ensembles": {
                "a": {"cmd_template": "x", "i": "range(1500)"},
                "b": {"cmd_template": "x", "i": "range(1500)"},
            }
        },
        max_tasks=2500,
    )


def test_a_task_validation_error_names_the_key_with_the_rules_own_message() -> None:
    # Every value is checked before a Task is built, so no spec reaches this path today; Task
    # applies the same rules (core.spec_values.CHECKS), so its message is the ensemble key's.
    from core.ensemble import _Ensemble

    ensemble = _Ensemble("s", {"cmd_template": "x"})
    with pytest.raises(ConfigError) as caught:
        ensemble._task({"task_id": "s-0", "executable": "x", "ppn": 0})

    assert str(caught.value) == "ensemble 's', key 'ppn': must be a whole number >= 1, got 0"


def test_a_generator_string_is_never_evaluated() -> None:
    message = error_of(
        {"ensembles": {"e": {"cmd_template": "x", "a": "range(__import__('os').getpid())"}}}
    )

    assert message.startswith("ensemble 'e', key 'a': \"range(__import__('os').getpid())\"")
    assert "is not a number" in message
