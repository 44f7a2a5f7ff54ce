"""How the value lists of an ensemble form its tasks: relations, broadcast, counts, indices.

One rule for ensemble files (:mod:`core.ensemble`) and ensemble tool calls (``ensemble_mcp``):

- ``one-to-one`` (the default) pairs the lists: element *i* of every list forms task *i*. A list
  of one value is used for every task (broadcast). Lists longer than one must have one length,
  else :class:`UnequalLengthsError`, which carries what a message needs to show the fixes.
- ``many-to-many`` takes every combination, the first list varying slowest and the last fastest.

Example:
    >>> fanout = fan_out("one-to-one", {"pressure": 3, "temperature": 1})
    >>> fanout.total, fanout.broadcast, list(fanout.indices())
    (3, ('temperature',), [(0, 0), (1, 0), (2, 0)])
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard, get_args

from core.errors import ConfigError

__all__ = (
    "DEFAULT_RELATION",
    "RELATIONS",
    "Fanout",
    "Relation",
    "UnequalLengthsError",
    "fan_out",
    "is_relation",
)

Relation = Literal["one-to-one", "many-to-many"]
RELATIONS: tuple[Relation, ...] = get_args(Relation)
DEFAULT_RELATION: Relation = "one-to-one"


def is_relation(value: Any) -> TypeGuard[Relation]:
    """Whether ``value`` names a relation."""
    return isinstance(value, str) and value in RELATIONS


class UnequalLengthsError(ConfigError):
    """Under ``one-to-one``, lists longer than one differ in length; nothing was formed.

    Attributes:
        lengths: Each list's length, in the order given.
        longest: The length of the longest list.
        shorter: The lists longer than one but shorter than ``longest``.
        mismatch: The first list longer than one whose length differs from the first such list.
        every_combination: The task count of the fix ``many-to-many``.
        equal_lengths: The task count of the fix "give every list ``longest`` values".
        one_value: The task count of the fix "give each of ``shorter`` one value for all".
    """

    def __init__(self, lengths: Mapping[str, int]) -> None:
        self.lengths = dict(lengths)
        long = {name: n for name, n in self.lengths.items() if n > 1}
        first = next(iter(long.values()))
        self.longest = max(long.values())
        self.shorter = tuple(name for name, n in long.items() if n < self.longest)
        self.mismatch = next(name for name, n in long.items() if n != first)
        self.every_combination = math.prod(self.lengths.values())
        self.equal_lengths = self.longest
        self.one_value = self.longest
        shown = ", ".join(f"{name}: {n}" for name, n in self.lengths.items())
        super().__init__(
            f"lengths differ ({shown}); under one-to-one every list longer than 1 must have "
            "the same length (a 1-element list is used for every task); make them equal, or "
            'set "relation": "many-to-many" for every combination '
            f"({self.every_combination:,} tasks)"
        )


@dataclass(frozen=True)
class Fanout:
    """The tasks that lists of the given lengths form under a relation."""

    relation: Relation
    lengths: dict[str, int]
    """Each list's length, in the order given (the first varies slowest under many-to-many)."""
    total: int
    """The number of tasks."""

    @property
    def broadcast(self) -> tuple[str, ...]:
        """The lists of one value that ``one-to-one`` uses for every one of several tasks."""
        if self.relation != "one-to-one" or self.total == 1:
            return ()
        return tuple(name for name, n in self.lengths.items() if n == 1)

    def indices(self) -> Iterator[tuple[int, ...]]:
        """Per task, in task order, the index into each list (in ``lengths`` order)."""
        sizes = list(self.lengths.values())
        if self.relation == "many-to-many":
            return itertools.product(*(range(n) for n in sizes))
        columns = [range(self.total) if n > 1 else itertools.repeat(0, self.total) for n in sizes]
        if not columns:
            return iter([()])
        return zip(*columns, strict=True)


def fan_out(relation: Relation, lengths: Mapping[str, int]) -> Fanout:
    """Form the tasks of lists with ``lengths`` (each at least 1) under ``relation``.

    Raises:
        UnequalLengthsError: under ``one-to-one``, lists longer than one differ in length.
    """
    if relation == "many-to-many":
        return Fanout(relation, dict(lengths), math.prod(lengths.values()))
    long = {n for n in lengths.values() if n > 1}
    if len(long) > 1:
        raise UnequalLengthsError(lengths)
    return Fanout(relation, dict(lengths), long.pop() if long else 1)
