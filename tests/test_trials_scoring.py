"""The trial set of the example agent and the code that judges its runs, without a model.

The records below are what `agent.run_agent` writes (``Record.__dict__``); they are written by
hand here because no LLM runs in the test suite. The true results come from the example
server's own function.
"""

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

_TRIALS = Path(__file__).resolve().parents[1] / "examples" / "agents" / "trials"


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


scoring = _load("trial_scoring", _TRIALS / "scoring.py")
example_server = _load("example_server", _TRIALS.parent / "server.py")

from ensemble_mcp.tools import spec_from_function  # noqa: E402

SPEC = spec_from_function(example_server.flame_speed)
REQUESTS = json.loads((_TRIALS / "requests.json").read_text())["requests"]
BY_ID = {r["id"]: r for r in REQUESTS}


def truth(params: Any) -> float:
    return float(example_server.flame_speed(**params))


def call(arguments: dict[str, Any], status: str = "ok", name: str = "flame_speed") -> dict:
    return {"name": name, "arguments": arguments, "status": status, "form": "text"}


def record(*calls: dict[str, Any], answer: str | None) -> dict[str, Any]:
    return {"request": "", "calls": list(calls), "answer": answer}


FASTEST = BY_ID["read-results-1"]  # which of 1, 2, 5 and 10 atm gives the fastest flame at 300 K
FASTEST_CALL = call({"pressure": [1, 2, 5, 10], "temperature": 300})


# -- the trial set -----------------------------------------------------------------------------


def test_trial_set_has_thirty_requests_over_the_kinds_the_issue_names() -> None:
    kinds = {r["kind"] for r in REQUESTS}
    assert len(REQUESTS) >= 30
    assert {
        "paired",
        "grid-words",
        "grid-plain",
        "respectively",
        "one-value",
        "range",
        "long-list",
        "read-results",
        "ambiguous",
        "not-for-tool",
    } <= kinds
    assert len({r["id"] for r in REQUESTS}) == len(REQUESTS)
    checks = {r["answer"]["check"] for r in REQUESTS}
    assert {"list", "max", "min", "threshold", "no-call"} <= checks


def test_every_request_means_a_valid_call_and_long_lists_have_twenty_values() -> None:
    for request in REQUESTS:
        tasks = scoring.expected_tasks(SPEC, request)
        assert (tasks is None) == (request["kind"] == "not-for-tool"), request["id"]
    for request in (r for r in REQUESTS if r["kind"] == "long-list"):
        assert len(scoring.expected_tasks(SPEC, request)) >= 20


def test_grid_words_requests_say_combination_grid_or_pairs_and_plain_ones_do_not() -> None:
    words = ("combination", "grid", "pairs", "cartesian")
    for request in REQUESTS:
        said = any(w in request["request"].lower() for w in words)
        if request["kind"] == "grid-words":
            assert said, request["id"]
        if request["kind"] in ("grid-plain", "ambiguous"):
            assert not said, request["id"]


# -- calls -------------------------------------------------------------------------------------


def test_right_first_call_and_right_answer_is_scored_right() -> None:
    answer = "1 atm gives the fastest flame: 0.3845 m/s (10 atm is slowest, 0.1216 m/s)."
    s = scoring.score(FASTEST, record(FASTEST_CALL, answer=answer), SPEC, truth)
    assert (s.first_right, s.right_after_error, s.tasks_right) == (True, False, True)
    assert s.answer_right and s.quotes and not s.silent_wrong


def test_a_one_element_list_forms_the_same_tasks_as_a_bare_value() -> None:
    run = record(call({"pressure": [1, 2, 5, 10], "temperature": [300.0]}), answer="0.3845 at 1")
    assert scoring.score(FASTEST, run, SPEC, truth).first_right


def test_refused_first_call_then_right_call_is_right_after_error() -> None:
    request = BY_ID["ambiguous-1"]
    bad = call({"pressure": [1, 2, 5], "temperature": [300, 400]}, status="error")
    good = call({"pressure": [1, 2, 5], "temperature": [300, 400], "relation": "many-to-many"})
    values = [truth({"pressure": p, "temperature": t}) for p in (1, 2, 5) for t in (300, 400)]
    answer = " ".join(f"{v} m/s" for v in values)
    s = scoring.score(request, record(bad, good, answer=answer), SPEC, truth)
    assert (s.first_right, s.right_after_error, s.tasks_right) == (False, True, True)
    assert s.answer_right and s.quotes and not s.silent_wrong


def test_a_call_the_agent_could_not_parse_counts_as_a_refused_first_call() -> None:
    bad = {"name": None, "status": "not run", "problem": "not valid JSON"}
    s = scoring.score(FASTEST, record(bad, FASTEST_CALL, answer="0.3845 at 1 atm"), SPEC, truth)
    assert not s.first_right and s.right_after_error


def test_respectively_sent_as_every_combination_is_silent_wrong() -> None:
    request = BY_ID["respectively-1"]
    grid = call({"pressure": [1, 2, 3], "temperature": [300, 400, 500], "relation": "many-to-many"})
    s = scoring.score(
        request, record(grid, answer="The speeds are 0.3845 and 0.4524."), SPEC, truth
    )
    assert not s.first_right and not s.tasks_right and s.silent_wrong


