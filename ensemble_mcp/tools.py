"""Ensemble tool specs: a function signature or command template -> list-typed schema and text.

A function ``f(a: float, b: int = 2)`` becomes a tool taking ``a: list[float]`` (required),
``b: list[int]`` (optional) and ``relation``. A command template ``"./sim --p {p}"`` becomes a
tool taking ``p`` (numbers, strings or booleans, unless typed). How one call's lists form its
tasks is :mod:`ensemble_mcp.plan`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, get_args, get_origin, get_type_hints

from pydantic import ConfigDict, TypeAdapter
from pydantic.fields import FieldInfo

from core.relations import DEFAULT_RELATION, RELATIONS
from core.template import CommandTemplate, TemplateValue
from ensemble_mcp.docstrings import parse_docstring

__all__ = (
    "EnsembleSpec",
    "Param",
    "describe",
    "input_schema",
    "spec_from_function",
    "spec_from_template",
)


# ---------------------------------------------------------------------------------------------
# Specs

_FINITE = ConfigDict(allow_inf_nan=False)


@dataclass(frozen=True)
class Param:
    """One parameter of the function, seen as one element of its list."""

    name: str
    element: Any
    """The element type, with its constraints but without its description."""
    required: bool
    default: Any
    description: str | None

    @cached_property
    def adapter(self) -> TypeAdapter[list[Any]]:
        """Validates (and converts) a whole list of elements at once.

        Numbers must be finite: JSON has no NaN or infinity, so ``"nan"`` or ``"1e400"`` sent
        for a number is a mistake, and its echo in the results could only be ``null``.
        """
        return TypeAdapter(list[self.element], config=_FINITE)  # type: ignore[name-defined]

    @cached_property
    def items_schema(self) -> dict[str, Any]:
        """The JSON schema of one element."""
        schema: dict[str, Any] = self.adapter.json_schema()
        items: dict[str, Any] = schema.get("items", {})
        if "$defs" in schema:
            items = {**items, "$defs": schema["$defs"]}
        return items

    @cached_property
    def type_label(self) -> str:
        """A short name of the element type for texts: ``number``, ``integer``, ``string``..."""
        items = self.items_schema
        if "type" in items and isinstance(items["type"], str):
            return str(items["type"])
        if "$ref" in items:
            return "object " + str(items["$ref"]).rsplit("/", 1)[-1]
        kinds = [s.get("type") for s in items.get("anyOf", []) if isinstance(s, dict)]
        if kinds and all(isinstance(k, str) for k in kinds):
            return " or ".join(dict.fromkeys(str(k) for k in kinds))
        return "value"

    @cached_property
    def takes_lists(self) -> bool:
        """Whether one element is itself a list (then a bare list is not one element)."""
        base = get_args(self.element)[0] if get_origin(self.element) is Annotated else self.element
        return get_origin(base) in (list, tuple, set, frozenset, Sequence) or base in (list, tuple)


@dataclass(frozen=True)
class EnsembleSpec:
    """What an ensemble tool runs and how its arguments look."""

    name: str
    params: tuple[Param, ...]
    returns: Any
    doc: str
    executable: Callable[..., Any] | CommandTemplate = field(repr=False)

    @property
    def is_command(self) -> bool:
        """True for a command template tool."""
        return isinstance(self.executable, CommandTemplate)

    @cached_property
    def param_names(self) -> tuple[str, ...]:
        """The parameter names, in signature order."""
        return tuple(p.name for p in self.params)


def spec_from_function(
    fn: Callable[..., Any], *, name: str | None = None, description: str | None = None
) -> EnsembleSpec:
    """Build the spec of a tool that runs ``fn`` once per task.

    Raises:
        ValueError: a parameter cannot be given by keyword from a JSON argument.
    """
    tool_name = name or getattr(fn, "__name__", "")
    if not tool_name or tool_name == "<lambda>":
        raise ValueError("give the tool a name: ensemble_tool(fn, name=...)")
    sig = inspect.signature(fn)
    hints = get_type_hints(fn, include_extras=True)
    doc = parse_docstring(fn.__doc__)
    params = []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise ValueError(
                f"{tool_name}: parameter {p.name!r} is {p.kind.description}; an "
                "ensemble tool passes every value by keyword"
            )
        _check_param_name(tool_name, p.name)
        annotation = hints.get(p.name, Any)
        if getattr(annotation, "__name__", "") == "Context":
            raise ValueError(
                f"{tool_name}: parameter {p.name!r} asks for the MCP Context, but "
                "an ensemble task runs in a worker process, not in the server"
            )
        params.append(_param(p.name, annotation, p.default, doc.params.get(p.name)))
    returns = hints.get("return", Any)
    text = description if description is not None else doc.text
    return EnsembleSpec(
        name=tool_name, params=tuple(params), returns=returns, doc=text, executable=fn
    )


def spec_from_template(
    template: str,
    *,
    name: str | None,
    description: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> EnsembleSpec:
    """Build the spec of a tool that runs a command template once per task.

    ``params`` optionally types placeholders (``{"p": Annotated[float, Field(gt=0)]}``);
    others take a number or a string.

    Raises:
        ValueError: no name, a malformed template, or ``params`` naming an unknown placeholder.
    """
    if not name:
        raise ValueError(
            f"a command template tool needs a name: ensemble_tool({template!r}, name=...)"
        )
    try:
        command = CommandTemplate.parse(template)
    except ValueError as exc:
        raise ValueError(f"{name}: command template {template!r}: {exc}") from None
    given = dict(params or {})
    extra = sorted(set(given) - set(command.names))
    if extra:
        raise ValueError(
            f"{name}: params {extra} are not placeholders of {template!r} "
            f"(placeholders: {list(command.names)})"
        )
    specs = []
    for pname in command.names:
        _check_param_name(name, pname)
        specs.append(_param(pname, given.get(pname, TemplateValue), inspect.Parameter.empty, None))
    return EnsembleSpec(
        name=name,
        params=tuple(specs),
        returns=str,
        doc=description or f"Runs the command `{template}`.",
        executable=command,
    )


def _check_param_name(tool: str, pname: str) -> None:
    if pname == "relation":
        raise ValueError(
            f"{tool}: parameter name 'relation' is reserved for the ensemble "
            "relation; rename the parameter"
        )
    if pname.startswith("_"):
        raise ValueError(f"{tool}: parameter {pname!r} starts with '_', which MCP tools reject")


def _param(pname: str, annotation: Any, default: Any, doc_text: str | None) -> Param:
    """Hoist the description (and title) off the element type onto the list parameter."""
    description = doc_text
    element = annotation
    if get_origin(annotation) is Annotated:
        base, *metadata = get_args(annotation)
        kept: list[Any] = []
        for meta in metadata:
            if isinstance(meta, FieldInfo):
                description = meta.description or description
                kept.extend(meta.metadata)
            else:
                kept.append(meta)
        element = Annotated.__class_getitem__((base, *kept)) if kept else base
    required = default is inspect.Parameter.empty
    return Param(
        name=pname,
        element=element,
        required=required,
        default=None if required else default,
        description=description,
    )


# ---------------------------------------------------------------------------------------------
# Schema and description


_RELATION_HELP = (
    '"one-to-one" (default): element i of every list forms task i, for cases given point by '
    'point; "many-to-many": every combination of the lists (a grid), the only relation for '
    "lists of different lengths. No other value."
)


def input_schema(spec: EnsembleSpec) -> dict[str, Any]:
    """The tool's input JSON schema: one array per parameter, plus ``relation``."""
    properties: dict[str, Any] = {}
    defs: dict[str, Any] = {}
    for p in spec.params:
        items = dict(p.items_schema)
        defs.update(items.pop("$defs", {}))
        prop: dict[str, Any] = {"type": "array", "items": items, "minItems": 1}
        if p.description:
            prop["description"] = p.description
        if not p.required and _is_json(p.default):
            prop["default"] = [p.default]
        properties[p.name] = prop
    properties["relation"] = {
        "type": "string",
        "enum": list(RELATIONS),
        "default": DEFAULT_RELATION,
        "description": _RELATION_HELP,
    }
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": [p.name for p in spec.params if p.required],
        "additionalProperties": False,
    }
    if defs:
        schema["$defs"] = defs
    return schema


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def describe(spec: EnsembleSpec, *, max_tasks: int) -> str:
    """The tool description an agent reads: how the fan-out works, then the docstring."""
    names = [p.name for p in sorted(spec.params, key=lambda p: not p.required)]
    lines = ["One call runs one task per list element: put every case in ONE call."]
    if len(names) >= 2:
        a, b = names[0], names[1]
        pa, pb = _param_by_name(spec, a), _param_by_name(spec, b)
        lines += [
            f"- Points (each {a} with its own {b}): one-to-one, the default, pairs the lists: "
            f"{a}={_sample(pa, 2)}, {b}={_sample(pb, 2, 1)} -> 2 tasks.",
            "- Every combination (a grid; the only meaning of lists of different lengths): "
            f'relation="many-to-many": {a}={_sample(pa, 2)}, {b}={_sample(pb, 3, 1)} -> 6 tasks.',
            f"- One value for every task, under either relation: a 1-element list, {a}="
            f"{_sample(pa, 3)}, {b}={_sample(pb, 1, 1)} -> 3 tasks.",
        ]
    elif names:
        lines.append(f"Example: {names[0]}={_sample(spec.params[0], 3)} -> 3 tasks.")
    lines.append(f"At most {max_tasks:,} tasks per call. Results list each task's status.")
    text = "\n".join(lines)
    return f"{text}\n\n{spec.doc}" if spec.doc else text


def _param_by_name(spec: EnsembleSpec, pname: str) -> Param:
    return next(p for p in spec.params if p.name == pname)


_SAMPLES: dict[str, tuple[list[Any], list[Any]]] = {
    "number": ([1.0, 2.0, 5.0], [300.0, 400.0, 500.0]),
    "integer": ([1, 2, 5], [10, 20, 30]),
    "string": (["a", "b", "c"], ["x", "y", "z"]),
    "boolean": ([True, False, True], [False, True, False]),
}


def _sample(p: Param, n: int, which: int = 0) -> str:
    values = _SAMPLES.get(p.type_label)
    if values is None:
        return "[" + ", ".join(f"{p.name[0]}{i + 1}" for i in range(n)) + "]"
    return json.dumps(values[which][:n])
