"""The corrected call an input error shows: written in full, as a model sends it, checked first.

Small models that call ensemble tools get a few things wrong in the same ways: a parameter name
slightly off (``pressures``, ``T``), a relation in other words (``"grid"``, ``"cartesian"``,
``"one_to_one"``), a number written with the unit the tool documents (``"300 K"``). `repair`
mends exactly those, and `corrected_call` shows the mended call only when it passes the same
check as any call (so a suggestion never fails in turn). `call_text` writes a call the way a
model sends one, every value in full: a model copies what it is shown, and a list shortened for
display comes back shortened.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from core.relations import RELATIONS, Relation
from ensemble_mcp.errors import EnsembleInputError
from ensemble_mcp.tools import EnsembleSpec, Param

__all__ = ("call_text", "corrected_call", "repair")

CALL_CHARS = 4000
"""A call longer than this, as JSON, is shown with its long lists shortened (and says so)."""

_MANY_WORDS = ("many", "grid", "cartesian", "product", "combination", "cross", "outer", "all")
_ONE_WORDS = ("one", "zip", "pair", "element", "1:1")
_NUMBER_WITH_UNIT = re.compile(
    r"\s*(?P<number>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*(?P<unit>[A-Za-z°]+)\s*"
)
_SHORT = 40
"""Longer names and values are not mended (nor scanned): a slip is short."""


def call_text(tool: str, arguments: Mapping[str, Any]) -> str:
    """``{"name": tool, "arguments": {...}}`` in JSON, every list in full up to `CALL_CHARS`."""
    text = json.dumps({"name": tool, "arguments": dict(arguments)})
    if len(text) <= CALL_CHARS:
        return text
    shown = {k: _shortened(v) for k, v in arguments.items()}
    return json.dumps({"name": tool, "arguments": shown}) + " (long lists shortened here)"


def _shortened(value: Any) -> Any:
    if not isinstance(value, list) or len(value) <= 8:
        return value
    return [*value[:3], f"... {len(value) - 3} more values"]


def corrected_call(
    spec: EnsembleSpec, arguments: Mapping[str, Any], check: Callable[[dict[str, Any]], object]
) -> str | None:
    """The line that shows the mended call, when `repair` mends it and ``check`` accepts it."""
    repaired = repair(spec, arguments)
    if repaired is None:
        return None
    try:
        check(repaired)
    except EnsembleInputError:
        return None
    return f"Corrected call, ready to send:\n  {call_text(spec.name, repaired)}"


def repair(spec: EnsembleSpec, arguments: Mapping[str, Any]) -> dict[str, Any] | None:
    """``arguments`` with the known slips mended; None when there is nothing to mend.

    - an unknown name that starts, or nearly spells, exactly one parameter not given;
    - a relation in other words: ``"one_to_one"``, ``"grid"``, ``"cartesian product"``,
      ``"all pairs"`` (many-to-many) or ``"zip"``, ``"pairwise"`` (one-to-one);
    - a number written with a unit that the parameter's description names (``"300 K"`` for a
      temperature "in K"), in a list of numbers.
    """
    args = dict(arguments)
    changed = False
    missing = [p.name for p in spec.params if p.name not in args]
    unknown = [k for k in args if k != "relation" and k not in spec.param_names]
    for name in (k for k in unknown if len(k) <= _SHORT):
        target = _close_name(name, missing)
        if target is not None:
            args[target] = args.pop(name)
            missing.remove(target)
            changed = True
    if "relation" in args:
        relation = _relation(args["relation"])
        if relation is not None and relation != args["relation"]:
            args["relation"] = relation
            changed = True
    for p in spec.params:
        if p.name in args:
            plain = _without_units(p, args[p.name])
            if plain is not None:
                args[p.name] = plain
                changed = True
    return args if changed else None


def _close_name(name: str, candidates: list[str]) -> str | None:
    lowered = name.lower()
    starts = [c for c in candidates if c.lower().startswith(lowered) or lowered.startswith(c)]
    if len(starts) == 1:
        return starts[0]
    close = difflib.get_close_matches(name, candidates, n=2, cutoff=0.75)
    return close[0] if len(close) == 1 else None


def _relation(value: Any) -> Relation | None:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        return None
    words = re.sub(r"[\s_]+", "-", value.strip().lower())
    for relation in RELATIONS:
        if words == relation:
            return relation
    if any(w in words for w in _MANY_WORDS):
        return "many-to-many"
    if any(w in words for w in _ONE_WORDS):
        return "one-to-one"
    return None


def _without_units(p: Param, value: Any) -> list[Any] | None:
    """The list with "300 K" read as 300, when the description names the unit; else None."""
    if p.type_label not in ("number", "integer") or not p.description:
        return None
    values = value if isinstance(value, list) else [value]
    out: list[Any] = []
    changed = False
    for item in values:
        short = isinstance(item, str) and len(item) <= _SHORT
        match = _NUMBER_WITH_UNIT.fullmatch(item) if short else None
        if match is None or not re.search(rf"\b{re.escape(match['unit'])}\b", p.description):
            out.append(item)
            continue
        number = float(match["number"])
        out.append(int(number) if number.is_integer() else number)
        changed = True
    return out if changed else None
