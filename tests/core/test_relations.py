"""How lists form tasks (core.relations), and that ensemble files and tool calls share it."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.ensemble import expand_tasks
from core.errors import ConfigError
from core.relations import RELATIONS, UnequalLengthsError, fan_out
from ensemble_mcp.plan import plan_ensemble
from ensemble_mcp.tools import spec_from_template

quick = settings(deadline=None, max_examples=60)  # no deadline: the machine is shared


def test_one_to_one_pairs_lists_and_broadcasts_one_value() -> None:
    fanout = fan_out("one-to-one", {"p": 3, "t": 1, "q": 3})

    assert (fanout.total, fanout.broadcast) == (3, ("t",))
    assert list(fanout.indices()) == [(0, 0, 0), (1, 0, 1), (2, 0, 2)]


def test_many_to_many_takes_every_combination_last_list_fastest() -> None:
    fanout = fan_out("many-to-many", {"p": 2, "t": 3})

    assert (fanout.total, fanout.broadcast) == (6, ())
    assert list(fanout.indices()) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


@pytest.mark.parametrize("relation", RELATIONS)
def test_no_lists_form_one_task(relation: Any) -> None:
    fanout = fan_out(relation, {})

    assert fanout.total == 1 and list(fanout.indices()) == [()]


def test_unequal_lengths_carry_the_lengths_and_the_task_count_of_each_fix() -> None:
    with pytest.raises(UnequalLengthsError) as caught:
        fan_out("one-to-one", {"a": 4, "b": 1, "c": 2, "d": 3})
    error = caught.value

    assert isinstance(error, ConfigError)
    assert error.lengths == {"a": 4, "b": 1, "c": 2, "d": 3}
    assert (error.longest, error.shorter, error.mismatch) == (4, ("c", "d"), "c")
    assert (error.every_combination, error.equal_lengths, error.one_value) == (24, 4, 4)
    assert str(error).startswith("lengths differ (a: 4, b: 1, c: 2, d: 3)")


@quick
@given(
    st.sampled_from(RELATIONS),
    st.lists(st.integers(1, 3), min_size=1, max_size=3).filter(
        lambda ns: len({n for n in ns if n > 1}) <= 1
    ),
)
def test_an_ensemble_file_and_a_tool_call_form_the_same_tasks(
    relation: Any, lengths: list[int]
) -> None:
    names = [f"k{i}" for i in range(len(lengths))]
    lists = {
        name: [f"{name}.{j}" for j in range(n)] for name, n in zip(names, lengths, strict=True)
    }
    template = "x " + " ".join(f"{{{name}}}" for name in names)
    spec = {"cmd_template": template, "relation": relation, **lists}
    from_file = [t.argv()[1:] for t in expand_tasks({"ensembles": {"e": spec}})]
    plan = plan_ensemble(
        spec_from_template(template, name="e"), {**lists, "relation": relation}, max_tasks=100
    )
    from_tool = [[kwargs[name] for name in names] for kwargs, _ in plan.tasks()]

    assert from_file == from_tool
    assert len(from_file) == (math.prod(lengths) if relation == "many-to-many" else max(lengths))
