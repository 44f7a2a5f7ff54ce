"""One call's arguments -> its tasks, or an error that shows the agent the fix.

``plan_ensemble`` checks the arguments of one ensemble tool call and lays out its tasks with the
rule of :mod:`core.relations`, or raises ``EnsembleInputError`` (a ``ToolError``) whose text
names the parameter, the problem and the fix, before anything is launched. The texts were tuned
for small LLMs: the fix that loses nothing comes first, with the corrected call written out.
Sizes are bounded before any value is converted: a list by the call's task cap, a value and all
values together by :class:`InputLimits`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from core.relations import (
    DEFAULT_RELATION,
    RELATIONS,
    Fanout,
    Relation,
    UnequalLengthsError,
    fan_out,
    is_relation,
)
from core.spec_values import MAX_VALUE_CHARS, cut_repr
from ensemble_mcp.errors import NOTHING_RUN, EnsembleInputError
from ensemble_mcp.fixes import call_text, corrected_call
from ensemble_mcp.tools import EnsembleSpec, Param

__all__ = ("InputLimits", "Plan", "plan_ensemble", "show_json")

_MAX_PROBLEMS = 5
_SCALARS = (int, float, bool, type(None))
_SMALL_TYPES = ("number", "integer", "boolean")
_STR = {str}


@dataclass(frozen=True)
class InputLimits:
    """Bounds on the arguments of one call, checked before any value is converted.

    ==========================  ===========================================================
    ``value_chars=100_000``     one list element: a string's characters, another value's JSON
    ``total_chars=50_000_000``  all tasks' values, each counted once per task that uses it
    ==========================  ===========================================================

    A list may hold at most as many values as one call may run tasks (``Server(max_tasks=)``).
    """

    value_chars: int = MAX_VALUE_CHARS
    total_chars: int = 50_000_000

    def __post_init__(self) -> None:
        for name in ("value_chars", "total_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"InputLimits.{name} must be a whole number >= 1, got {value!r}")


@dataclass(frozen=True)
class Plan:
    """The tasks of one call: validated lists and how they combine."""

    fanout: Fanout
    values: dict[str, list[Any]]
    """Validated elements per given parameter (what the function receives)."""
    json_values: dict[str, list[Any]]
    """The same elements in JSON form (what the results echo)."""

    @property
    def relation(self) -> Relation:
        """The relation the lists combine by."""
        return self.fanout.relation

    @property
    def total(self) -> int:
        """The number of tasks."""
        return self.fanout.total

    @property
    def broadcast(self) -> tuple[str, ...]:
        """The 1-element lists used for every task."""
        return self.fanout.broadcast

    @property
    def lengths(self) -> dict[str, int]:
        """Each list's length after broadcast."""
        if self.relation == "one-to-one":
            return dict.fromkeys(self.fanout.lengths, self.total)
        return dict(self.fanout.lengths)

    def tasks(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Per task, in order: (keyword arguments, JSON echo of the same arguments)."""
        names = list(self.values)
        values = list(self.values.values())
        echoes = list(self.json_values.values())
        for idx in self.fanout.indices():
            yield (
                {n: v[j] for n, v, j in zip(names, values, idx, strict=True)},
                {n: v[j] for n, v, j in zip(names, echoes, idx, strict=True)},
            )


def plan_ensemble(
    spec: EnsembleSpec,
    arguments: Mapping[str, Any],
    *,
    max_tasks: int,
    limits: InputLimits = InputLimits(),
) -> Plan:
    """Check one call's arguments and lay out its tasks.

    Under ``one-to-one``, a 1-element list or a bare value is used for every task; lists longer
    than one must have equal lengths. ``many-to-many`` takes the Cartesian product. An error
    that :func:`ensemble_mcp.fixes.repair` can mend ends with the corrected call.

    Raises:
        EnsembleInputError: unknown or missing arguments, a bad relation, empty lists, unequal
            lengths, more tasks than ``max_tasks``, a list longer than ``max_tasks``, values
            over ``limits``, or elements of the wrong type.
    """
    try:
        return _plan(spec, arguments, max_tasks, limits)
    except EnsembleInputError as exc:
        fix = corrected_call(spec, arguments, lambda args: _plan(spec, args, max_tasks, limits))
        if fix is None:
            raise
        raise EnsembleInputError(f"{exc}\n{fix}") from None


def _plan(
    spec: EnsembleSpec, arguments: Mapping[str, Any], max_tasks: int, limits: InputLimits
) -> Plan:
    args = dict(arguments)
    problems: list[str] = []
    relation = args.pop("relation", None)
    if relation is None:
        relation = DEFAULT_RELATION
    if isinstance(relation, list) and len(relation) == 1:
        relation = relation[0]  # the list habit of every other argument
    if not is_relation(relation):
        allowed = " or ".join(json.dumps(r) for r in RELATIONS)
        problems.append(f"relation must be {allowed}, got {show_json(relation)}")
    unknown = [k for k in args if k not in spec.param_names]
    if unknown:
        shown = ", ".join(cut_repr(k, 40) for k in unknown[:_MAX_PROBLEMS])
        more = f" and {len(unknown) - _MAX_PROBLEMS:,} more" if len(unknown) > _MAX_PROBLEMS else ""
        problems.append(
            f"unknown argument{'s' if len(unknown) > 1 else ''} "
            f"{shown}{more}; the arguments are: {_known(spec)}"
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
        raw[p.name] = listed = _as_list(p, value)
        if not listed:
            problems.append(f"{p.name!r} is an empty list; give at least one value")
        elif len(listed) > max_tasks:
            problems.append(
                f"{p.name!r} has {len(listed):,} values, above the cap of {max_tasks:,} per list "
                f"(a call runs at most {max_tasks:,} tasks); split it into several calls"
            )
    if problems or not is_relation(relation):
        raise _error(problems)
    sizes = _sizes(spec, raw, limits.value_chars)
    fanout = _fan_out(spec, relation, raw, max_tasks)
    _check_total(sizes, fanout, limits.total_chars)
    values, json_values = _validate(spec, raw)
    return Plan(fanout=fanout, values=values, json_values=json_values)


def _sizes(spec: EnsembleSpec, raw: dict[str, list[Any]], cap: int) -> dict[str, int]:
    """The characters of each list's values together; raises when one value is over ``cap``.

    Lists of a number or boolean parameter are skipped: their values are small, or refused by
    their type.
    """
    problems: list[str] = []
    sizes: dict[str, int] = {}
    for p in spec.params:
        values = raw.get(p.name)
        if values is None or p.type_label in _SMALL_TYPES:
            continue
        if set(map(type, values)) == _STR:  # the common case, at C speed
            lengths = list(map(len, values))
        else:
            lengths = [_size(value) for value in values]
        sizes[p.name] = sum(lengths)
        if max(lengths) > cap:
            for index, chars in enumerate(lengths):
                if chars > cap:
                    what = "" if isinstance(values[index], str) else " as JSON"
                    problems.append(
                        f"{p.name}[{index}] has {chars:,} characters{what}, above the cap of "
                        f"{cap:,} per value"
                    )
    if problems:
        raise _error(problems)
    return sizes


def _size(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    return 0 if isinstance(value, _SCALARS) else len(_json_text(value))


def _check_total(sizes: dict[str, int], fanout: Fanout, cap: int) -> None:
    """Refuse a call whose tasks' values add up to more than ``cap`` characters."""
    # Each value of a list of n values is used by total / n tasks (broadcast or product alike).
    used = {name: size * (fanout.total // fanout.lengths[name]) for name, size in sizes.items()}
    total = sum(used.values())
    if total > cap:
        largest = max(used, key=used.__getitem__)
        raise _error(
            [
                f"the values of the {fanout.total:,} tasks add up to {total:,} characters "
                f"({largest}: {used[largest]:,}; a value counts once per task that uses it), "
                f"above the cap of {cap:,} per call; give long values to fewer tasks, or "
                "split the call"
            ]
        )


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return repr(value)


def _as_list(p: Param, value: Any) -> list[Any]:
    if isinstance(value, str) and p.type_label != "string" and value.lstrip().startswith("["):
        try:  # some clients send a list as its JSON text
            value = json.loads(value)
        except (ValueError, RecursionError):
            pass
    if not isinstance(value, list):
        return [value]
    if p.takes_lists and value and not isinstance(value[0], (list, tuple)):
        return [value]
    return value


def _fan_out(
    spec: EnsembleSpec, relation: Relation, raw: dict[str, list[Any]], max_tasks: int
) -> Fanout:
    try:
        fanout = fan_out(relation, {n: len(v) for n, v in raw.items()})
    except UnequalLengthsError as exc:
        raise EnsembleInputError(_unequal_message(spec, raw, exc, max_tasks)) from None
    if fanout.total > max_tasks:  # one-to-one cannot pass it: no list is over max_tasks
        formed = " x ".join(f"{n} {k}" for n, k in fanout.lengths.items())
        raise _error(
            [
                f"this call would run {fanout.total:,} tasks ({formed}, relation "
                f'"many-to-many"), above the cap of {max_tasks:,} tasks per call; '
                "split it into several calls"
            ]
        )
    return fanout


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
                shown = show_json(raw[p.name][index]) if isinstance(index, int) else "?"
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
    spec: EnsembleSpec, raw: dict[str, list[Any]], exc: UnequalLengthsError, max_tasks: int
) -> str:
    """The fixes of ``exc`` that lose none of the values given, the calls written in full.

    The fix "one value for every task" is not offered: it drops values the user gave, and small
    models took it whenever it was shown.
    """
    parts = [f"{n} has {k} values" for n, k in exc.lengths.items() if k > 1]
    lead = ", ".join(parts[:-1]) + f" and {parts[-1]}"
    every = {**raw, "relation": "many-to-many"}
    over = f", above the cap of {max_tasks:,}" if exc.every_combination > max_tasks else ""
    return (
        f'Under relation "one-to-one" the lists must have equal lengths (a 1-element list is '
        f"used for every task), but {lead}. {NOTHING_RUN}\n"
        f"If every combination is meant ({exc.every_combination:,} tasks{over}), send:\n"
        f"  {call_text(spec.name, every)}\n"
        f"If each task has its own values, give every list {exc.longest} values."
    )


def _known(spec: EnsembleSpec) -> str:
    names = [f"{p.name} (required)" if p.required else p.name for p in spec.params]
    return ", ".join([*names, "relation"])


def show_json(value: Any, limit: int = 40) -> str:
    """``value`` as JSON (or repr), cut to ``limit`` characters: how texts show a value."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = cut_repr(value, limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."