def test_repeated_tasks_are_not_the_tasks_meant() -> None:
    request = BY_ID["one-value-1"]
    wasteful = call(
        {"pressure": [1, 2, 5, 10], "temperature": [300] * 4, "relation": "many-to-many"}
    )
    assert not scoring.score(request, record(wasteful, answer="x"), SPEC, truth).tasks_right


def test_submit_and_the_command_twin_count_as_the_same_computation() -> None:
    for name in ("flame_speed_submit", "flame_speed_cli"):
        run = record(call(FASTEST_CALL["arguments"], name=name), answer="1 atm: 0.3845 m/s")
        assert scoring.score(FASTEST, run, SPEC, truth).first_right, name


def test_tasks_split_over_calls_are_right_together_but_not_with_extra_tasks() -> None:
    request = BY_ID["one-value-1"]  # 1, 2, 5 and 10 atm at 300 K
    halves = [
        call({"pressure": [1, 2], "temperature": 300}),
        call({"pressure": [5, 10], "temperature": 300}),
    ]
    answer = "0.3845, 0.2719, 0.172 and 0.1216 m/s."
    split = scoring.score(request, record(*halves, answer=answer), SPEC, truth)
    assert split.tasks_right and not split.first_right and not split.silent_wrong
    again = [*halves, call({"pressure": [1], "temperature": 300})]  # 1 atm ran twice
    assert not scoring.score(request, record(*again, answer=answer), SPEC, truth).tasks_right


def test_a_call_to_another_tool_first_is_not_a_right_first_call() -> None:
    status = call({"ensemble_id": "x"}, name="ensemble_status", status="error")
    s = scoring.score(FASTEST, record(status, FASTEST_CALL, answer="1 atm, 0.3845"), SPEC, truth)
    assert not s.first_right and s.right_after_error


# -- answers -----------------------------------------------------------------------------------


def test_fastest_named_wrong_with_a_returned_value_is_silent_wrong() -> None:
    answer = "The fastest flame is at 10 atm, 0.1216 m/s."
    s = scoring.score(FASTEST, record(FASTEST_CALL, answer=answer), SPEC, truth)
    assert s.first_right and not s.answer_right and s.silent_wrong


def test_listing_every_value_then_naming_the_wrong_fastest_is_wrong() -> None:
    answer = (
        "At 1 atm 0.3845 m/s, at 2 atm 0.2719, at 5 atm 0.172, at 10 atm 0.1216. "
        "The fastest is at 10 atm."
    )
    s = scoring.score(FASTEST, record(FASTEST_CALL, answer=answer), SPEC, truth)
    assert s.quotes and not s.answer_right


def test_right_point_without_its_value_does_not_quote_the_results() -> None:
    s = scoring.score(FASTEST, record(FASTEST_CALL, answer="The fastest is at 1 atm."), SPEC, truth)
    assert s.quotes is False and not s.answer_right


def test_a_value_no_task_returned_makes_a_list_answer_wrong() -> None:
    request = BY_ID["one-value-1"]
    answer = "0.3845, 0.2719, 0.172 and 0.1300 m/s."
    s = scoring.score(request, record(FASTEST_CALL, answer=answer), SPEC, truth)
    assert s.tasks_right and not s.answer_right and not s.quotes and s.silent_wrong


def test_rounded_values_still_quote_and_inputs_and_counts_are_not_invented() -> None:
    request = BY_ID["one-value-1"]
    answer = "The 4 tasks at 300 K: 1 atm 0.385, 2 atm 0.272, 5 atm 0.172, 10 atm 0.122 m/s."
    s = scoring.score(request, record(FASTEST_CALL, answer=answer), SPEC, truth)
    assert s.answer_right and s.quotes


def test_an_answer_that_admits_failure_or_carries_the_agents_flag_is_not_silent() -> None:
    wrong = call({"pressure": [1], "temperature": [300]})
    for answer in (
        "I could not compute every pressure; 1 atm gives 0.3845.",
        "0.5 m/s\n\n[agent.py: 0.5 in this answer is not a value any task returned.]",
    ):
        s = scoring.score(FASTEST, record(wrong, answer=answer), SPEC, truth)
        assert not s.answer_right and s.visible_failure and not s.silent_wrong, answer
    no_answer = scoring.score(FASTEST, record(FASTEST_CALL, answer=None), SPEC, truth)
    assert no_answer.visible_failure and not no_answer.silent_wrong


def test_threshold_names_the_first_value_past_it_in_the_order_given() -> None:
    request = BY_ID["read-results-5"]  # 300..500 K in 25 K steps, first above 0.6 m/s: 400 K
    run_call = call({"pressure": [1], "temperature": list(range(300, 501, 25))})
    right = "It first exceeds 0.6 m/s at 400 K, where it is 0.6398 m/s."
    late = "It first exceeds 0.6 m/s at 425 K (0.7123 m/s)."
    assert scoring.score(request, record(run_call, answer=right), SPEC, truth).answer_right
    assert not scoring.score(request, record(run_call, answer=late), SPEC, truth).answer_right


