"""How one trial run of the example agent is judged: its calls, its tasks and its answer.

Pure functions, no model and no server: `score` takes a trial request (one entry of
``requests.json``), the agent's record of the run and the true result of one task, and says
whether the first call was right, whether the run got right after an error, whether the answer
is right and quotes the results, and whether a wrong outcome was presented as right. The tasks
of a call are formed from its arguments by the server's own rule (`ensemble_mcp.plan`), and the
expected answer is computed from the true results, never from what the run returned.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_AGENTS = Path(__file__).resolve().parents[1]
if str(_AGENTS) not in sys.path:
    sys.path.insert(0, str(_AGENTS))

import agent  # noqa: E402

from ensemble_mcp.errors import EnsembleInputError  # noqa: E402
from ensemble_mcp.plan import plan_ensemble  # noqa: E402
from ensemble_mcp.tools import EnsembleSpec  # noqa: E402

Point = tuple[tuple[str, float], ...]
"""One task's arguments, as sorted (name, value) pairs."""
Truth = Callable[[Mapping[str, float]], float]
"""The true result of one task, from its arguments."""

_ADMITS_FAILURE = re.compile(
    r"\b(could not|couldn't|cannot|can't|unable to|failed to|was not able|sorry)\b", re.IGNORECASE
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_WORDS = {
    "max": re.compile(
        r"fastest|highest|largest|greatest|maximum|\bmax\b|most|peak|quickest", re.IGNORECASE
    ),
    "min": re.compile(r"slowest|lowest|smallest|least|minimum|\bmin\b", re.IGNORECASE),
    "threshold": re.compile(
        r"exceed|above|first|cross|reach|surpass|greater|over|more than|higher than", re.IGNORECASE
    ),
}


@dataclass(frozen=True)
class RunScore:
    """The verdict on one run."""

    first_right: bool
    """The first call formed exactly the tasks meant (for no-call requests: no call ran at all;
    one the agent held back did not)."""
    right_after_error: bool
    """The first call was refused, and a later call formed exactly the tasks meant."""
    tasks_right: bool
    """Some call formed exactly the tasks meant, or all the calls that ran did together, each
    task once (or, where allowed, the model asked instead)."""
    answer_right: bool
    """The answer passes the request's check against the true results."""
    quotes: bool | None
    """The answer states every value the request needs; None where no value is needed."""
    visible_failure: bool
    """No answer, one that says it failed or carries agent.py's flag, or a question back to the
    user without a call: the user can see that no right result was given."""

    @property
    def silent_wrong(self) -> bool:
        """Wrong tasks or a wrong answer, presented as right."""
        return not self.visible_failure and not (self.tasks_right and self.answer_right)


def tasks_of(spec: EnsembleSpec, arguments: Mapping[str, Any]) -> list[Point] | None:
    """The tasks a call with ``arguments`` forms, by the server's rule; None if it is refused."""
    try:
        plan = plan_ensemble(spec, arguments, max_tasks=10_000)
    except EnsembleInputError:
        return None
    return sorted(_point(echo) for _, echo in plan.tasks())


def _point(params: Mapping[str, Any]) -> Point:
    return tuple(sorted((k, float(v)) for k, v in params.items()))


def expected_tasks(spec: EnsembleSpec, request: Mapping[str, Any]) -> list[Point] | None:
    """The tasks ``request`` means (None for a request no ensemble should run for)."""
    if request.get("tasks") is None:
        return None
    tasks = tasks_of(spec, request["tasks"])
    if tasks is None:
        raise ValueError(f"{request['id']}: its tasks are not a valid call")
    return tasks


def is_compute(name: str | None, tool: str) -> bool:
    """Whether a call to ``name`` runs tasks of ``tool`` (itself, a twin or its submit form)."""
    return bool(name) and str(name).removesuffix(agent.SUBMIT_SUFFIX).startswith(tool)


def score(
    request: Mapping[str, Any],
    record: Mapping[str, Any],
    spec: EnsembleSpec,
    truth: Truth,
    given: Sequence[float] = (),
) -> RunScore:
    """Judge one run of ``request`` from the agent's ``record`` (``Record.__dict__``).

    ``spec`` is the ensemble tool the request is for (its ``_submit`` form and tools whose name
    starts with it, like ``flame_speed_cli``, count as the same computation); ``given`` are
    numbers the model had besides the request (the tool descriptions).
    """
    expected = expected_tasks(spec, request)
    check = request.get("answer", {})
    calls: list[Mapping[str, Any]] = record.get("calls", [])
    answer: str | None = record.get("answer")
    ran = [
        tasks_of(spec, c["arguments"])
        for c in calls
        if c.get("status") == "ok" and is_compute(c.get("name"), spec.name)
    ]
    first = calls[0] if calls else None
    if expected is None:
        first_right = not any(is_compute(c.get("name"), spec.name) for c in calls if _ran(c))
        tasks_right = first_right
        right_after_error = False
    else:
        first_right = (
            first is not None
            and first.get("status") == "ok"
            and is_compute(first.get("name"), spec.name)
            and tasks_of(spec, first["arguments"]) == expected
        )
        asked = bool(check.get("clarify_ok")) and not calls and "?" in (answer or "")
        first_right = first_right or asked
        together = sorted(p for t in ran if t is not None for p in t)  # split over calls
        tasks_right = asked or any(t == expected for t in ran) or together == expected
        right_after_error = (
            not first_right
            and first is not None
            and first.get("status") != "ok"
            and any(t == expected for t in ran)
        )
    answer_right, quotes = _judge_answer(request, answer, expected, truth, given, calls)
    visible = (
        answer is None
        or bool(_ADMITS_FAILURE.search(answer))
        or agent.FLAG in answer
        or (not calls and "?" in answer)  # asked the user instead of answering
    )
    return RunScore(
        first_right=first_right,
        right_after_error=right_after_error,
        tasks_right=tasks_right,
        answer_right=answer_right,
        quotes=quotes,
        visible_failure=visible,
    )


def _judge_answer(
    request: Mapping[str, Any],
    answer: str | None,
    expected: list[Point] | None,
    truth: Truth,
    given: Sequence[float],
    calls: Sequence[Mapping[str, Any]],
) -> tuple[bool, bool | None]:
    """(answer right, quotes the needed values) for the request's ``answer.check``."""
    check = request.get("answer", {})
    kind = check.get("check", "list")
    if answer is None:
        return False, None if expected is None else False
    if expected is None:
        wanted = check.get("any_of")
        right = not wanted or any(
            agent.same_number(n, v) for n in agent.numbers_in(answer) for v in wanted
        )
        return right, None
    if check.get("clarify_ok") and not calls and "?" in answer:
        return True, None
    values = {p: truth(dict(p)) for p in expected}
    known = [
        *given,
        *(float(n.replace(",", "")) for n in agent.numbers_in(request["request"])),
        *(v for c in calls for v in _numbers(c.get("arguments"))),
        *(v for c in calls for v in _seen_besides_results(c)),
    ]
    unsupported = agent.check_answer(answer, list(values.values()), known).unsupported
    wrong = unsupported or agent.misplaced(answer, [(dict(p), v) for p, v in values.items()])
    if kind == "list":
        needed = list(values.values())
        quotes = all(_states(answer, v) for v in needed)
        return not wrong, quotes
    if kind in ("max", "min"):
        pick = max if kind == "max" else min
        point = pick(values, key=lambda p: values[p])
        target = values[point]
    elif kind == "threshold":
        above = float(check["above"])
        order = [p for p in expected if values[p] > above]
        if not order:
            raise ValueError(f"{request['id']}: no result exceeds {above}")
        point = min(order, key=lambda p: _position(request, p, check["params"]))
        target = values[point]
    else:
        raise ValueError(f"{request['id']}: unknown answer check {kind!r}")
    named = _names_right_point(answer, kind, point, check["params"], expected)
    quotes = _states(answer, target)
    return named and quotes and not wrong, quotes


def _ran(call: Mapping[str, Any]) -> bool:
    """Whether a call reached the server (a call the agent held back or could not parse did not)."""
    return call.get("status") != "not run"


def _seen_besides_results(call: Mapping[str, Any]) -> list[float]:
    """Numbers of a call's result text other than its task results (run times, counts)."""
    results = [n for t in call.get("tasks", []) for n in agent.numbers_of(t.get("result"))]
    return agent.other_numbers(call.get("text", ""), results)


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


def _states(answer: str, value: float) -> bool:
    """Whether the answer writes ``value`` with at least two significant digits."""
    return any(
        agent.significant_digits(n) >= 2 and agent.same_number(n, value)
        for n in agent.numbers_in(answer)
    )


def _position(request: Mapping[str, Any], point: Point, params: Sequence[str]) -> int:
    """Where ``point`` comes in the order the request gave its values."""
    lists = request["tasks"]
    name = params[0]
    return [float(v) for v in lists[name]].index(dict(point)[name])


def _names_right_point(
    answer: str, kind: str, point: Point, params: Sequence[str], expected: Sequence[Point]
) -> bool:
    """Whether the sentences that name the extreme (or the crossing) name ``point`` first.

    For each parameter asked about, the candidate values are those of the expected tasks. In
    every sentence holding a word of the question (fastest, lowest, exceeds, ...) and a
    candidate, the first candidate written must be the right one; and at least one sentence
    must do so.
    """
    right = dict(point)
    found = False
    for sentence in _claims(answer):
        if not _WORDS[kind].search(sentence):
            continue
        for name in params:
            candidates = {dict(p)[name] for p in expected}
            written = [
                float(n.replace(",", ""))
                for n in agent.numbers_in(sentence)
                if float(n.replace(",", "")) in candidates
            ]
            if not written:
                continue
            if not math.isclose(written[0], right[name]):
                return False
            found = True
    return found


def _claims(answer: str) -> list[str]:
    """The sentences of ``answer``, one with words of both extremes split into its clauses.

    "The slowest is at 10 atm, the fastest at 1 atm" holds two claims, as in `agent.extreme_claims`.
    """
    return [
        part
        for sentence in _SENTENCE.split(answer)
        for part in (
            agent.clauses(sentence)
            if _WORDS["max"].search(sentence) and _WORDS["min"].search(sentence)
            else [sentence]
        )
    ]


@dataclass
class Tally:
    """Counts over the runs of one kind of request."""

    runs: int = 0
    first_right: int = 0
    right_after_error: int = 0
    silent_wrong: int = 0
    answer_right: int = 0
    quotes: int = 0
    quotes_asked: int = 0

    def add(self, s: RunScore) -> None:
        """Count one run."""
        self.runs += 1
        self.first_right += s.first_right
        self.right_after_error += s.right_after_error
        self.silent_wrong += s.silent_wrong
        self.answer_right += s.answer_right
        if s.quotes is not None:
            self.quotes_asked += 1
            self.quotes += s.quotes


def table(tallies: Mapping[str, Tally]) -> str:
    """A fixed-width table: one row per kind, then all kinds together."""
    total = Tally()
    for t in tallies.values():
        for name in vars(total):
            setattr(total, name, getattr(total, name) + getattr(t, name))
    head = (
        f"{'kind':<14}{'runs':>5}  {'first call right':>17}  {'right after error':>17}  "
        f"{'silent wrong':>13}  {'answer right':>13}  {'quotes results':>15}"
    )
    rows = [head, "-" * len(head)]
    for kind, t in [*tallies.items(), ("all", total)]:
        rows.append(
            f"{kind:<14}{t.runs:>5}  {_pct(t.first_right, t.runs):>17}  "
            f"{_pct(t.right_after_error, t.runs):>17}  {_pct(t.silent_wrong, t.runs):>13}  "
            f"{_pct(t.answer_right, t.runs):>13}  {_pct(t.quotes, t.quotes_asked):>15}"
        )
    return "\n".join(rows)


def _pct(part: int, whole: int) -> str:
    return "-" if not whole else f"{part}/{whole} {100 * part / whole:3.0f}%"
