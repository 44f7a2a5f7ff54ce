"""The rule of each task setting, and of every other ensemble value: one check each.

``CHECKS`` holds one check per setting. ``core.task`` builds the fields of ``Task`` and
``TaskOptions`` from them, ensemble files read their keys with them, and ``ensemble_tool``
options go through ``TaskOptions``: each rule, and its message, exists once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = (
    "CHECKS",
    "MAX_VALUE_CHARS",
    "brief",
    "check_param",
    "check_run_dir",
    "contain_run_dir",
    "cut_repr",
    "over_value_cap",
)

MAX_VALUE_CHARS = 100_000
"""The default cap on the text of one value: a parameter, an ``env`` value, a template.

No honest value is this long, and a command argument cannot be: Linux refuses one argv or
environment string over 128 KiB (``MAX_ARG_STRLEN``).
"""


def over_value_cap(value: Any, cap: int = MAX_VALUE_CHARS) -> str | None:
    """Why the string ``value`` is too long (its size and the cap), or None when it is not."""
    if isinstance(value, str) and len(value) > cap:
        return f"has {len(value):,} characters, above the cap of {cap:,} per value"
    return None


def brief(value: Any) -> str:
    """``value``'s type and repr, cut to about 60 characters, for error messages."""
    return f"{type(value).__name__} {cut_repr(value)}"


def cut_repr(value: Any, limit: int = 60) -> str:
    """``value``'s repr, cut to ``limit`` characters: how messages show a value of any size."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _whole(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"must be a whole number >= {minimum}, got {cut_repr(value)}")
        return value

    return check


def _check_timeout(value: Any) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(
            f"must be a number of seconds > 0 (or null for none), got {cut_repr(value)}"
        )
    return float(value)


def _check_shell(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {cut_repr(value)}")
    return value


def _check_retries(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            "must be a whole number >= 0 (or null for the launcher's setting), got "
            + cut_repr(value)
        )
    return value


def check_run_dir(value: Any) -> str | None:
    """A run_dir: a non-empty path that does not climb out with ``..``; raises ValueError."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\0" in value:
        raise ValueError(f"must be a non-empty path without NUL bytes, got {cut_repr(value)}")
    if ".." in value.split("/"):
        raise ValueError(
            f"{cut_repr(value)} contains '..'; a run_dir may not climb out of its "
            "parent: give an absolute path instead"
        )
    return value


def contain_run_dir(run_dir: str | None, root: str | os.PathLike[str]) -> str:
    """The absolute, resolved directory a task runs in when every task must stay under ``root``.

    A relative ``run_dir`` is taken under ``root``; None is ``root`` itself. The path is resolved
    component by component, symlinks included (as far as it exists), and must be ``root`` or
    lie below it: never a string-prefix test, so ``/runs-evil`` is not inside ``/runs``.

    Raises:
        ValueError: the resolved path lies outside ``root``; the message shows both.
    """
    base = Path(root).resolve()
    if run_dir is None:
        return str(base)
    candidate = (base / run_dir).resolve()
    if not candidate.is_relative_to(base):
        shown = run_dir if str(candidate) == run_dir else f"{run_dir} (resolved: {candidate})"
        raise ValueError(
            f"run_dir {shown} is outside the run root {base}; give a path inside it "
            "(a relative run_dir is taken under the root)"
        )
    return str(candidate)


def _check_env(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError(
            f'must be an object of strings, e.g. {{"OMP_NUM_THREADS": "4"}}, got {brief(value)}'
        )
    for name, text in value.items():
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise ValueError(
                f"variable name {cut_repr(name)} must be a non-empty string without '='"
            )
        if not isinstance(text, str) or "\0" in text:
            hint = f' (write "{text}")' if isinstance(text, (int, float)) else ""
            raise ValueError(
                f"value of {cut_repr(name)} must be a string{hint}, got {cut_repr(text)}"
            )
        too_long = over_value_cap(text)
        if too_long:
            raise ValueError(f"value of {cut_repr(name)} {too_long}")
        if len(name) > MAX_VALUE_CHARS:
            raise ValueError(f"variable name {cut_repr(name)} {over_value_cap(name)}")
    return dict(value)


def _affinity(kind: str, convert: Callable[[str], Any]) -> Callable[[Any], list[Any] | None]:
    def check(value: Any) -> list[Any] | None:
        if value is None:
            return None
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items:
            raise ValueError(
                f"must be a comma-separated string or a list of {kind} ids, got {cut_repr(value)}"
            )
        try:
            return [convert(item) for item in items]
        except ValueError:
            raise ValueError(
                f"{cut_repr(value)} is not a list of {kind} ids; to give each task its "
                "own affinity, use a list of lists, e.g. [[0, 1], [2, 3]]"
            ) from None

    return check


def _cpu_id(item: Any) -> int:
    if isinstance(item, str) and item.strip().isascii() and item.strip().isdigit():
        return int(item)
    if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
        return item
    raise ValueError(item)


def _gpu_id(item: Any) -> str:
    text = item.strip() if isinstance(item, str) else item
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return str(text)
    if isinstance(text, str) and text and "," not in text and text.isprintable():
        return text
    raise ValueError(item)


def check_param(value: Any) -> str | int | float:
    """A parameter value: a string without NUL, a finite number, or a bool; raises ValueError."""
    if isinstance(value, str):
        if "\0" in value:
            raise ValueError(f"{cut_repr(value)} contains a NUL byte")
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    if isinstance(value, (int, float)):  # bool included: rendered as true / false
        return value
    raise ValueError(f"must be a string, a number or true/false, got {brief(value)}")


CHECKS: dict[str, Callable[[Any], Any]] = {
    "nnodes": _whole(1),
    "ppn": _whole(1),
    "ngpus_per_process": _whole(0),
    "cpu_affinity": _affinity("CPU", _cpu_id),
    "gpu_affinity": _affinity("GPU", _gpu_id),
    "env": _check_env,
    "run_dir": check_run_dir,
    "timeout": _check_timeout,
    "shell": _check_shell,
    "max_retries": _check_retries,
    "failure_retries": _check_retries,
}
"""The check of each Task setting; each returns the value (converted) or raises ValueError."""
