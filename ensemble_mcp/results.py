"""Task results -> the tool's structured output (typed, bounded) and its compact text rendering."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter, ValidationError

from core.relations import RELATIONS
from core.result import TaskResult, TaskStatus
from ensemble_mcp.plan import Plan, show_json
from ensemble_mcp.tools import EnsembleSpec

StatusName = Literal["success", "failed", "timeout", "cancelled"]
STATUSES: tuple[str, ...] = tuple(s.value for s in TaskStatus)


@dataclass(frozen=True)
class OutputLimits:
    """Bounds on what one call returns.

    ============================  ======================================================
    ``text_chars=4000``           a string result, stdout or stderr keeps its last 4,000 chars
    ``result_bytes=65536``        a non-string result larger than this (as JSON) is omitted
    ``total_bytes=8_000_000``     results past this total are omitted (summary says so)
    ``text_lines=20``             task lines in the text content before "... N more"
    ============================  ======================================================
    """

    text_chars: int = 4000
    result_bytes: int = 65536
    total_bytes: int = 8_000_000
    text_lines: int = 20


ANY_JSON: dict[str, Any] = {
    "type": ["string", "number", "integer", "boolean", "object", "array", "null"],
    "description": "the task's return value",
}
_EXTREME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "value": {"type": "number"},
        "index": {"type": "integer", "description": "the first task with this value"},
        "params": {"type": "object", "description": "that task's arguments"},
        "tasks": {"type": "integer", "description": "how many tasks have this value"},
    },
    "required": ["value", "index", "params", "tasks"],
}
_STAT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "min": _EXTREME_SCHEMA,
        "max": _EXTREME_SCHEMA,
        "distinct": {"type": "integer", "description": "how many distinct values"},
        "count": {"type": "integer", "description": "how many tasks returned a value"},
    },
    "required": ["min", "max", "distinct", "count"],
}
_SUMMARY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "How the tasks were formed and how they ended.",
    "properties": {
        "tool": {"type": "string"},
        "total": {"type": "integer", "description": "number of tasks"},
        "relation": {"type": "string", "enum": list(RELATIONS)},
        "lengths": {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "description": "each list's length after broadcast",
        },
        "broadcast": {
            "type": "array",
            "items": {"type": "string"},
            "description": "lists of one value used for every task",
        },
        "counts": {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "description": "tasks per status",
        },
        "wall_time_s": {"type": "number"},
        "note": {"type": "string"},
        "distinct_params": {
            "type": "integer",
            "description": "how many distinct parameter sets the tasks ran (less than total "
            "when tasks repeat another task's parameters)",
        },
        "repeated": {
            "type": "array",
            "items": {"type": "string"},
            "description": "when tasks repeat: the lists that hold a value more than once",
        },
        "stats": {
            "type": "object",
            "description": 'number results (key "result") or number fields of object results '
            "(key: the field): the smallest and largest value with the first task where each "
            "occurs, and the count of distinct values",
            "additionalProperties": _STAT_SCHEMA,
        },
    },
    "required": [
        "tool",
        "total",
        "relation",
        "lengths",
        "broadcast",
        "counts",
        "wall_time_s",
        "distinct_params",
    ],
}


def output_schema(spec: EnsembleSpec) -> dict[str, Any]:
    """The tool's output schema: ``summary`` plus one ``tasks`` entry per task, in order.

    Written inline (no ``$ref``, no nullable ``anyOf``): clients validate every entry against
    it, and that is what keeps a 10,000-task result cheap to check.
    """
    returns: dict[str, Any] = TypeAdapter(spec.returns).json_schema() or dict(ANY_JSON)
    defs = returns.pop("$defs", None)
    entry = {
        "type": "object",
        "properties": {
            "index": {"type": "integer"},
            "params": {"type": "object", "description": "this task's arguments"},
            "status": {"enum": list(STATUSES)},
            "result": returns,
            "error": {"type": "string", "description": "exception, or exit code and stderr"},
            "duration_s": {"type": "number"},
            "attempts": {
                "type": "integer",
                "description": "times the task was started, when more than once (retried)",
            },
            "node": {"type": "string", "description": "the node the task ran on"},
            "cpus": {"type": "array", "items": {"type": "integer"}, "description": "its CPUs"},
            "gpus": {"type": "array", "items": {"type": "string"}, "description": "its GPUs"},
            "hosts": {
                "type": "array",
                "items": {"type": "string"},
                "description": "every node of a task that ran on several",
            },
            "note": {"type": "string", "description": "why a result was cut or left out"},
        },
        "required": ["index", "params", "status"],
    }
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"summary": _SUMMARY_SCHEMA, "tasks": {"type": "array", "items": entry}},
        "required": ["summary", "tasks"],
    }
    if defs:
        schema["$defs"] = defs
    return schema


class ResultConverter:
    """Turns TaskResults of one tool into bounded, schema-valid entries."""

    def __init__(self, spec: EnsembleSpec, limits: OutputLimits) -> None:
        self.spec = spec
        self.limits = limits
        self._returns: TypeAdapter[list[Any]] = TypeAdapter(list[spec.returns])  # type: ignore[name-defined]

    def entries(
        self,
        first_index: int,
        echoes: Sequence[dict[str, Any]],
        results: Sequence[TaskResult | None],
        *,
        bound_total: bool = True,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Entries for consecutive tasks from ``first_index``; ``None`` results are pending.

        Each entry is bounded on its own (``text_chars``, ``result_bytes``); with
        ``bound_total`` the entries together are bounded by ``total_bytes`` too.

        Returns the entries and a note when some results were left out for the total bound.
        """
        values = self._check_returns(results)
        out: list[dict[str, Any]] = []
        sizes: list[int] = []
        for k, (echo, res) in enumerate(zip(echoes, results, strict=True)):
            entry: dict[str, Any] = {"index": first_index + k, "params": echo}
            size = 0
            if res is None:
                entry["status"] = "pending"
            else:
                entry["status"] = res.status.value
                entry["duration_s"] = _round(res.duration_s)
                if res.attempts > 1:
                    entry["attempts"] = res.attempts
                if res.node:
                    entry["node"], entry["cpus"] = res.node, res.cpus
                if res.gpus:
                    entry["gpus"] = res.gpus
                if len(res.hosts) > 1:
                    entry["hosts"] = res.hosts
                value = values.get(k, _MISSING)
                if isinstance(value, _Invalid):
                    entry["status"], entry["error"] = "failed", value.message
                elif value is not _MISSING:
                    size = self._put_result(entry, value)
                else:
                    entry["error"] = self._error(res)
            out.append(entry)
            sizes.append(size)
        if not bound_total:
            return out, None
        return out, _bound(out, sizes, self.limits.total_bytes)

    def _check_returns(self, results: Sequence[TaskResult | None]) -> dict[int, Any]:
        """Validate successful return values against the return annotation, all at once."""
        ok = [k for k, r in enumerate(results) if r is not None and r.status is TaskStatus.SUCCESS]
        raw = [self._value(results[k]) for k in ok]
        try:
            checked = self._returns.dump_python(self._returns.validate_python(raw), mode="json")
            return dict(zip(ok, checked, strict=True))
        except ValidationError as exc:
            bad = {err["loc"][0]: err["msg"] for err in exc.errors(include_url=False) if err["loc"]}
        values: dict[int, Any] = {}
        single = TypeAdapter(self.spec.returns)
        for pos, k in enumerate(ok):
            if pos in bad:
                values[k] = _Invalid(
                    f"the task returned {show_json(raw[pos], 60)}, which does not match "
                    f"its return type {_type_name(self.spec.returns)}: "
                    f"{bad[pos]}"
                )
            else:
                values[k] = single.dump_python(single.validate_python(raw[pos]), mode="json")
        return values

    def _value(self, res: TaskResult | None) -> Any:
        assert res is not None
        if self.spec.is_command:
            return res.stdout or ""
        # A model class sent by value comes back as a copy of the class: compare by fields.
        return res.result.model_dump() if isinstance(res.result, BaseModel) else res.result

    def _put_result(self, entry: dict[str, Any], value: Any) -> int:
        """Put ``value`` in ``entry`` within the per-result bounds; returns its size."""
        if isinstance(value, str):
            value, cut = _tail(value, self.limits.text_chars)
            if cut:
                entry["note"] = f"result cut to its last {self.limits.text_chars:,} chars"
            size = len(value)
        elif isinstance(value, (int, float, bool)) or value is None:
            size = 8
        else:
            size = len(json.dumps(value))
            if size > self.limits.result_bytes:
                entry["note"] = (
                    f"result of {size:,} bytes (JSON) left out: above the "
                    f"{self.limits.result_bytes:,}-byte bound"
                )
                return 0
        entry["result"] = value
        return size

    def _error(self, res: TaskResult) -> str:
        if res.status is TaskStatus.CANCELLED:
            return "cancelled"
        if res.status is TaskStatus.TIMEOUT:
            return "timed out" + (f" after {res.duration_s:.3g} s" if res.duration_s else "")
        if res.returncode is not None:
            code = (
                f"killed by signal {-res.returncode}"
                if res.returncode < 0
                else f"exit code {res.returncode}"
            )
            stderr = _tail((res.stderr or "").strip(), self.limits.text_chars)[0]
            return f"{code}; stderr: {stderr}" if stderr else code
        return _tail(_exception_head(res.exception or "failed"), self.limits.text_chars)[0]


