"""Ensemble tool specs: signature -> list-typed schema, description, and pre-launch planning.

A function ``f(a: float, b: int = 2)`` becomes a tool taking ``a: list[float]`` (required),
``b: list[int]`` (optional) and ``relation``. ``plan_ensemble`` turns the arguments of one call
into the tasks' keyword arguments, or raises ``EnsembleInputError`` (a ``ToolError``) whose text
names the parameter, the problem and the fix, before anything is launched.
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

from mcp.server.mcpserver.exceptions import ToolError
from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

# Re-exported: server.py and the tests import these from here.
from ensemble_mcp.docstrings import Docstring as Docstring
from ensemble_mcp.docstrings import parse_docstring as parse_docstring
from ensemble_mcp.templates import CommandTemplate as CommandTemplate
from ensemble_mcp.templates import TemplateValue as TemplateValue

Relation = Literal["one-to-one", "many-to-many"]
RELATIONS: tuple[str, ...] = ("one-to-one", "many-to-many")
NOTHING_RUN = "Nothing was run."
_MAX_PROBLEMS = 5


class EnsembleInputError(ToolError):
    """The arguments of an ensemble call cannot form its tasks; nothing was launched."""


# ---------------------------------------------------------------------------------------------
# Specs


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
        """Validates (and converts) a whole list of elements at once."""
        return TypeAdapter(list[self.element])  # type: ignore[name-defined]

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
    command = CommandTemplate.parse(template)
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
    '"one-to-one" (default): element i of every list forms task i; '
    '"many-to-many": every combination of the lists (a full grid, all pairs, '
    "a sweep of one list against another)."
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
        "default": "one-to-one",
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
            f"- one-to-one (default) pairs the lists: {a}={_sample(pa, 2)}, {b}={_sample(pb, 2, 1)}"
            " -> 2 tasks.",
            f'- relation="many-to-many" runs every combination (full grid): {a}={_sample(pa, 2)}, '
            f"{b}={_sample(pb, 3, 1)} -> 6 tasks.",
            f"- One value (or a 1-element list) is used for every task: {a}={_sample(pa, 3)}, "
            f"{b}={_sample(pb, 1, 1)[1:-1]} -> 3 tasks.",
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


# ---------------------------------------------------------------------------------------------
# Planning: arguments -> tasks, with the errors an agent can act on


@dataclass(frozen=True)
class Plan:
    """The tasks of one call: validated lists and how they combine."""

    relation: str
    values: dict[str, list[Any]]
    """Validated elements per given parameter (what the function receives)."""
    json_values: dict[str, list[Any]]
    """The same elements in JSON form (what the results echo)."""
    lengths: dict[str, int]
    """Each list's length after broadcast."""
    broadcast: tuple[str, ...]
    total: int

    def indices(self) -> Iterator[tuple[int, ...]]:
        """Per task, the element index into each list (in ``values`` order)."""
        sizes = [len(v) for v in self.values.values()]
        if self.relation == "many-to-many":
            yield from itertools.product(*(range(n) for n in sizes))
            return
        for i in range(self.total):
            yield tuple(i if n > 1 else 0 for n in sizes)

    def tasks(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Per task, in order: (keyword arguments, JSON echo of the same arguments)."""
        names = list(self.values)
        values = list(self.values.values())
        echoes = list(self.json_values.values())
        for idx in self.indices():
            yield (
                {n: v[j] for n, v, j in zip(names, values, idx, strict=True)},
                {n: v[j] for n, v, j in zip(names, echoes, idx, strict=True)},
            )


def plan_ensemble(spec: EnsembleSpec, arguments: Mapping[str, Any], *, max_tasks: int) -> Plan:
    """Check one call's arguments and lay out its tasks.

    Under ``one-to-one``, a 1-element list or a bare value is used for every task; lists longer
    than one must have equal lengths. ``many-to-many`` takes the Cartesian product.

    Raises:
        EnsembleInputError: unknown or missing arguments, a bad relation, empty lists, unequal
            lengths, more tasks than ``max_tasks``, or elements of the wrong type.
    """
    args = dict(arguments)
    problems: list[str] = []
    relation = args.pop("relation", None) or "one-to-one"
    if isinstance(relation, list) and len(relation) == 1:
        relation = relation[0]  # the list habit of every other argument
    if relation not in RELATIONS:
        problems.append(f'relation must be "one-to-one" or "many-to-many", got {_show(relation)}')
    unknown = [k for k in args if k not in spec.param_names]
    if unknown:
        problems.append(
            f"unknown argument{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(k) for k in unknown)}; the arguments are: "
            f"{_known(spec)}"
        )
    raw: dict[str, list[Any]] = {}
    for p in spec.params:
        value = args.get(p.name)
        if value is None:
            if p.required:
                problems.append(
                    f"missing argument {p.name!r}: a list of {p.type_label} values, one per task"
                )
            continue
        raw[p.name] = _as_list(p, value)
        if not raw[p.name]:
            problems.append(f"{p.name!r} is an empty list; give at least one value")
    if problems:
        raise _error(problems)
    lengths = {n: len(v) for n, v in raw.items()}
    total = _count(spec, relation, raw, lengths, max_tasks)
    values, json_values = _validate(spec, raw)
    broadcast: tuple[str, ...] = ()
    if relation == "one-to-one":
        broadcast = tuple(n for n, k in lengths.items() if k == 1 and total > 1)
        lengths = dict.fromkeys(lengths, total)
    return Plan(
        relation=relation,
        values=values,
        json_values=json_values,
        lengths=lengths,
        broadcast=broadcast,
        total=total,
    )


def _as_list(p: Param, value: Any) -> list[Any]:
    if isinstance(value, str) and p.type_label != "string" and value.lstrip().startswith("["):
        try:  # some clients send a list as its JSON text
            value = json.loads(value)
        except ValueError:
            pass
    if not isinstance(value, list):
        return [value]
    if p.takes_lists and value and not isinstance(value[0], (list, tuple)):
        return [value]
    return value


def _count(
    spec: EnsembleSpec,
    relation: str,
    raw: dict[str, list[Any]],
    lengths: dict[str, int],
    max_tasks: int,
) -> int:
    if relation == "many-to-many":
        total = math.prod(lengths.values())
        formed = " x ".join(f"{n} {k}" for n, k in lengths.items())
        if total > max_tasks:
            raise _error(
                [
                    f"this call would run {total:,} tasks ({formed}, relation "
                    f'"many-to-many"), above the cap of {max_tasks:,} tasks per call; '
                    "split it into several calls"
                ]
            )
        return total
    long = {n: k for n, k in lengths.items() if k > 1}
    if len(set(long.values())) > 1:
        raise EnsembleInputError(_unequal_message(spec, raw, long, max_tasks))
    total = max(lengths.values(), default=1)
    if total > max_tasks:
        raise _error(
            [
                f"this call would run {total:,} tasks (lists of {total:,} values), above "
                f"the cap of {max_tasks:,} tasks per call; split it into several calls"
            ]
        )
    return total


def _validate(
    spec: EnsembleSpec, raw: dict[str, list[Any]]
) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    problems: list[str] = []
    values: dict[str, list[Any]] = {}
    json_values: dict[str, list[Any]] = {}
    for p in spec.params:
        if p.name not in raw:
            continue
        try:
            values[p.name] = p.adapter.validate_python(raw[p.name])
        except ValidationError as exc:
            for err in exc.errors(include_url=False)[:_MAX_PROBLEMS]:
                index = err["loc"][0] if err["loc"] else 0
                shown = _show(raw[p.name][index]) if isinstance(index, int) else "?"
                problems.append(
                    f"{p.name}[{index}] = {shown} is not a valid {p.type_label}: {err['msg']}"
                )
            continue
        json_values[p.name] = p.adapter.dump_python(values[p.name], mode="json")
    if problems:
        raise _error(problems)
    return values, json_values


def _error(problems: list[str]) -> EnsembleInputError:
    shown = problems[:_MAX_PROBLEMS]
    more = len(problems) - len(shown)
    if more:
        shown.append(f"... and {more} more problem{'s' if more > 1 else ''}")
    if len(shown) == 1:
        return EnsembleInputError(f"{shown[0]}. {NOTHING_RUN}")
    return EnsembleInputError("\n".join(f"- {s}" for s in shown) + f"\n{NOTHING_RUN}")


def _unequal_message(
    spec: EnsembleSpec, raw: dict[str, list[Any]], long: dict[str, int], max_tasks: int
) -> str:
    top = max(long.values())
    parts = [f"{n} has {k} values" for n, k in long.items()]
    shorter = [n for n, k in long.items() if k != top]
    one = {n: (raw[n][:1] if n in shorter else v) for n, v in raw.items()}
    every = {**raw, "relation": "many-to-many"}
    product = math.prod(len(v) for v in raw.values())
    over = f", above the cap of {max_tasks:,}" if product > max_tasks else ""
    lead = ", ".join(parts[:-1]) + f" and {parts[-1]}"
    return (
        f'Under relation "one-to-one" the lists must have equal lengths (a 1-element list is '
        f"used for every task), but {lead}. {NOTHING_RUN}\n"
        f'If every combination is meant ({product:,} tasks{over}), add relation="many-to-many":\n'
        f"  {spec.name}({_show_args(every)})\n"
        f"If each task has its own values, give every list {top} values.\n"
        f"If one {' and one '.join(shorter)} is meant for every task, give only that value "
        f"(this leaves out the other values you gave):\n"
        f"  {spec.name}({_show_args(one)})"
    )


def _known(spec: EnsembleSpec) -> str:
    names = [f"{p.name} (required)" if p.required else p.name for p in spec.params]
    return ", ".join([*names, "relation"])


def _show(value: Any, limit: int = 40) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show_args(args: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_show_list(v)}" for k, v in args.items())


def _show_list(value: Any) -> str:
    if not isinstance(value, list) or len(value) <= 8:
        return json.dumps(value)
    head = ", ".join(json.dumps(v) for v in value[:3])
    return f"[{head}, ... ({len(value)} values)]"
