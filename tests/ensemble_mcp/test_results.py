"""The summary of a call's results: min and max, distinct counts, what was odd about the call.

Task results are built as the launcher returns them (`TaskResult`) and go through the real
converter and the output schema; no launcher runs here (test_server.py covers the path through a
server).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema
import pytest

from core.result import TaskResult, TaskStatus
from ensemble_mcp.plan import plan_ensemble
from ensemble_mcp.results import (
    OutputLimits,
    ResultConverter,
    output_schema,
    render_text,
    summarize,
)
from ensemble_mcp.tools import EnsembleSpec, spec_from_function, spec_from_template


def flame_speed(pressure: float, temperature: float) -> float:
    """Laminar flame speed."""
    return round(0.38 * (temperature / 298.0) ** 1.77 * pressure**-0.5, 4)


def flame(pressure: float, temperature: float) -> dict[str, Any]:
    """Speed and thickness, with a label."""
    return {"label": f"p{pressure}", "speed": pressure + temperature, "width": 1.0, "ok": True}


def label(pressure: float, temperature: float) -> str:
    """A label."""
    return f"{pressure}/{temperature}"


def run(
    spec: EnsembleSpec,
    arguments: dict[str, Any],
    fn: Callable[..., Any] | None = None,
    fail: set[int] = frozenset(),  # type: ignore[assignment]
) -> tuple[dict[str, Any], str]:
    """Plan the call, compute each task here, convert and summarize as the server does."""
    plan = plan_ensemble(spec, arguments, max_tasks=10_000)
    echoes, results = [], []
    times = {"start_time": 100.0, "end_time": 100.5}
    for i, (kwargs, echo) in enumerate(plan.tasks()):
        echoes.append(echo)
        if i in fail:
            failed = TaskResult(f"t{i}", TaskStatus.FAILED, exception="ValueError: no", **times)
            results.append(failed)
        elif spec.is_command:
            stdout = f"{flame_speed(**kwargs)}\n"
            results.append(TaskResult(f"t{i}", TaskStatus.SUCCESS, stdout=stdout, **times))
        else:
            value = (fn or spec.executable)(**kwargs)  # type: ignore[operator]
            results.append(TaskResult(f"t{i}", TaskStatus.SUCCESS, result=value, **times))
    entries, note = ResultConverter(spec, OutputLimits()).entries(0, echoes, results)
    summary = summarize(spec.name, plan, entries, 0.01, note)
    jsonschema.validate({"summary": summary, "tasks": entries}, output_schema(spec))
    return summary, render_text(summary, entries, max_lines=20).splitlines()[0]


SPEED = spec_from_function(flame_speed)


def test_number_results_give_min_and_max_with_their_parameters_and_distinct_count() -> None:
    summary, line = run(SPEED, {"pressure": [1, 2, 5, 10], "temperature": 300})
    stats = summary["stats"]["result"]
    assert stats["max"] == {
        "value": 0.3845,
        "index": 0,
        "params": {"pressure": 1.0, "temperature": 300.0},
        "tasks": 1,
    }
    assert stats["min"]["value"] == 0.1216 and stats["min"]["index"] == 3
    assert (stats["distinct"], stats["count"]) == (4, 4)
    assert line == (
        "flame_speed: 4 tasks, 4 success (pressure 4 values; temperature=300.0 for every task); "
        "min 0.1216 at pressure=10.0, max 0.3845 at pressure=1.0, 4 distinct results of 4; "
        "0.01 s"
    )
    assert summary["distinct_params"] == 4 and "repeated" not in summary


def test_paired_lists_show_both_parameters_at_min_and_max() -> None:
    _, line = run(SPEED, {"pressure": [1, 2, 3], "temperature": [300, 400, 500]})
    assert "(pressure, temperature paired one-to-one, 3 values each)" in line
    assert "min 0.3845 at (pressure=1.0, temperature=300.0)" in line
    assert "max 0.5483 at (pressure=3.0, temperature=500.0)" in line


def test_every_combination_says_so_when_no_list_has_the_task_count() -> None:
    summary, line = run(
        SPEED, {"pressure": [1, 2, 3], "temperature": [300, 400, 500], "relation": "many-to-many"}
    )
    assert summary["total"] == 9 and summary["lengths"] == {"pressure": 3, "temperature": 3}
    assert line.startswith(
        "flame_speed: 9 tasks, 9 success (every combination of pressure 3 x temperature 3 "
        "values, relation many-to-many)"
    )


def test_repeated_values_under_many_to_many_are_counted_and_named() -> None:
    summary, line = run(
        SPEED,
        {"pressure": [1, 2, 5, 10], "temperature": [300] * 4, "relation": "many-to-many"},
    )
    assert summary["total"] == 16 and summary["distinct_params"] == 4
    assert summary["repeated"] == ["temperature"]
    assert "only 4 distinct parameter sets: temperature repeats values" in line
    assert "max 0.3845 at (pressure=1.0, temperature=300.0) (and 3 more tasks)" in line
    assert "4 distinct results of 16" in line


def test_repeated_pairs_under_one_to_one_are_counted() -> None:
    summary, line = run(SPEED, {"pressure": [1, 1, 2], "temperature": [300, 300, 300]})
    assert summary["distinct_params"] == 2 and summary["repeated"] == ["pressure", "temperature"]
    assert "only 2 distinct parameter sets: pressure, temperature repeat values" in line


def test_a_repeated_value_in_one_list_is_not_a_repeated_task() -> None:
    summary, line = run(SPEED, {"pressure": [1, 1, 2], "temperature": [300, 400, 500]})
    assert summary["distinct_params"] == 3 and "repeated" not in summary
    assert "distinct parameter" not in line


def test_equal_results_are_said_in_one_phrase() -> None:
    _, line = run(SPEED, {"pressure": [1, 2], "temperature": 300}, fn=lambda **_: 0.5)
    assert "all 2 results are 0.5;" in line and "min" not in line


def test_failed_tasks_are_left_out_of_the_statistics() -> None:
    summary, line = run(SPEED, {"pressure": [1, 2, 4], "temperature": 300}, fail={0})
    assert summary["stats"]["result"]["max"]["value"] == 0.2719
    assert summary["stats"]["result"]["count"] == 2
    assert "2 success, 1 failed" in line and "max 0.2719 at pressure=2.0" in line


def test_number_fields_of_object_results_each_get_statistics() -> None:
    spec = spec_from_function(flame)
    summary, line = run(spec, {"pressure": [1, 2], "temperature": [300, 400]})
    assert set(summary["stats"]) == {"speed", "width"}  # not the string, not the boolean
    assert summary["stats"]["speed"]["max"]["value"] == 402.0
    assert "speed: min 301.0 at (pressure=1.0, temperature=300.0)" in line
    assert "2 distinct values of 2; width: all 2 results are 1.0" in line


def test_a_command_whose_output_is_one_number_counts_as_a_number() -> None:
    spec = spec_from_template("sim {pressure} {temperature}", name="sim")
    summary, line = run(spec, {"pressure": [1, 10], "temperature": 300})
    assert summary["stats"]["result"]["min"]["value"] == 0.1216
    assert "min 0.1216 at pressure=10, max 0.3845 at pressure=1, 2 distinct" in line


def test_other_results_add_nothing() -> None:
    spec = spec_from_function(label)
    summary, line = run(spec, {"pressure": [1, 2], "temperature": 300})
    assert "stats" not in summary
    assert line == (
        "label: 2 tasks, 2 success (pressure 2 values; temperature=300.0 for every task); 0.01 s"
    )


def test_one_task_adds_no_statistics_to_the_line() -> None:
    summary, line = run(SPEED, {"pressure": 1, "temperature": 300})
    assert summary["stats"]["result"]["count"] == 1
    assert line == "flame_speed: 1 task, 1 success (one task); 0.01 s"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(float("nan"), None), (True, None), ("0.5 m/s", None), (" 2.5e-3\n", 0.0025)],
)
def test_only_finite_numbers_and_number_texts_count(value: Any, expected: float | None) -> None:
    from ensemble_mcp.results import result_stats

    entries = [
        {"index": 0, "params": {}, "status": "success", "result": value},
        {"index": 1, "params": {}, "status": "success", "result": 1},
    ]
    stats = result_stats(entries)
    if expected is None:
        assert stats == {}
    else:
        assert stats["result"]["min"]["value"] == expected
