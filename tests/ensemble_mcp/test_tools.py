"""Ensemble tool specs without a server: schemas, descriptions, docstrings, broadcast, errors."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import pytest
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from core.template import CommandTemplate
from ensemble_mcp.docstrings import parse_docstring
from ensemble_mcp.errors import NOTHING_RUN, EnsembleInputError
from ensemble_mcp.plan import plan_ensemble
from ensemble_mcp.tools import (
    EnsembleSpec,
    describe,
    input_schema,
    spec_from_function,
    spec_from_template,
)


def flame_speed(pressure: float, temperature: float) -> float:
    """Laminar flame speed for one (pressure, temperature) point.

    Args:
        pressure: pressure in atm,
            absolute.
        temperature (float): temperature in K.

    Returns:
        The speed in m/s.
    """
    return pressure * temperature


def numpy_style(x: int, label: str = "a") -> str:
    """Label a number.

    Parameters
    ----------
    x : int
        The number
        to label.
    label : str
        The label.

    Returns:
    -------
    str
    """
    return f"{label}{x}"


def annotated(
    p: Annotated[float, Field(gt=0, le=100, description="pressure from Field")],
    n: Annotated[int, Field(ge=1)] = 3,
) -> float:
    """Annotated parameters.

    Args:
        p: pressure from the docstring.
        n: count from the docstring.
    """
    return p * n


SPEC = spec_from_function(flame_speed)


def plan(arguments: dict[str, Any], spec: EnsembleSpec = SPEC, max_tasks: int = 10_000) -> Any:
    return plan_ensemble(spec, arguments, max_tasks=max_tasks)


def error_text(
    arguments: dict[str, Any], spec: EnsembleSpec = SPEC, max_tasks: int = 10_000
) -> str:
    with pytest.raises(EnsembleInputError) as info:
        plan(arguments, spec, max_tasks)
    assert isinstance(info.value, ToolError)
    text = str(info.value)
    assert NOTHING_RUN in text
    return text


# -- schema ------------------------------------------------------------------------------------


def test_every_parameter_becomes_a_required_list_of_its_type_with_at_least_one_item() -> None:
    schema = input_schema(SPEC)
    assert schema["required"] == ["pressure", "temperature"]
    assert schema["properties"]["pressure"] == {
        "type": "array",
        "items": {"type": "number"},
        "minItems": 1,
        "description": "pressure in atm, absolute.",
    }
    assert schema["properties"]["temperature"]["description"] == "temperature in K."
    assert schema["additionalProperties"] is False


def test_relation_is_an_optional_enum_that_defaults_to_one_to_one() -> None:
    relation = input_schema(SPEC)["properties"]["relation"]
    assert relation["enum"] == ["one-to-one", "many-to-many"]
    assert relation["default"] == "one-to-one"
    assert "relation" not in input_schema(SPEC)["required"]


def test_defaulted_parameter_is_an_optional_list_whose_default_is_that_value() -> None:
    schema = input_schema(spec_from_function(numpy_style))
    assert schema["required"] == ["x"]
    assert schema["properties"]["label"]["default"] == ["a"]
    assert schema["properties"]["label"]["items"] == {"type": "string"}


def test_annotated_constraints_stay_on_the_items_and_field_description_wins() -> None:
    props = input_schema(spec_from_function(annotated))["properties"]
    assert props["p"]["items"] == {"type": "number", "exclusiveMinimum": 0, "maximum": 100}
    assert props["p"]["description"] == "pressure from Field"
    assert props["n"]["items"] == {"type": "integer", "minimum": 1}
    assert props["n"]["description"] == "count from the docstring."


def test_parameter_names_that_shadow_model_attributes_work() -> None:
    def f(schema: int, model_config: float = 1.0) -> int:
        return schema

    spec = spec_from_function(f)
    assert input_schema(spec)["required"] == ["schema"]
    assert [k for k, _ in plan({"schema": [1, 2], "model_config": 3}, spec).tasks()] == [
        {"schema": 1, "model_config": 3.0},
        {"schema": 2, "model_config": 3.0},
    ]


def test_pydantic_model_parameters_keep_their_definitions() -> None:
    from tests.ensemble_mcp.conftest_mcp import point

    schema = input_schema(spec_from_function(point))
    assert schema["properties"]["p"]["items"] == {"$ref": "#/$defs/Point"}
    assert set(schema["$defs"]["Point"]["properties"]) == {"pressure", "temperature"}


# -- docstrings --------------------------------------------------------------------------------


def test_google_args_become_parameter_texts_and_leave_the_description() -> None:
    doc = parse_docstring(flame_speed.__doc__)
    assert doc.params == {
        "pressure": "pressure in atm, absolute.",
        "temperature": "temperature in K.",
    }
    assert "Args:" not in doc.text and "pressure in atm" not in doc.text
    assert doc.text.startswith("Laminar flame speed") and "Returns:" in doc.text


def test_numpy_parameters_become_parameter_texts_and_leave_the_description() -> None:
    doc = parse_docstring(numpy_style.__doc__)
    assert doc.params == {"x": "The number to label.", "label": "The label."}
    assert "Parameters" not in doc.text and "Returns" in doc.text


def test_missing_docstring_gives_no_texts() -> None:
    assert parse_docstring(None).params == {}
    assert parse_docstring("One line.").text == "One line."


# -- description -------------------------------------------------------------------------------


def test_description_teaches_fan_out_relations_broadcast_and_cap_then_the_docstring() -> None:
    text = describe(SPEC, max_tasks=10_000)
    lines = text.splitlines()
    assert "ONE call" in lines[0]
    assert 'relation="many-to-many"' in text and "-> 6 tasks" in text
    assert "one-to-one, the default" in text and "-> 2 tasks" in text
    assert "the only meaning of lists of different lengths" in text
    assert "One value for every task" in text and "temperature=[300.0] -> 3 tasks" in text
    assert "At most 10,000 tasks" in text
    assert text.endswith("Returns:\n    The speed in m/s.")
    preamble = text.split("\n\n")[0]
    print(f"description: {len(text)} chars, of which the fan-out preamble is {len(preamble)}")
    assert len(preamble) < 600


# -- broadcast and relations -------------------------------------------------------------------


def tasks_of(arguments: dict[str, Any]) -> list[dict[str, Any]]:
    return [kwargs for kwargs, _ in plan(arguments).tasks()]


def test_one_element_list_is_used_for_every_task() -> None:
    p = plan({"pressure": [1, 2, 5, 10], "temperature": [300]})
    assert p.total == 4
    assert p.lengths == {"pressure": 4, "temperature": 4}
    assert p.broadcast == ("temperature",)
    assert [t["temperature"] for t in tasks_of({"pressure": [1, 2], "temperature": [300]})] == [
        300.0,
        300.0,
    ]


def test_bare_value_is_used_for_every_task() -> None:
    assert tasks_of({"pressure": [1, 2], "temperature": 300}) == [
        {"pressure": 1.0, "temperature": 300.0},
        {"pressure": 2.0, "temperature": 300.0},
    ]
    assert tasks_of({"pressure": 1, "temperature": 300}) == [
        {"pressure": 1.0, "temperature": 300.0}
    ]


def test_a_list_sent_as_json_text_is_read_as_a_list() -> None:
    assert plan({"pressure": "[1, 2]", "temperature": 300}).total == 2


def test_many_to_many_takes_every_combination_in_order_and_ignores_broadcast() -> None:
    p = plan({"pressure": [1, 2], "temperature": [300, 400, 500], "relation": "many-to-many"})
    assert p.total == 6 and p.broadcast == () and p.lengths == {"pressure": 2, "temperature": 3}
    assert [(k["pressure"], k["temperature"]) for k, _ in p.tasks()] == [
        (1, 300),
        (1, 400),
        (1, 500),
        (2, 300),
        (2, 400),
        (2, 500),
    ]
    assert plan({"pressure": [1, 2], "temperature": 300, "relation": "many-to-many"}).total == 2
    assert (
        plan({"pressure": [1, 2], "temperature": [3, 4], "relation": ["many-to-many"]}).total == 4
    )


def test_lists_longer_than_one_must_still_agree() -> None:
    text = error_text({"pressure": [1, 2, 5, 10], "temperature": [300, 400]})
    assert "pressure has 4 values and temperature has 2 values" in text
    every = '{"pressure": [1, 2, 5, 10], "temperature": [300, 400], "relation": "many-to-many"}'
    assert f'  {{"name": "flame_speed", "arguments": {every}}}' in text.splitlines()
    assert "(8 tasks)" in text and "give every list 4 values" in text
    assert '"temperature": [300]}' not in text  # the fix that drops values is not offered


def test_the_fixes_of_unequal_lengths_write_long_lists_in_full() -> None:
    pressures = list(range(1, 21))
    text = error_text({"pressure": pressures, "temperature": [300, 400]})
    every = {"pressure": pressures, "temperature": [300, 400], "relation": "many-to-many"}
    assert f"  {json.dumps({'name': 'flame_speed', 'arguments': every})}" in text.splitlines()


def test_parameters_with_defaults_may_be_left_out() -> None:
    p = plan_ensemble(spec_from_function(numpy_style), {"x": [1, 2]}, max_tasks=10)
    assert [k for k, _ in p.tasks()] == [{"x": 1}, {"x": 2}]


def test_elements_are_converted_to_their_type_and_echoed_as_json() -> None:
    ((kwargs, echo),) = plan({"pressure": ["2"], "temperature": [300]}).tasks()
    assert kwargs == {"pressure": 2.0, "temperature": 300.0} and echo == kwargs


# -- errors that show the fix ------------------------------------------------------------------


def test_wrong_item_type_names_parameter_index_and_expected_type() -> None:
    text = error_text({"pressure": [1, "high", 3], "temperature": [300]})
    assert 'pressure[1] = "high" is not a valid number' in text


def test_constraint_violation_names_parameter_index_and_the_rule() -> None:
    text = error_text({"p": [5, -1]}, spec_from_function(annotated))
    assert "p[1] = -1 is not a valid number: Input should be greater than 0" in text


def test_unknown_argument_lists_the_known_ones() -> None:
    text = error_text({"pressure": [1], "temperature": [300], "pres": [2]})
    assert "unknown argument 'pres'" in text
    assert "the arguments are: pressure (required), temperature (required), relation" in text


def test_missing_and_empty_and_bad_relation_are_each_named() -> None:
    assert "missing argument 'temperature'" in error_text({"pressure": [1]})
    assert "'pressure' is an empty list" in error_text({"pressure": [], "temperature": [1]})
    text = error_text({"pressure": [1], "temperature": [1], "relation": "zip"})
    assert 'relation must be "one-to-one" or "many-to-many", got "zip"' in text


def test_fan_out_over_the_cap_gives_the_count_and_the_cap() -> None:
    text = error_text(
        {"pressure": list(range(30)), "temperature": list(range(40)), "relation": "many-to-many"},
        max_tasks=1000,
    )
    assert "1,200 tasks" in text and "cap of 1,000 tasks" in text
    text = error_text({"pressure": list(range(1001)), "temperature": 1}, max_tasks=1000)
    assert "'pressure' has 1,001 values, above the cap of 1,000 per list" in text


def test_several_problems_are_reported_together() -> None:
    text = error_text({"pres": [1], "temperature": ["hot"]})
    assert text.count("\n- ") >= 1 and "unknown argument 'pres'" in text
    assert "missing argument 'pressure'" in text


# -- registration ------------------------------------------------------------------------------


def test_signatures_an_ensemble_cannot_pass_are_rejected_at_registration() -> None:
    def relation(relation: str) -> None: ...
    def varargs(*xs: int) -> None: ...
    def needs_ctx(x: int, ctx: Context) -> None: ...  # type: ignore[type-arg]

    with pytest.raises(ValueError, match="'relation' is reserved"):
        spec_from_function(relation)
    with pytest.raises(ValueError, match="by keyword"):
        spec_from_function(varargs)
    with pytest.raises(ValueError, match="worker process"):
        spec_from_function(needs_ctx)
    with pytest.raises(ValueError, match="give the tool a name"):
        spec_from_function(lambda x: x)


def test_async_functions_make_specs_like_sync_ones() -> None:
    async def scale(x: int) -> int:
        await asyncio.sleep(0)
        return x

    spec = spec_from_function(scale)
    assert spec.returns is int and spec.param_names == ("x",)


# -- command templates -------------------------------------------------------------------------


def test_template_placeholders_become_list_parameters() -> None:
    spec = spec_from_template(
        "./sim --p {p} --t {t}",
        name="sim",
        description="Simulate.",
        params={"p": Annotated[float, Field(gt=0, description="atm")]},
    )
    schema = input_schema(spec)
    assert schema["required"] == ["p", "t"]
    assert schema["properties"]["p"]["items"] == {"type": "number", "exclusiveMinimum": 0}
    assert schema["properties"]["p"]["description"] == "atm"
    assert describe(spec, max_tasks=10).endswith("Simulate.")


def test_each_template_value_is_exactly_one_argv_element() -> None:
    command = CommandTemplate.parse("echo --x={x} {y} 'a {x}'")
    assert command.argv({"x": "1 2; rm -rf /", "y": "$(id -u)"}) == [
        "echo",
        "--x=1 2; rm -rf /",
        "$(id -u)",
        "a 1 2; rm -rf /",
    ]
    assert command.argv({"x": 1.5, "y": True}) == ["echo", "--x=1.5", "true", "a 1.5"]


def test_malformed_templates_and_nul_values_are_rejected() -> None:
    with pytest.raises(ValueError, match="plain name"):
        CommandTemplate.parse("echo {x.attr}")
    with pytest.raises(ValueError, match="plain name"):
        CommandTemplate.parse("echo {x!r}")
    with pytest.raises(ValueError, match="not placeholders"):
        spec_from_template("echo {x}", name="e", params={"y": int})
    with pytest.raises(ValueError, match="needs a name"):
        spec_from_template("echo {x}", name=None)
    text = error_text({"x": ["ok", "bad\x00"]}, spec_from_template("echo {x}", name="e"))
    assert "x[1]" in text and "NUL" in text