class _Invalid:
    def __init__(self, message: str) -> None:
        self.message = message


_MISSING = object()
_OMITTED_NOTE = "left out: the call's output bound was reached; page with ensemble_results"


def bound_total(entries: list[dict[str, Any]], total_bytes: int) -> str | None:
    """Leave results out of ``entries`` (in place) past ``total_bytes`` in all.

    The entries were each bounded already (``ResultConverter.entries``); this is the bound on
    what one answer holds. Returns the note that says how many were left out, if any.
    """
    return _bound(
        entries, [_size(e["result"]) if "result" in e else 0 for e in entries], total_bytes
    )


def _bound(entries: list[dict[str, Any]], sizes: list[int], total_bytes: int) -> str | None:
    budget = total_bytes
    omitted = 0
    for entry, size in zip(entries, sizes, strict=True):
        if "result" not in entry:
            continue
        if size > budget:
            del entry["result"]
            entry["note"] = _OMITTED_NOTE
            omitted += 1
        else:
            budget -= size
    if not omitted:
        return None
    return (
        f"{omitted} results left out: the output passed {total_bytes:,} "
        "bytes; page them with ensemble_results"
    )


def _size(value: Any) -> int:
    """The size a result counts for against the total bound."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return 8
    return len(json.dumps(value))


def _exception_head(text: str) -> str:
    """The exception's type and message, without the traceback that follows it."""
    lines = text.strip().splitlines()
    for marker in ("Traceback (most recent call last):", "###"):
        for i, line in enumerate(lines):
            if i and line.startswith(marker):
                return "\n".join(lines[:i]).strip()
    if lines and lines[0].startswith(("Traceback", "###")):
        return lines[-1].strip()
    return "\n".join(lines).strip()


