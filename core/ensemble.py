"""Ensemble definitions: ``{"ensembles": {name: spec}}`` expanded into :class:`Task` lists.

::

    JSON file | dict ──_read_source──> {name: spec} ──_Ensemble──> sweep dimensions + fixed values
                                                                     │ relation: zip | product
                                                                     v
                              {name: [Task, ...]} <──_Ensemble.tasks── command / run_dir templates

A spec maps keys to values. The known keys are the Task settings (``nnodes``, ``ppn``,
``ngpus_per_process``, ``cpu_affinity``, ``gpu_affinity``, ``env``, ``run_dir``, ``timeout``,
``shell``) plus ``cmd_template`` and ``relation``; every other key is a parameter. A list or a
generator string (see :mod:`core.generators`) makes a key a sweep dimension; ``env`` never is.
``one-to-one`` zips the dimensions, using a 1-element list for every task (broadcast);
``many-to-many`` takes their product, the last key varying fastest. ``{key}`` placeholders in
``cmd_template`` are replaced by shell-quoted values, so each value is one argv element.
Templates are :mod:`core.template`, the checks of values :mod:`core.spec_values`; the reference
with examples is ``docs/ensembles.md``.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import itertools
import json
import math
import os
import re
import shlex
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeAlias

from pydantic import ValidationError

from core.errors import ConfigError
from core.generators import parse_generator
from core.spec_values import CHECKS, brief, check_param, check_run_dir
from core.task import Task
from core.template import Field, Piece, fill, render_value, split_template

__all__ = (
    "MAX_TASKS",
    "RELATIONS",
    "TASKS_GROUP",
    "Source",
    "Task",
    "expand_tasks",
    "load_ensembles",
)

Source: TypeAlias = str | os.PathLike[str] | Mapping[str, Any]
RELATIONS = ("one-to-one", "many-to-many")
MAX_TASKS = 1_000_000
"""Default cap on the tasks one source may expand to (checked before any Task is built)."""
TASKS_GROUP = "tasks"
"""The group name :func:`load_ensembles` gives to a source that is a dict of Task objects."""

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
_AFFINITY = ("cpu_affinity", "gpu_affinity")
_NOT_SWEPT = ("cmd_template", "relation", "env")
_NOT_ALLOWED = {
    "task_id": "task ids are generated as '<ensemble>-<index>'",
    "executable": "give the command line as cmd_template",
    "args": "an ensemble runs commands; put arguments in cmd_template",
    "kwargs": "an ensemble runs commands; put arguments in cmd_template",
}
_new_task = Task.__new__
_set = object.__setattr__
# _Copier fills exactly the state pydantic keeps for a model without private attributes or extras.
_COPYABLE = not Task.__private_attributes__ and Task.model_config.get("extra") != "allow"


def load_ensembles(source: Source, *, max_tasks: int = MAX_TASKS) -> dict[str, list[Task]]:
    """Expand every ensemble of ``source`` into its tasks, keyed by ensemble name in file order.

    ``source`` is a JSON file path, a dict ``{"ensembles": {name: spec}}``, or a dict of
    :class:`Task` objects keyed by their ids (returned as is, under :data:`TASKS_GROUP`).

    Example:
        >>> spec = {"cmd_template": "./exe -a {a}", "a": "linspace(0, 1, 3)"}
        >>> [t.executable for t in load_ensembles({"ensembles": {"s": spec}})["s"]]
        ['./exe -a 0.0', './exe -a 0.5', './exe -a 1.0']

    Raises:
        ConfigError: the source cannot be read, or a spec is invalid; the message names the
            ensemble, the key and the problem. Nothing is half-expanded.
    """
    top = _read_source(source)
    if all(isinstance(value, Task) for value in top.values()):
        return {TASKS_GROUP: _checked_tasks(top)}
    specs = top["ensembles"]
    result: dict[str, list[Task]] = {}
    total = 0
    for name, spec in specs.items():
        ensemble = _Ensemble(name, spec)
        total += ensemble.count
        if total > max_tasks:
            shown = ", ".join(f"{key}: {len(values)}" for key, values in ensemble.dims)
            alone = ensemble.count > max_tasks
            raise ConfigError(
                f"ensemble {name!r}, key 'relation': {ensemble.relation} gives "
                f"{ensemble.count:,} tasks ({shown})"
                f"{'' if alone else f', {total:,} with the ensembles before it'}"
                f", over the limit of {max_tasks:,}; nothing was built"
            )
        result[name] = ensemble.tasks()
    return result


def expand_tasks(source: Source, *, max_tasks: int = MAX_TASKS) -> list[Task]:
    """All tasks of all ensembles of ``source``, in file order (see :func:`load_ensembles`)."""
    groups = load_ensembles(source, max_tasks=max_tasks)
    return [task for tasks in groups.values() for task in tasks]


def _read_source(source: Source) -> Mapping[str, Any]:
    if isinstance(source, (str, os.PathLike)):
        top = _read_json(Path(source))
    elif isinstance(source, Mapping):
        top = source
    else:
        raise ConfigError(
            f"ensemble source must be a JSON file path or a dict, got {type(source).__name__}"
        )
    if not isinstance(top, Mapping) or not top:
        raise ConfigError(
            'ensemble source must be {"ensembles": {name: spec}} or a dict of '
            f"Task objects, got {brief(top)}"
        )
    if any(isinstance(value, Task) for value in top.values()):
        if not all(isinstance(value, Task) for value in top.values()):
            raise ConfigError("a dict of Task objects may hold only Task objects")
        return top
    if "ensembles" not in top:
        raise ConfigError(
            'ensemble source has no "ensembles" key: expected '
            '{"ensembles": {name: spec}} or a dict of Task objects; '
            f"got keys {', '.join(map(repr, top))}"
        )
    extra = [key for key in top if key != "ensembles"]
    if extra:
        raise ConfigError(
            f'unknown top-level key(s) {", ".join(map(repr, extra))}; only "ensembles" is allowed'
        )
    specs = top["ensembles"]
    if not isinstance(specs, Mapping) or not specs:
        raise ConfigError(
            f'"ensembles" must be a non-empty object {{name: spec}}, got {brief(specs)}'
        )
    for name in specs:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(
                f"ensemble {name!r}: invalid name; use 1-128 letters, digits, "
                "'_', '.' or '-', starting with a letter, digit or '_'"
            )
    return top


def _read_json(path: Path) -> Any:
    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise ConfigError(f"ensemble file {str(path)!r}: duplicate key {key!r}")
            result[key] = value
        return result

    def no_constant(name: str) -> Any:
        raise ConfigError(f"ensemble file {str(path)!r}: {name} is not a valid JSON number")

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read ensemble file {str(path)!r}: {problem}") from None
    try:
        return json.loads(text, object_pairs_hook=unique_keys, parse_constant=no_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"ensemble file {str(path)!r} is not valid JSON: {exc.msg} "
            f"(line {exc.lineno}, column {exc.colno})"
        ) from None


def _checked_tasks(tasks: Mapping[str, Any]) -> list[Task]:
    seen: set[str] = set()
    for key, task in tasks.items():
        if key != task.task_id:
            raise ConfigError(
                f"task {task.task_id!r} is stored under key {key!r}; key each task by its task_id"
            )
        if task.task_id in seen:  # a Mapping other than dict may repeat keys
            raise ConfigError(f"task id {task.task_id!r} is used twice")
        seen.add(task.task_id)
    return list(tasks.values())


class _Ensemble:
    """One validated spec: fixed values, sweep dimensions and compiled templates."""

    def __init__(self, name: str, spec: Any) -> None:
        self.name = name
        self.where = f"ensemble {name!r}"
        if not isinstance(spec, Mapping):
            raise ConfigError(
                f"{self.where}: the spec must be an object of keys, got {brief(spec)}"
            )
        self.relation = self._relation(spec.get("relation", "one-to-one"))
        self.fixed: dict[str, Any] = {}
        self.dims: list[tuple[str, list[Any]]] = []
        for key, raw in spec.items():
            if not isinstance(key, str):
                raise ConfigError(f"{self.where}: key {key!r} is not a string")
            if key not in ("cmd_template", "relation"):
                self._add(key, raw)
        if "cmd_template" not in spec:
            raise self.error(
                "cmd_template",
                'missing; give the command line, e.g. "./exe -a {arg1}" with "arg1": [1, 2, 3]',
            )
        template = spec["cmd_template"]
        if not isinstance(template, str) or not template.strip():
            raise self.error(
                "cmd_template", f"must be a non-empty command line string, got {brief(template)}"
            )
        fields = self._split("cmd_template", template, quoted=True)
        run_dir = self.fixed.get("run_dir")
        dir_fields = self._split("run_dir", run_dir, quoted=False) if run_dir else []
        self._check_unused(spec, {f[0] for f in fields + dir_fields if isinstance(f, tuple)})
        self.count = self._count()
        self.command = self._compile(fields, quote=True)
        self.run_dir = self._compile(dir_fields, quote=False) if run_dir else None
        self.dir_varies = any(not isinstance(p, str) for p in self.run_dir or ())
        if self.run_dir is not None and not self.dir_varies:
            self._check_rendered_dir(fill(self.run_dir, ()))

    def error(self, key: str, problem: str) -> ConfigError:
        """A ConfigError naming this ensemble and ``key``."""
        return ConfigError(f"{self.where}, key {key!r}: {problem}")

    def _relation(self, relation: Any) -> str:
        if relation not in RELATIONS:
            raise self.error(
                "relation",
                f"unknown relation {relation!r}; use {' or '.join(map(repr, RELATIONS))}",
            )
        return str(relation)

    def _add(self, key: str, raw: Any) -> None:
        if key in _NOT_ALLOWED:
            raise self.error(key, f"not allowed in an ensemble spec: {_NOT_ALLOWED[key]}")
        check: Callable[[Any], Any] = CHECKS.get(key, check_param)
        if key == "env":
            self.fixed[key] = self._checked(key, check, raw)
            return
        values = self._sweep(key, raw)
        if values is None:
            self.fixed[key] = self._checked(key, check, raw)
            return
        if not values:
            raise self.error(key, "the list is empty; give at least one value")
        if isinstance(raw, str) and check is check_param:  # generated: finite numbers
            self.dims.append((key, values))
            return
        try:
            checked = [check(value) for value in values]
        except ValueError:  # find the culprit again, to name its index
            checked = [self._checked(key, check, value, i) for i, value in enumerate(values)]
        self.dims.append((key, checked))

    def _sweep(self, key: str, raw: Any) -> list[Any] | None:
        """The values of a sweep dimension, or None when ``raw`` is one value."""
        try:
            if key in _AFFINITY:
                if isinstance(raw, str):
                    ids = parse_generator(raw)
                    return None if ids is None else [[i] for i in ids]
                is_sweep = isinstance(raw, (list, tuple)) and any(
                    isinstance(item, (list, tuple)) for item in raw
                )
                return list(raw) if is_sweep else None
            if isinstance(raw, (list, tuple)):
                return list(raw)
            if isinstance(raw, str) and key != "run_dir":
                return parse_generator(raw)
        except ConfigError as exc:
            raise self.error(key, str(exc)) from None
        return None

    def _checked(
        self, key: str, check: Callable[[Any], Any], value: Any, index: int | None = None
    ) -> Any:
        try:
            return check(value)
        except ValueError as exc:
            at = "" if index is None else f"element {index}: "
            raise self.error(key, f"{at}{exc}") from None

    def _check_unused(self, spec: Mapping[str, Any], used: set[str]) -> None:
        for key in spec:
            if key in CHECKS or key in ("cmd_template", "relation") or key in used:
                continue
            close = difflib.get_close_matches(key, [*CHECKS, "cmd_template", "relation"], 1, 0.75)
            if close:
                raise self.error(
                    key,
                    f"unknown key, not a placeholder in cmd_template; did you mean {close[0]!r}?",
                )

    def _count(self) -> int:
        lengths = [(key, len(values)) for key, values in self.dims]
        if self.relation == "many-to-many":
            return math.prod(n for _, n in lengths)
        long = [(key, n) for key, n in lengths if n > 1]
        for key, n in long:
            if n != long[0][1]:
                shown = ", ".join(f"{k}: {m}" for k, m in lengths)
                raise self.error(
                    key,
                    f"lengths differ ({shown}); under one-to-one every list "
                    "longer than 1 must have the same length (a 1-element list is "
                    'used for every task); make them equal, or set "relation": '
                    '"many-to-many" for every combination '
                    f"({math.prod(m for _, m in lengths):,} tasks)",
                )
        return long[0][1] if long else 1

    def _split(self, key: str, template: str, *, quoted: bool) -> list[Field]:
        keys = [*self.fixed, *(k for k, _ in self.dims)]
        try:
            return split_template(template, keys=keys, reserved=_NOT_SWEPT, quoted=quoted)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def _compile(self, fields: list[Field], *, quote: bool) -> list[Piece]:
        positions = {key: j for j, (key, _) in enumerate(self.dims)}
        pieces: list[Piece] = []
        for field in fields:
            if isinstance(field, str):
                text: Piece = field
            else:
                key, spec = field
                if key in positions:
                    j = positions[key]
                    text = (j, self._rendered(key, spec, quote, self.dims[j][1]))
                else:
                    text = self._renderer(key, spec, quote)(self.fixed[key])
            if isinstance(text, str) and pieces and isinstance(pieces[-1], str):
                pieces[-1] += text
            else:
                pieces.append(text)
        return pieces

    def _rendered(self, key: str, spec: str, quote: bool, values: list[Any]) -> list[str]:
        kinds = set(map(type, values))
        if not spec and kinds <= {int, float}:  # numbers need no shell quoting
            return [repr(value) for value in values]
        render = self._renderer(key, spec, quote)
        return [render(value) for value in values]

    def _renderer(self, key: str, spec: str, quote: bool) -> Callable[[Any], str]:
        def render(value: Any) -> str:
            try:
                text = format(value, spec) if spec else render_value(value)
            except (ValueError, TypeError) as exc:
                raise self.error(
                    key, f"format {{{key}:{spec}}} does not apply to {value!r}: {exc}"
                ) from None
            return shlex.quote(text) if quote else text

        return render

    def _check_rendered_dir(self, path: str) -> None:
        try:
            check_run_dir(path)
        except ValueError as exc:
            raise self.error("run_dir", str(exc)) from None

    def _indices(self) -> Iterable[tuple[int, ...]]:
        if self.relation == "many-to-many":
            return itertools.product(*(range(len(values)) for _, values in self.dims))
        if not self.dims:
            return [()]
        return zip(
            *(
                range(self.count) if len(values) > 1 else itertools.repeat(0, self.count)
                for _, values in self.dims
            ),
            strict=True,
        )

    def tasks(self) -> list[Task]:
        """Build the tasks; ids are ``<name>-<index>``, zero-padded to the widest index.

        Each distinct combination of Task settings is validated by pydantic once; the other
        tasks with that combination are copies differing in id, command and run_dir.
        """
        base = {key: value for key, value in self.fixed.items() if key in CHECKS}
        swept = [(j, key) for j, (key, _) in enumerate(self.dims) if key in CHECKS]
        positions = [j for j, _ in swept]
        values = [values for _, values in self.dims]
        width = len(str(self.count - 1))
        validated: dict[tuple[int, ...], _Copier] = {}
        tasks = []
        with _gc_paused():
            for number, idx in enumerate(self._indices()):
                changes = {
                    "task_id": f"{self.name}-{number:0{width}d}",
                    "executable": fill(self.command, idx),
                }
                if self.run_dir is not None:
                    changes["run_dir"] = fill(self.run_dir, idx)
                    if self.dir_varies:
                        self._check_rendered_dir(changes["run_dir"])
                combination = tuple([idx[j] for j in positions]) if positions else ()
                copier = validated.get(combination)
                if copier is None:
                    fields = {**base, **{key: values[j][idx[j]] for j, key in swept}, **changes}
                    task = self._task(fields)
                    if _COPYABLE:
                        validated[combination] = _Copier(task, changes)
                    tasks.append(task)
                else:
                    tasks.append(copier.copy(changes))
        return tasks

    def _task(self, fields: dict[str, Any]) -> Task:
        try:
            return Task(**fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = str(first["loc"][0]) if first["loc"] else "?"
            raise self.error(key, f"{first['msg']} (got {first['input']!r})") from None


class _Copier:
    """Copies a validated Task with some string fields replaced, skipping re-validation.

    This is ``model_copy(update=changes)`` at a third of the cost (it matters at 50,000 tasks),
    with lists and dicts copied so that no two tasks share mutable state. The replaced fields
    (id, command, run_dir) are strings built and checked here; every other value was validated
    together in ``like``.
    """

    def __init__(self, like: Task, changes: Iterable[str]) -> None:
        self.state = like.__dict__
        self.mutable = [key for key, value in self.state.items() if isinstance(value, (list, dict))]
        self.fields_set = like.__pydantic_fields_set__ | set(changes)

    def copy(self, changes: dict[str, Any]) -> Task:
        """A new Task equal to the model with ``changes`` applied."""
        state = self.state.copy()
        for key in self.mutable:
            state[key] = state[key].copy()
        state.update(changes)
        task = _new_task(Task)
        _set(task, "__dict__", state)
        _set(task, "__pydantic_fields_set__", set(self.fields_set))
        _set(task, "__pydantic_extra__", None)
        _set(task, "__pydantic_private__", None)
        return task


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # Building many small objects triggers collections that scan every live object; the
    # expansion creates no cycles, so pausing the collector changes nothing but the time.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