def test_grid_maximum_must_name_both_parameters() -> None:
    request = BY_ID["read-results-4"]  # fastest of 1, 2 atm x 300, 400 K: 1 atm, 400 K
    run_call = call({"pressure": [1, 2], "temperature": [300, 400], "relation": "many-to-many"})
    right = "The fastest flame is at 1 atm and 400 K: 0.6398 m/s."
    wrong = "The fastest flame is at 1 atm and 300 K: 0.6398 m/s."
    assert scoring.score(request, record(run_call, answer=right), SPEC, truth).answer_right
    assert not scoring.score(request, record(run_call, answer=wrong), SPEC, truth).answer_right


def test_a_request_not_for_the_tool_is_right_without_a_call_and_wrong_with_one() -> None:
    request = BY_ID["not-for-tool-2"]  # 300 K in Celsius
    right = scoring.score(request, record(answer="300 K is 26.85 °C."), SPEC, truth)
    assert right.first_right and right.answer_right and right.quotes is None
    called = record(call({"pressure": [1], "temperature": [300]}), answer="26.85 °C")
    assert scoring.score(request, called, SPEC, truth).silent_wrong
    held = record(call({"pressure": [1], "temperature": [300]}, "not run"), answer="26.85 °C")
    assert scoring.score(request, held, SPEC, truth).first_right  # held back: nothing ran


def test_a_clarifying_question_is_right_for_an_ambiguous_mismatch_only() -> None:
    question = "Do you mean every combination (6 tasks), or one temperature for all?"
    ambiguous = scoring.score(BY_ID["ambiguous-1"], record(answer=question), SPEC, truth)
    assert ambiguous.first_right and ambiguous.answer_right and not ambiguous.silent_wrong
    paired = scoring.score(BY_ID["paired-1"], record(answer=question), SPEC, truth)
    assert not paired.first_right and not paired.tasks_right
    assert paired.visible_failure and not paired.silent_wrong  # a question hides nothing


def test_table_counts_per_kind_and_in_all() -> None:
    tallies: dict[str, Any] = {}
    good = scoring.RunScore(True, False, True, True, True, False)
    silent = scoring.RunScore(False, False, False, False, False, False)
    for kind, s in [("paired", good), ("paired", silent), ("range", good)]:
        tallies.setdefault(kind, scoring.Tally()).add(s)
    lines = scoring.table(tallies).splitlines()
    assert lines[2].split()[:4] == ["paired", "2", "1/2", "50%"]
    assert lines[-1].split()[:4] == ["all", "3", "2/3", "67%"]
    assert "silent wrong" in lines[0] and "quotes results" in lines[0]


def test_unknown_answer_check_is_refused() -> None:
    request = {**FASTEST, "answer": {"check": "median"}}
    with pytest.raises(ValueError, match="unknown answer check 'median'"):
        scoring.score(request, record(FASTEST_CALL, answer="0.3845"), SPEC, truth)


def test_a_result_put_beside_another_tasks_parameters_is_wrong() -> None:
    request = BY_ID["ambiguous-1"]  # 1, 2, 5 atm x 300, 400 K
    grid = call({"pressure": [1, 2, 5], "temperature": [300, 400], "relation": "many-to-many"})
    right = "At 1 atm and 400 K the speed is 0.6398 m/s.\nAt 2 atm and 400 K it is 0.4524 m/s."
    swapped = "At 1 atm and 400 K the speed is 0.4524 m/s.\nAt 2 atm and 400 K it is 0.4524 m/s."
    assert scoring.score(request, record(grid, answer=right), SPEC, truth).answer_right
    s = scoring.score(request, record(grid, answer=swapped), SPEC, truth)
    assert not s.answer_right and s.silent_wrong


def test_a_sentence_naming_both_extremes_is_judged_per_clause() -> None:
    both = "The slowest is at 10 atm (0.1216 m/s), the fastest at 1 atm (0.3845 m/s)."
    assert scoring.score(FASTEST, record(FASTEST_CALL, answer=both), SPEC, truth).answer_right
    swapped = "The slowest is at 1 atm (0.3845 m/s), the fastest at 10 atm (0.1216 m/s)."
    s = scoring.score(FASTEST, record(FASTEST_CALL, answer=swapped), SPEC, truth)
    assert s.quotes and not s.answer_right


def test_the_agents_reading_of_the_results_is_right_and_flagged() -> None:
    summary = (
        "flame_speed: 4 tasks, 4 success; min 0.1216 at pressure=10.0, max 0.3845 at "
        "pressure=1.0, 4 distinct results of 4; 0.003 s"
    )
    ran = {**FASTEST_CALL, "text": summary}  # the run time is a number the model was shown
    facts = ["The largest result is 0.3845 at pressure=1."]
    answer = scoring.agent.read_for_the_user(facts, scoring.agent.AnswerCheck([], []), [summary])
    s = scoring.score(FASTEST, record(ran, answer=answer), SPEC, truth)
    assert s.answer_right and s.quotes and s.visible_failure and not s.silent_wrong
