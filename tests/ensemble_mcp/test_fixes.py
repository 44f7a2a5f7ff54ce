"""The corrected call an input error ends with: known slips of small models, mended and checked.

The call is written in full; nothing is shown when the mended call would not pass either.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from ensemble_mcp.errors import EnsembleInputError
from ensemble_mcp.fixes import CALL_CHARS, call_text, repair
from ensemble_mcp.plan import plan_ensemble
from ensemble_mcp.tools import spec_from_function


def flame_speed(pressure: float, temperature: float) -> float:
    """Laminar flame speed.

    Args:
        pressure: pressure of the unburned gas in atm.
        temperature: temperature of the unburned gas in K.
    """
    return pressure * temperature


def count(n: int, label: str) -> str:
    """Count, with a label.

    Args:
        n: how many, in items.
        label: a name.
    """
    return f"{label}{n}"


SPEC = spec_from_function(flame_speed)


def error_of(arguments: dict[str, Any], spec: Any = SPEC) -> str:
    with pytest.raises(EnsembleInputError) as info:
        plan_ensemble(spec, arguments, max_tasks=100)
    return str(info.value)


def corrected(text: str) -> dict[str, Any]:
    _, _, call = text.partition("Corrected call, ready to send:\n  ")
    assert call, text
    parsed: dict[str, Any] = json.loads(call)
    assert parsed["name"] == "flame_speed"
    return parsed["arguments"]


@pytest.mark.parametrize(
    ("name", "fixed"),
    [("pressures", "pressure"), ("P", "pressure"), ("temp", "temperature"), ("T", "temperature")],
)
def test_a_name_slightly_off_is_renamed_in_the_corrected_call(name: str, fixed: str) -> None:
    given = {"pressure": [1, 2], "temperature": [300, 400]}
    given[name] = given.pop(fixed)
    text = error_of(given)
    assert f"unknown argument {name!r}" in text
    assert corrected(text) == {"pressure": [1, 2], "temperature": [300, 400]}


@pytest.mark.parametrize(
    ("relation", "fixed"),
    [
        ("grid", "many-to-many"),
        ("Cartesian product", "many-to-many"),
        ("all pairs", "many-to-many"),
        ("many_to_many", "many-to-many"),
        ("zip", "one-to-one"),
        ("pairwise", "one-to-one"),
        ("One-To-One", "one-to-one"),
    ],
)
def test_a_relation_in_other_words_is_named_right_in_the_corrected_call(
    relation: str, fixed: str
) -> None:
    text = error_of({"pressure": [1, 2], "temperature": [300, 400], "relation": relation})
    assert corrected(text)["relation"] == fixed


def test_numbers_with_the_documented_unit_lose_it_in_the_corrected_call() -> None:
    text = error_of({"pressure": ["1 atm", "2.5atm"], "temperature": "300 K"})
    assert 'pressure[0] = "1 atm" is not a valid number' in text
    assert corrected(text) == {"pressure": [1, 2.5], "temperature": [300]}


def test_a_unit_the_description_does_not_name_is_not_dropped() -> None:
    text = error_of({"pressure": ["2 bar"], "temperature": [300]})
    assert "Corrected call" not in text


def test_several_slips_are_mended_together() -> None:
    text = error_of({"pressures": ["1 atm", "2 atm"], "T": [300, 400], "relation": "grid"})
    assert corrected(text) == {
        "relation": "many-to-many",
        "pressure": [1, 2],
        "temperature": [300, 400],
    }


def test_no_corrected_call_when_the_mend_would_still_fail() -> None:
    text = error_of({"pressures": [1, 2, 3], "temperature": [300, 400]})  # unequal lengths too
    assert "unknown argument 'pressures'" in text and "Corrected call" not in text
    assert "Corrected call" not in error_of({"pressure": [1]})  # missing: no value to give
    assert "Corrected call" not in error_of({"pressure": ["1-10"], "temperature": [300]})


def test_an_unknown_name_near_no_parameter_is_left_alone() -> None:
    assert repair(SPEC, {"pressure": [1], "temperature": [1], "colour": [2]}) is None


def test_integer_parameters_get_whole_numbers() -> None:
    spec = spec_from_function(count)
    assert repair(spec, {"n": ["3 items"], "label": ["a"]}) == {"n": [3], "label": ["a"]}


def test_a_call_is_written_as_a_model_sends_it_with_long_lists_in_full() -> None:
    args = {"pressure": list(range(100)), "temperature": [300]}
    assert json.loads(call_text("flame_speed", args)) == {"name": "flame_speed", "arguments": args}
    huge = {"pressure": list(range(2000)), "temperature": [300]}
    text = call_text("flame_speed", huge)
    assert len(text) < CALL_CHARS and text.endswith("(long lists shortened here)")
    assert '"... 1997 more values"' in text


def test_long_values_and_names_are_not_scanned_for_slips() -> None:
    digits = "1" * 50_000 + "x!"  # quadratic to scan with a careless pattern; refused at once
    text = error_of({"pressure": [digits], "temperature": [300]})
    assert "Corrected call" not in text and "pressure[0]" in text
    long_name = "pressure" + "s" * 60
    assert repair(SPEC, {long_name: [1], "temperature": [300]}) is None