def _tail(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    cut = len(text) - limit
    return f"[... {cut:,} chars cut] " + text[-limit:], True


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


def summarize(
    tool: str,
    plan: Plan,
    entries: Iterable[dict[str, Any]],
    wall_time_s: float,
    note: str | None = None,
) -> dict[str, Any]:
    """The summary block: how the tasks were formed, what was odd about it, counts, statistics.

    ``distinct_params`` (and ``repeated``, when tasks repeat) come from ``plan``; ``stats`` from
    the successful results among ``entries`` when they are numbers or have number fields.
    """
    entries = list(entries)
    counts = dict.fromkeys(STATUSES, 0)
    for entry in entries:
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    distinct, repeated = distinct_parameter_sets(plan)
    summary: dict[str, Any] = {
        "tool": tool,
        "total": plan.total,
        "relation": plan.relation,
        "lengths": dict(plan.lengths),
        "broadcast": list(plan.broadcast),
        "counts": counts,
        "wall_time_s": round(wall_time_s, 6),
        "distinct_params": distinct,
    }
    if repeated:
        summary["repeated"] = repeated
    stats = result_stats(entries)
    if stats:
        summary["stats"] = stats
    if note:
        summary["note"] = note
    return summary


def distinct_parameter_sets(plan: Plan) -> tuple[int, list[str]]:
    """How many distinct parameter sets ``plan`` runs, and which lists repeat a value.

    The lists are named only when some tasks repeat another task's parameters.
    """
    columns = {name: [_key(v) for v in values] for name, values in plan.json_values.items()}
    repeated = [name for name, col in columns.items() if len(set(col)) < len(col)]
    if not repeated:
        return plan.total, []
    if plan.relation == "many-to-many":
        distinct = math.prod(len(set(col)) for col in columns.values())
    else:
        cols = list(columns.values())
        distinct = len(
            {tuple(c[j] for c, j in zip(cols, idx, strict=True)) for idx in plan.fanout.indices()}
        )
    return distinct, repeated if distinct < plan.total else []


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


_MAX_STAT_FIELDS = 10
_NUMBER_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def result_stats(entries: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Min, max (first task and tie count of each) and distinct count of the number results.

    Key ``"result"`` when every successful result is a number (a command's output that is one
    number counts); else one key per number field that every successful result (an object)
    has, at most ten. Empty for other results.
    """
    done = [e for e in entries if e["status"] == "success" and "result" in e]
    if not done:
        return {}
    numbers = [_number(e["result"], text=True) for e in done]
    if all(n is not None for n in numbers):
        return {"result": _stat(done, numbers)}
    if not all(isinstance(e["result"], dict) for e in done):
        return {}
    stats: dict[str, dict[str, Any]] = {}
    for field_name in done[0]["result"]:
        values = [_number(e["result"].get(field_name)) for e in done]
        if all(v is not None for v in values):
            stats[field_name] = _stat(done, values)
            if len(stats) == _MAX_STAT_FIELDS:
                break
    return stats


def _number(value: Any, *, text: bool = False) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    if text and isinstance(value, str) and _NUMBER_TEXT.fullmatch(value.strip()):
        return float(value)
    return None


def _stat(done: Sequence[dict[str, Any]], values: Sequence[float | int | None]) -> dict[str, Any]:
    def extreme(target: float | int | None) -> dict[str, Any]:
        first = values.index(target)
        return {
            "value": target,
            "index": done[first]["index"],
            "params": done[first]["params"],
            "tasks": values.count(target),
        }

    present = [v for v in values if v is not None]
    return {
        "min": extreme(min(present)),
        "max": extreme(max(present)),
        "distinct": len(set(present)),
        "count": len(present),
    }


def render_text(
    summary: dict[str, Any],
    entries: Sequence[dict[str, Any]],
    *,
    max_lines: int,
    line_chars: int = 200,
) -> str:
    """The compact text content: the summary, then one line per task.

    Tasks past ``max_lines`` are only counted. Task lines carry no run time (it is in the
    structured output): small models copied run times into answers as results.
    """
    first = entries[0]["params"] if entries else None
    lines = [summary_line(summary, first)]
    lines.extend(_clip(_entry_line(entry), line_chars) for entry in entries[:max_lines])
    rest = entries[max_lines:]
    if rest:
        failed = sum(1 for e in rest if e["status"] not in ("success", "pending"))
        extra = f" ({failed} not successful)" if failed else ""
        lines.append(f"... {len(rest)} more in structuredContent{extra}")
    return "\n".join(lines)


def summary_line(summary: dict[str, Any], first_params: dict[str, Any] | None = None) -> str:
    """One line: tool, tasks and how they ended, how they were formed, min/max, wall time.

    ``first_params`` (the first task's arguments) lets the line show the value a one-value list
    gave every task.
    """
    counts = ", ".join(f"{v} {k}" for k, v in summary["counts"].items() if v)
    line = (
        f"{summary['tool']}: {_plural(summary['total'], 'task')}, {counts or 'none ran'} "
        f"({_formed(summary, first_params or {})})"
    )
    stats = _stats_text(summary)
    if stats:
        line += f"; {stats}"
    line += f"; {summary['wall_time_s']:.3g} s"
    if summary.get("note"):
        line += f"\nnote: {summary['note']}"
    return line


def _varying(summary: dict[str, Any]) -> list[str]:
    """The parameters whose value changes from task to task."""
    one_value = set(summary["broadcast"])
    return [n for n, k in summary["lengths"].items() if k > 1 and n not in one_value]


def _formed(summary: dict[str, Any], first_params: dict[str, Any]) -> str:
    lengths: dict[str, int] = summary["lengths"]
    if summary["total"] == 1:
        parts = ["one task"]
    elif summary["relation"] == "many-to-many":
        long = [f"{n} {k}" for n, k in lengths.items() if k > 1]
        if len(long) > 1:
            parts = [f"every combination of {' x '.join(long)} values, relation many-to-many"]
        else:
            parts = [f"{long[0]} values, relation many-to-many"] if long else []
    else:
        varying = _varying(summary)
        if len(varying) > 1:
            parts = [f"{', '.join(varying)} paired one-to-one, {summary['total']} values each"]
        else:
            parts = [f"{n} {summary['total']} values" for n in varying]
    if summary["total"] > 1:
        for name, k in lengths.items():
            if name in summary["broadcast"] or (summary["relation"] == "many-to-many" and k == 1):
                shown = show_json(first_params[name], 30) if name in first_params else "one value"
                parts.append(f"{name}={shown} for every task")
    if summary.get("repeated"):
        repeated = summary["repeated"]
        parts.append(
            f"only {_plural(summary['distinct_params'], 'distinct parameter set')}: "
            f"{', '.join(repeated)} repeat{'s' if len(repeated) == 1 else ''} values"
        )
    return "; ".join(parts)


_MAX_STAT_FIELDS_SHOWN = 3


def _stats_text(summary: dict[str, Any]) -> str:
    stats: dict[str, dict[str, Any]] = summary.get("stats") or {}
    varying = _varying(summary)
    shown = []
    for name, stat in list(stats.items())[:_MAX_STAT_FIELDS_SHOWN]:
        if stat["count"] < 2:
            continue
        label = "" if name == "result" else f"{name}: "
        if stat["distinct"] == 1:
            shown.append(
                f"{label}all {stat['count']} results are {show_json(stat['min']['value'])}"
            )
            continue
        noun = "results" if name == "result" else "values"
        shown.append(
            f"{label}min {_extreme_text(stat['min'], varying)}, "
            f"max {_extreme_text(stat['max'], varying)}, "
            f"{stat['distinct']} distinct {noun} of {stat['count']}"
        )
    more = len(stats) - _MAX_STAT_FIELDS_SHOWN
    if shown and more > 0:
        shown.append(f"{more} more number fields in structuredContent")
    return "; ".join(shown)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _extreme_text(extreme: dict[str, Any], varying: list[str]) -> str:
    params = extreme["params"]
    shown = [f"{n}={show_json(params[n], 30)}" for n in varying if n in params]
    where = f"({', '.join(shown)})" if len(shown) > 1 else "".join(shown)
    text = f"{show_json(extreme['value'])} at {where or '#' + str(extreme['index'])}"
    others = extreme["tasks"] - 1
    if others:
        text += f" (and {others} more task{'s' if others > 1 else ''})"
    return text


def _entry_line(entry: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={show_json(v, 30)}" for k, v in entry["params"].items())
    status = entry["status"]
    if status == "success":
        outcome = show_json(entry.get("result"), 80) if "result" in entry else "(see note)"
    elif status == "pending":
        outcome = "pending"
    else:
        why = entry.get("error") or entry.get("note", "")
        outcome = f"{status}: {why}".replace("\n", " | ")
    attempts = f" ({entry['attempts']} attempts)" if entry.get("attempts") else ""
    return f"#{entry['index']} {params} -> {outcome}{attempts}"


def _clip(line: str, limit: int) -> str:
    return line if len(line) <= limit else line[: limit - 3] + "..."
