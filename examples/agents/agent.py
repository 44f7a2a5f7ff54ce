"""Let an LLM drive the ensemble tools of an MCP server through an OpenAI-compatible endpoint.

Run the example server first (``python examples/agents/server.py``), then::

    export OPENAI_BASE_URL=http://127.0.0.1:8080/v1   # any OpenAI-compatible chat endpoint
    export OPENAI_API_KEY=anything                    # sent as a bearer token
    export OPENAI_MODEL=...                           # optional when the endpoint serves one model
    python examples/agents/agent.py "flame speed at 1, 2 and 5 atm, all at 300 K"

The MCP server is ``--url`` or ``$ENSEMBLE_MCP_URL`` (default http://127.0.0.1:9276/mcp); a
token in ``$ENSEMBLE_MCP_TOKEN`` is sent as its bearer token. The agent lists the server's tools,
offers them to the model as OpenAI function tools and runs the calls the model makes. Small local
models rarely fill the API's ``tool_calls`` field; they write the call as JSON in the message text,
so both forms are accepted. A failed call (bad arguments, an unknown tool, malformed JSON) is
explained back to the model, which gets a bounded number of retries. Decoding is greedy
(temperature 0). Parsing lives in small pure functions above ``main``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import re
import sys
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TextIO

DEFAULT_MCP_URL = "http://127.0.0.1:9276/mcp"
MAX_REPLY_TOKENS = 1024  # a tool call or a short answer; stops a looping small model early
MAX_RECORDED_TASKS = 1000  # tasks per call kept in the record
SUBMIT_SUFFIX = "_submit"  # an ensemble tool's form that starts it and returns an id at once
OPENAI_URL = "https://api.openai.com/v1"
SYSTEM_PROMPT = (
    "You are a research assistant with tools. Use a tool to compute what the user asks; never "
    "invent numbers. To call a tool, use the tool-calling interface or reply with only a JSON "
    'object {"name": "<tool>", "arguments": {...}}. Once a tool has returned the results the '
    "user asked for, call no more tools: answer the user, giving each result they asked for "
    "with the parameters it belongs to (a result's first line gives its smallest and largest "
    "value, and where each occurs)."
)
HELD_GRID = (
    "Not run: relation many-to-many runs every combination of the lists ({tasks} tasks), but my "
    "request gives {count} points: {points}. For the points alone, send this call: {call}. If I "
    "asked for every combination, send the same call again."
)
HELD_UNASKED = (
    "Not run: my request does not give {values}. Call a tool only with the values of my "
    "request. If you derived them from it (a unit conversion, say), send the same call again; "
    "if no tool computes what I asked, answer in words."
)
HELD_PARTIAL = (
    "Not run: my request lists {name} {listed}, but the call has only {had}. For every value, "
    "send this call: {call}. If I did not ask for them all, send the same call again."
)
REPEATED_CALL = (
    "This exact call already ran and its results are above; it was not run again. Answer the "
    "user with those results."
)
ASK_FOR_ANSWER = "Answer my request now, using the tool results above."
FLAG = "[agent.py:"  # starts each warning the agent adds to an answer
NUDGE_AFTER_ERROR = (
    "The tool call failed and nothing ran, so there are no results yet. Reply with only the "
    "corrected tool call, as JSON, the way the error message shows it; no other text."
)
NO_RESULT = f"{FLAG} every tool call failed; no number in this answer comes from a tool.]"
CORRECTED = (
    f"{FLAG} the model's answer did not pass the check against the results, so it is left out; "
    "what is stated above is read from the results by agent.py.]"
)
NO_TOOL_YET = (
    "No tool has run yet, but your answer {problem}. If one of the tools computes what I asked, "
    "reply with only that tool call, as JSON. If none does, answer in words."
)
NO_TOOL_RAN = FLAG + " no tool ran; {numbers} in this answer come from the model, not from a tool.]"
NO_CALL_MADE = f"{FLAG} this answer names a tool, but no tool ran.]"
STILL_STANDS = (
    "The results of the earlier call that succeeded still stand: if they are what I asked for, "
    "answer with them."
)
FIX_ANSWER = (
    "Answer my request using the tool results above. A draft of your answer {problems}; do not "
    "repeat that. Give each result value exactly as the tool returned it, with the parameters "
    "it belongs to, and no other numbers."
)

# ---------------------------------------------------------------------------------------------
# Pure parts: tool schemas, tool-call parsing, result rendering.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """One tool call the model asked for."""

    name: str
    arguments: dict[str, Any]
    call_id: str | None = None


@dataclass(frozen=True)
class CallProblem:
    """A tool call the model tried to make but that cannot be run; ``message`` is for the model."""

    message: str
    call_id: str | None = None


Parsed = ToolCall | CallProblem

_FENCE = re.compile(r"```[ \t]*([A-Za-z_]*)[ \t]*\n?(.*?)```", re.DOTALL)
_TAGGED = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_LOOKS_LIKE_CALL = re.compile(r"""["']name["']\s*:""")
_CALL_SHAPE = 'write it as {"name": "<tool>", "arguments": {...}} in valid JSON'


def tool_to_openai(
    name: str, description: str | None, input_schema: dict[str, Any]
) -> dict[str, Any]:
    """Return the OpenAI ``tools`` entry (a function schema) for one MCP tool."""
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description or "",
            "parameters": input_schema or {"type": "object", "properties": {}},
        },
    }


def call_from_object(obj: Any, tool_names: Sequence[str], call_id: str | None = None) -> Parsed:
    """Turn one decoded JSON value into a `ToolCall`, or a `CallProblem` saying what is wrong.

    Accepts ``{"name", "arguments"}``, ``"parameters"`` as an alias of ``"arguments"``, arguments
    given as a JSON string (the OpenAI wire form), the nested ``{"function": {...}}`` shape and
    ``{"function": "<tool>", "arguments": ...}`` (the tool's name under "function", as small
    models often write it).
    """
    if isinstance(obj, dict) and isinstance(obj.get("function"), dict):
        obj = obj["function"]
    elif isinstance(obj, dict) and "name" not in obj and isinstance(obj.get("function"), str):
        obj = {**obj, "name": obj["function"]}
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return CallProblem(f'a tool call needs a string "name"; {_CALL_SHAPE}', call_id)
    name = obj["name"]
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            problem = f"the arguments of {name!r} are not valid JSON ({exc}); {_CALL_SHAPE}"
            return CallProblem(problem, call_id)
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        problem = f'"arguments" of {name!r} must be a JSON object, got {arguments!r}'
        return CallProblem(problem, call_id)
    if name not in tool_names:
        known = ", ".join(tool_names) or "(none)"
        return CallProblem(f"unknown tool {name!r}; the available tools are: {known}", call_id)
    return ToolCall(name=name, arguments=arguments, call_id=call_id)


def _calls_from_value(value: Any, tool_names: Sequence[str]) -> list[Parsed]:
    items = value if isinstance(value, list) else [value]
    return [call_from_object(item, tool_names) for item in items]


def _keyed_by_tool(value: Any, tool_names: Sequence[str]) -> Any:
    """``{"<tool>": {...arguments}}`` as ``{"name": "<tool>", "arguments": {...}}``; else as is."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, arguments),) = value.items()
        if key in tool_names and isinstance(arguments, dict):
            return {"name": key, "arguments": arguments}
    return value


def _is_call_value(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    return bool(items) and all(
        isinstance(i, dict) and {"name", "function"} & i.keys() for i in items
    )


def _bare_json_values(text: str) -> tuple[list[Any], bool]:
    """Decode the top-level JSON objects/arrays in prose; also say if an undecodable one remains."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    failed = False
    pos = 0
    while (start := _next_open(text, pos)) != -1:
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            failed = failed or bool(_LOOKS_LIKE_CALL.search(text, start))
            pos = start + 1
            continue
        values.append(value)
        pos = end
    return values, failed


def _next_open(text: str, pos: int) -> int:
    found = [i for i in (text.find("{", pos), text.find("[", pos)) if i != -1]
    return min(found) if found else -1


def parse_text_tool_calls(text: str, tool_names: Sequence[str]) -> list[Parsed]:
    """Find the tool calls a model wrote in its message text.

    Fenced blocks (```json ... ```), ``<tool_call>`` tags and bare JSON objects in prose are all
    understood; a block holding a list of calls gives several calls, and an object whose one key
    is a tool's name holds that tool's arguments. JSON that is not a tool call
    (say, a table of results) is ignored; JSON that tries to be one but does not decode becomes a
    `CallProblem`. An empty list means the message is a plain answer.
    """
    blocks = [body for _, body in _FENCE.findall(text)] + _TAGGED.findall(text)
    if not blocks:
        values, failed = _bare_json_values(text)
        values = [_keyed_by_tool(v, tool_names) for v in values]
        calls = [c for v in values if _is_call_value(v) for c in _calls_from_value(v, tool_names)]
        if not calls and failed:
            return [CallProblem(f"the tool call in your message is not valid JSON; {_CALL_SHAPE}")]
        return calls
    parsed: list[Parsed] = []
    for block in blocks:
        try:
            values = _json_sequence(block)
        except json.JSONDecodeError as exc:
            if _LOOKS_LIKE_CALL.search(block):
                parsed.append(
                    CallProblem(f"the tool call is not valid JSON ({exc}); {_CALL_SHAPE}")
                )
            continue
        for value in (_keyed_by_tool(v, tool_names) for v in values):
            if _is_call_value(value):
                parsed.extend(_calls_from_value(value, tool_names))
    return parsed


def _json_sequence(block: str) -> list[Any]:
    """Decode one JSON value, or several written one after another (one call per line)."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    pos, end = 0, len(block)
    while True:
        while pos < end and block[pos].isspace():
            pos += 1
        if pos == end and values:
            return values
        value, pos = decoder.raw_decode(block, pos)
        values.append(value)


def parse_native_tool_calls(tool_calls: Sequence[Any], tool_names: Sequence[str]) -> list[Parsed]:
    """Parse the ``tool_calls`` field of an OpenAI chat-completions message."""
    parsed: list[Parsed] = []
    for item in tool_calls:
        call_id = item.get("id") if isinstance(item, dict) else None
        parsed.append(call_from_object(item, tool_names, call_id=call_id))
    return parsed


def parse_reply(message: dict[str, Any], tool_names: Sequence[str]) -> list[Parsed]:
    """Return the tool calls in an assistant message: native ``tool_calls`` first, else its text."""
    if message.get("tool_calls"):
        return parse_native_tool_calls(message["tool_calls"], tool_names)
    return parse_text_tool_calls(message.get("content") or "", tool_names)


def call_key(call: ToolCall) -> str:
    """A key equal for calls with the same tool and argument values (``1`` and ``1.0`` alike)."""

    def norm(value: Any) -> Any:
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return value
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items()}
        if isinstance(value, list):
            return [norm(v) for v in value]
        return value

    return json.dumps([call.name, norm(call.arguments)], sort_keys=True)


def shorten(text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def render_result(texts: Sequence[str], structured: Any, limit: int) -> str:
    """Render a tool result for the model: its text content, else its structured content."""
    body = "\n".join(texts) if texts else json.dumps(structured, separators=(",", ":"))
    return shorten(body, limit)


_NUMBER = re.compile(
    r"(?<![\w.])(?:(?<=[\s(=:~\[])-)?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])"
)
_NUMBER_ONLY = re.compile(r"\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*")
NOT_RETURNED = "is not a value any task returned"
QUOTES_NONE = "quotes none of the values the tools returned"
SMALL_INTEGER = 20  # counts, list numbering: an answer may say them without a tool


def numbers_in(text: str) -> list[str]:
    """The numbers written in ``text``, as written (``1,000`` and ``-2.5e-3`` included).

    A digit inside a word (``CO2``, ``call_0``) is not a number.
    """
    return [m.group(0) for m in _NUMBER.finditer(text)]


def _as_float(written: str) -> float:
    return float(written.replace(",", ""))


def same_number(written: str, value: float) -> bool:
    """Whether the number ``written`` in an answer states ``value``.

    It does when equal, or equal once ``value`` is rounded to the decimals written (or cut to
    them, when three or more digits are written); also in hundredths or thousandths of the unit
    (m/s written as cm/s or mm/s).
    """
    number = _as_float(written)
    if "e" in written.lower():
        return math.isclose(number, value, rel_tol=1e-3)
    mantissa = written.replace(",", "").lstrip("-")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    may_cut = len(mantissa.replace(".", "").lstrip("0")) >= 3  # 0.384 for 0.3845, not 0.3
    for scaled in (value, value * 100, value * 1000):
        if decimals == 0 and scaled != round(scaled):
            continue
        if math.isclose(number, round(scaled, decimals), abs_tol=1e-12):
            return True
        cut = math.trunc(scaled * 10**decimals) / 10**decimals
        if may_cut and math.isclose(number, cut, abs_tol=1e-12):
            return True
    return False


def numbers_of(value: Any) -> list[float]:
    """Every number inside a JSON value (a string that is one number counts; booleans do not)."""
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [float(value)] if math.isfinite(value) else []
    if isinstance(value, str):
        return [float(value)] if _NUMBER_ONLY.fullmatch(value) else []
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers_of(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers_of(v)]
    return []


def returned_values(structured: Any) -> list[float]:
    """The values a tool returned: the results of an ensemble's tasks, else all its numbers."""
    if isinstance(structured, dict) and isinstance(structured.get("tasks"), list):
        return [
            n
            for task in structured["tasks"]
            if isinstance(task, dict) and "result" in task
            for n in numbers_of(task["result"])
        ]
    return numbers_of(structured)


def other_numbers(text: str, values: Sequence[float]) -> list[float]:
    """The numbers of a result's ``text`` that are not its task ``values``.

    Run times, counts, the arguments echoed: numbers the model saw, which an answer may repeat.
    """
    return [_as_float(n) for n in numbers_in(text) if not any(same_number(n, v) for v in values)]


TaskValue = tuple[dict[str, float], float]
"""One number a task returned, with the task's number arguments."""
_LINE = re.compile(r"(?<=[.!?;])\s+|\n+")
_COLON_BREAK = re.compile(r":[ \t]*\n\s*")


def lines_of(answer: str) -> list[str]:
    """The lines (or sentences) of ``answer``; a line ending in a colon goes on with the next."""
    return _LINE.split(_COLON_BREAK.sub(": ", answer))


def significant_digits(written: str) -> int:
    """How many significant digits a number is written with (``0.0450``: 3)."""
    mantissa = re.split(r"[eE]", written.replace(",", "").lstrip("-"))[0]
    return len(mantissa.replace(".", "").lstrip("0"))


def task_values(structured: Any) -> list[TaskValue]:
    """Each number the tasks of an ensemble result returned, with the task's number arguments."""
    if not isinstance(structured, dict) or not isinstance(structured.get("tasks"), list):
        return []
    out: list[TaskValue] = []
    for task in structured["tasks"]:
        if not isinstance(task, dict) or "result" not in task:
            continue
        params = task.get("params") or {}
        numeric = {k: float(v) for k, v in params.items() if numbers_of(v) == [float(v)]}
        out.extend((numeric, n) for n in numbers_of(task["result"]))
    return out


_CLAUSE = re.compile(r"[,;](?![^()]*\))")  # a comma or semicolon outside parentheses


def clauses(text: str) -> list[str]:
    """The clauses of ``text``: split at commas and semicolons outside parentheses."""
    return _CLAUSE.split(text)


def misplaced(answer: str, tasks: Sequence[TaskValue]) -> list[str]:
    """Where ``answer`` puts a returned value beside the arguments of another task, in words.

    Judged per line (or sentence): a value stated there (two or more significant digits) must
    belong to a task whose arguments agree with every argument value the line names; a line
    that names no value of an argument is not judged on it, and a line that names several
    values of one (a list of results) agrees with any of them. Such a line is judged again per
    clause (split at commas outside parentheses): a clause that names one value of each argument
    it names must agree with them ("at (1 atm, 300 K) is 0.3845, at (2 atm, 400 K) is ..."),
    unless the line lists values of one argument, which clauses would cut apart.
    """
    names = {name for params, _ in tasks for name in params}
    candidates = {n: {params[n] for params, _ in tasks if n in params} for n in names}
    found: list[str] = []
    for line in lines_of(answer):
        problem = _misplaced_in(line, tasks, candidates, clause=False)
        by_clause = problem is None and not _lists_values_of_one(line, candidates)
        for part in clauses(line) if by_clause else ():
            problem = problem or _misplaced_in(part, tasks, candidates, clause=True)
        if problem:
            found.append(problem)
    return found


def _lists_values_of_one(text: str, candidates: Mapping[str, set[float]]) -> bool:
    """Whether ``text`` writes a list of values of one argument ("at 1, 3 and 9 atm are ...").

    Split into clauses, such a list would be cut apart.
    """
    return any(
        len(values) > 1 and any(set(values) <= options for options in candidates.values())
        for values in listed_values(text)
    )


def _misplaced_in(
    text: str, tasks: Sequence[TaskValue], candidates: Mapping[str, set[float]], clause: bool
) -> str | None:
    written = [_as_float(n) for n in numbers_in(text)]
    named = {n: {w for w in written if w in options} for n, options in candidates.items()}
    if clause and (not any(named.values()) or any(len(v) > 1 for v in named.values())):
        return None  # a clause is judged only when it names one value of each argument it names
    for number in numbers_in(text):
        if significant_digits(number) < 2:
            continue
        owners = [params for params, value in tasks if same_number(number, value)]
        if not owners or any(
            all(not named[n] or params.get(n) in named[n] for n in named) for params in owners
        ):
            continue
        said = ", ".join(f"{n}={_plain(min(named[n]))}" for n in sorted(named) if named[n])
        belongs = ", ".join(f"{n}={_plain(v)}" for n, v in sorted(owners[0].items()))
        return f"gives {number} for {said}, but {number} is the result of {belongs}"
    return None


_MOST = re.compile(
    r"\b(largest|highest|greatest|biggest|maximum|fastest|quickest|hottest|longest|peak)\b", re.I
)
_LEAST = re.compile(r"\b(smallest|lowest|minimum|slowest|coldest|shortest)\b", re.I)


def wrong_extremes(answer: str, ensembles: Sequence[Sequence[TaskValue]]) -> list[str]:
    """Where ``answer`` calls a result the largest (or smallest) and it is not, in words.

    Judged per line (or sentence) that has words of one side only (largest, highest, fastest,
    ...; or smallest, lowest, slowest, ...) not followed by an argument's name ("the lowest
    temperature at which" is about an argument), against each ensemble of two or more different
    results: the first result stated there must not be the other extreme. When the ensemble
    varies one argument only, "the largest" has one meaning, so the first result stated must be
    the largest itself, and the first value of that argument named (if no result is stated)
    must be where the largest occurs. A sentence with words of both sides is judged per clause
    ("the fastest is ..., and the slowest is ...").
    """
    found: list[str] = []
    names = {n.lower() for tasks in ensembles for params, _ in tasks for n in params}
    for line, (word, most) in extreme_claims(answer, names):
        for tasks in ensembles:
            problem = _extreme_problem(line, word, most, tasks)
            if problem:
                found.append(problem)
                break
    return found


def extreme_claims(answer: str, names: Collection[str]) -> list[tuple[str, tuple[str, bool]]]:
    """The lines of ``answer`` that speak of the largest or smallest result, with their word.

    A line with words of both sides is split into clauses (at commas outside parentheses).
    """
    parts = [
        part
        for line in lines_of(answer)
        for part in (clauses(line) if _MOST.search(line) and _LEAST.search(line) else [line])
    ]
    return [(part, side) for part in parts if (side := extreme_word(part, names))]


def _extreme_problem(line: str, word: str, most: bool, tasks: Sequence[TaskValue]) -> str | None:
    values = [v for _, v in tasks]
    if len(set(values)) < 2:
        return None
    pick = max if most else min
    want, other = pick(values), (min if most else max)(values)
    where = tasks[values.index(want)][0]
    varying = _varying(tasks)
    stated = [
        t
        for t in numbers_in(line)
        if significant_digits(t) >= 2 and any(same_number(t, v) for v in values)
    ]
    right = _extreme_fact(tasks, most)
    if stated:
        first = stated[0]
        if same_number(first, want):
            return None
        if same_number(first, other) or len(varying) == 1:
            return f"calls {first} the {word}, but {right}"
        return None
    if len(varying) != 1:
        return None
    name = varying[0]
    options = {params[name] for params, _ in tasks if name in params}
    named = [w for w in (_as_float(n) for n in numbers_in(line)) if w in options]
    if named and named[0] != where[name]:
        return f"says the {word} is at {name}={_plain(named[0])}, but {right}"
    return None


def extreme_word(text: str, names: Collection[str]) -> tuple[str, bool] | None:
    """The word by which ``text`` speaks of the largest (True) or smallest (False) result.

    Words of one side only count, and not when an argument's name (of ``names``, lower case)
    follows: "the lowest temperature at which ..." is about an argument, not a result.
    """
    most, least = _MOST.search(text), _LEAST.search(text)
    side = most or least
    if side is None or (most and least):
        return None
    after = [w.lower() for w in re.findall(r"[A-Za-z_]+", text[side.end() :])[:2]]
    if any(w in names or w.rstrip("s") in names for w in after):
        return None
    return side.group(0), bool(most)


def unanswered_extreme(request: str, answer: str, tasks: Sequence[TaskValue]) -> list[str]:
    """What ``answer`` leaves out of the largest (or smallest) result ``request`` asks for.

    Nothing when the answer has a line that speaks of that side (`wrong_extremes` judges it).
    """
    names = {n.lower() for params, _ in tasks for n in params}
    asked = extreme_word(request, names)
    values = [v for _, v in tasks]
    if asked is None or len(set(values)) < 2:
        return []
    word, most = asked
    if any(side == most for _, (_, side) in extreme_claims(answer, names)):
        return []  # it says which; `wrong_extremes` judges whether rightly
    return [f"does not say which result is the {word}: {_extreme_fact(tasks, most)}"]


def _extreme_fact(tasks: Sequence[TaskValue], most: bool) -> str:
    values = [v for _, v in tasks]
    want = max(values) if most else min(values)
    where = tasks[values.index(want)][0]
    varying = _varying(tasks)
    at = ", ".join(f"{n}={_plain(where[n])}" for n in varying)
    return f"the {'largest' if most else 'smallest'} result is {_plain(want)} at {at}"


def _varying(tasks: Sequence[TaskValue]) -> list[str]:
    names = sorted({n for params, _ in tasks for n in params})
    return [n for n in names if len({params.get(n) for params, _ in tasks}) > 1]


_BOUND = re.compile(
    r"\b(?P<word>exceeds?|exceeding|above|over|more than|greater than|higher than|faster than|"
    r"below|under|less than|lower than|slower than)\s+(?:about\s+|approximately\s+)?(?=\d)",
    re.IGNORECASE,
)
_BELOW = ("below", "under", "less", "lower", "slower")


def asked_bound(request: str) -> tuple[float, bool] | None:
    """The threshold ``request`` asks about ("first exceeds 0.6"): (bound, True for above).

    A number that starts a list ("sweep over 1, 5 and 10 atm") is not a bound.
    """
    for found in _BOUND.finditer(request):
        number = _NUMBER.match(request, found.end())
        if number is None:
            continue
        value, after = _as_float(number.group(0)), listed_values(request[number.start() :])
        if not (after and after[0][0] == value):
            return value, not found.group("word").lower().startswith(_BELOW)
    return None


def wrong_crossings(request: str, answer: str, tasks: Sequence[TaskValue]) -> list[str]:
    """Where ``answer`` names the wrong point for the threshold ``request`` asks about, in words.

    Judged when the ensemble varies one argument, on each line of the answer that states the
    bound: the values of that argument named there must include the first one (in the order
    the tasks ran) whose result is beyond the bound.
    """
    found = _crossing(request, tasks)
    if found is None:
        return []
    name, bound, result_at, crossing, fact = found
    for line in lines_of(answer):
        written = [_as_float(n) for n in numbers_in(line)]
        if bound not in written:
            continue
        named = [w for w in written if w in result_at and w != bound]
        if not named or crossing in named:
            continue
        said = named[0]
        return [f"names {name}={_plain(said)}, whose result is {_plain(result_at[said])}; {fact}"]
    return []


class Crossing(NamedTuple):
    """The threshold a request asks about, read from an ensemble that varies one argument."""

    name: str
    """The argument that varies."""
    bound: float
    result_at: dict[float, float]
    """The result at each value of the argument, in the order the tasks ran."""
    first: float | None
    """The first value whose result is beyond the bound; None if none is."""
    fact: str
    """That, in words."""


def _crossing(request: str, tasks: Sequence[TaskValue]) -> Crossing | None:
    asked, varying = asked_bound(request), _varying(tasks)
    if asked is None or len(varying) != 1:
        return None
    bound, above = asked
    name, side = varying[0], "above" if above else "below"
    result_at = {params[name]: value for params, value in tasks}
    first = next((p for p, v in result_at.items() if (v > bound if above else v < bound)), None)
    if first is None:
        fact = f"no result is {side} {_plain(bound)}"
    else:
        fact = (
            f"the first {name} whose result is {side} {_plain(bound)} is {_plain(first)} "
            f"({_plain(result_at[first])})"
        )
    return Crossing(name, bound, result_at, first, fact)


def asked_facts(request: str, tasks: Sequence[TaskValue]) -> list[str]:
    """What ``tasks`` say to the question ``request`` asks, as sentences; [] if it asks none.

    The questions read are those the answer check judges: the largest or smallest result
    (`extreme_word`) and the first point beyond a threshold (`asked_bound`).
    """
    facts = []
    names = {n.lower() for params, _ in tasks for n in params}
    asked = extreme_word(request, names)
    if asked is not None and len({v for _, v in tasks}) > 1:
        facts.append(_extreme_fact(tasks, asked[1]))
    if (found := _crossing(request, tasks)) is not None:
        facts.append(found.fact)
    return [f"{fact[0].upper()}{fact[1:]}." for fact in facts]


_LIST_GAP = re.compile(r"\s*(?:[A-Za-z][\w/]*\s*)?(?:,\s*(?:and\s+|or\s+)?|and\s+|or\s+|/\s*)")


_NUM = r"(\d+(?:\.\d+)?)"
_UNIT = r"\s*(?:[A-Za-z][\w/]*\s*)?"
_RANGE = re.compile(
    rf"\b(?:from|between)\s+{_NUM}{_UNIT}(?:to|and|-)\s*{_NUM}{_UNIT},?\s*"
    rf"(?:(?:in\s+steps\s+of|every|in\s+increments\s+of|with\s+a\s+step\s+of)\s+{_NUM}"
    rf"|in\s+{_NUM}{_UNIT}(?:steps|increments))",
    re.IGNORECASE,
)
MAX_RANGE = 10_000  # values a range in a request may expand to before it is not judged


def ranges_in(request: str) -> list[list[float]]:
    """The ranges ``request`` writes out ("from 300 K to 500 K in steps of 25 K"), expanded."""
    expanded = []
    for found in _RANGE.finditer(request):
        start, stop = float(found.group(1)), float(found.group(2))
        step = float(found.group(3) or found.group(4))
        if step > 0 and start <= stop and (stop - start) / step < MAX_RANGE:
            count = math.floor((stop - start) / step + 1e-9) + 1
            expanded.append([round(start + k * step, 9) for k in range(count)])
    return expanded


def listed_values(request: str) -> list[list[float]]:
    """The lists of numbers ``request`` writes ("1, 2 and 5 atm", "0.5 atm/320 K").

    Its ranges ("from 300 K to 500 K in steps of 25 K") come too, expanded (`ranges_in`).
    """
    lists: list[list[float]] = []
    end = -1
    for found in _NUMBER.finditer(request):
        value = _as_float(found.group(0))
        if lists and _LIST_GAP.fullmatch(request, end, found.start()):
            lists[-1].append(value)
        else:
            lists.append([value])
        end = found.end()
    return [values for values in lists if len(values) > 1] + ranges_in(request)


def left_out(request: str, ran: Collection[float]) -> list[float]:
    """Values of lists in ``request`` that no task ran with, where other values of the list did."""
    return [
        v
        for values in listed_values(request)
        if any(v in ran for v in values)
        for v in values
        if v not in ran
    ]


class PointsGrid(NamedTuple):
    """Every combination ran of values a request gives as points (see `grid_of_points`)."""

    tool: str
    names: tuple[str, ...]
    points: list[tuple[float, ...]]
    """The points, each with one value of every argument in ``names``, in the request's order."""
    tasks: int
    fixed: dict[str, Any]
    """The other arguments of the call, the same for every task."""

    @property
    def shown(self) -> str:
        """The points as written for people: ``(1, 300), (2, 400)``."""
        return ", ".join("(" + ", ".join(map(_plain, p)) + ")" for p in self.points)

    @property
    def fact(self) -> str:
        """What ran and what was asked, in words."""
        return (
            f"every combination ran ({self.tasks} tasks), but the request gives "
            f"{len(self.points)} points of {', '.join(self.names)}: {self.shown}"
        )

    @property
    def call(self) -> str:
        """The call for the points alone, as JSON ready to send."""
        points = {name: [p[k] for p in self.points] for k, name in enumerate(self.names)}
        arguments = {**self.fixed, **points, "relation": "one-to-one"}
        return json.dumps({"name": self.tool, "arguments": arguments})


def grid_of_points(request: str, tasks: Sequence[TaskValue], tool: str = "") -> PointsGrid | None:
    """Whether ``tasks`` (of ``tool``) are every combination of values ``request`` gives as points.

    The tasks form a full grid of two or more arguments with n values each, and the request
    writes n points, each a run of numbers side by side with one value of every argument
    ("(1 atm, 300 K), (2 atm, 400 K)", "2 atm/350 K and 6 atm/550 K") that together hold every
    value: the points were meant, not the n^k combinations.
    """
    names = _varying(tasks)
    values = {n: {params[n] for params, _ in tasks} for n in names}
    points = {tuple(params[n] for n in names) for params, _ in tasks}
    counts = {len(v) for v in values.values()}
    if len(names) < 2 or len(counts) != 1 or len(points) != math.prod(map(len, values.values())):
        return None
    (n,) = counts
    written = [_as_float(w) for w in numbers_in(request)]
    found: list[tuple[float, ...]] = []
    i = 0
    while i + len(names) <= len(written):
        point = _as_point(written[i : i + len(names)], names, values)
        if point is None:
            i += 1
            continue
        found.append(point)
        i += len(names)
    covered = all({p[k] for p in found} == values[name] for k, name in enumerate(names))
    if len(found) != n or not covered:
        return None
    fixed = {k: v for k, v in tasks[0][0].items() if k not in names}
    return PointsGrid(tool, tuple(names), found, len(points), fixed)


def planned_grid(call: ToolCall, request: str) -> PointsGrid | None:
    """`grid_of_points` for a call not yet run; None if it asks for no such grid.

    Its many-to-many lists of numbers, all of one length, combined as the server would.
    """
    args = call.arguments
    lists = {
        k: [float(x) for x in v]
        for k, v in args.items()
        if k != "relation" and isinstance(v, list) and len(v) > 1 and _all_numbers(v)
    }
    sizes = [len(v) for v in lists.values()]
    if args.get("relation") != "many-to-many" or len(lists) < 2 or math.prod(sizes) > MAX_RANGE:
        return None
    names = sorted(lists)
    combos = itertools.product(*(lists[n] for n in names))
    grid = grid_of_points(request, [(dict(zip(names, c, strict=True)), 0.0) for c in combos])
    if grid is None:
        return None
    fixed = {k: v for k, v in args.items() if k not in grid.names and k != "relation"}
    return grid._replace(tool=call.name, fixed=fixed)


def _all_numbers(values: list[Any]) -> bool:
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values)


def _as_point(
    window: Sequence[float], names: Sequence[str], values: Mapping[str, set[float]]
) -> tuple[float, ...] | None:
    """``window`` as one value of each argument (in ``names`` order), in any order; else None."""
    for order in itertools.permutations(window):
        if all(v in values[name] for v, name in zip(order, names, strict=True)):
            return tuple(order)
    return None


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def described_call(text: str, parameters: Mapping[str, Collection[str]]) -> ToolCall | None:
    """The call whose arguments ``text`` writes out as a JSON object without making it.

    ``parameters`` maps each tool to its parameter names; an object whose keys are all
    parameters of one tool is taken as that tool's arguments (the one named in the text first).
    """
    values, _ = _bare_json_values(text)
    objects = [v for v in values if isinstance(v, dict) and v and not _is_call_value(v)]
    fits = [
        ToolCall(t, o) for o in objects for t, names in parameters.items() if o.keys() <= set(names)
    ]
    named = [c for c in fits if c.name in text]
    return next(iter(named or fits), None)


@dataclass(frozen=True)
class AnswerCheck:
    """How an answer's numbers relate to what the tools returned."""

    quoted: list[str]
    """Numbers in the answer that are values a tool returned."""
    unsupported: list[str]
    """Numbers in the answer that no tool returned and that were not given to the model."""
    misplaced: list[str] = field(default_factory=list)
    """Returned values the answer puts beside the arguments of another task (see `misplaced`)."""
    extremes: list[str] = field(default_factory=list)
    """Results the answer calls the largest or smallest wrongly (see `wrong_extremes`)."""
    not_run: list[str] = field(default_factory=list)
    """Numbers in the answer that a call had as an argument but no task that ran had."""
    unanswered: list[str] = field(default_factory=list)
    """The extreme the request asks for, when the answer never says it (`unanswered_extreme`)."""
    crossings: list[str] = field(default_factory=list)
    """Wrong points named for the request's threshold (see `wrong_crossings`)."""
    left_out: list[str] = field(default_factory=list)
    """Values the request lists that no task ran with (see `left_out`)."""
    grid: PointsGrid | None = None
    """Every combination ran of values the request gives as points (see `grid_of_points`)."""

    def problems(self, results_expected: bool) -> str | None:
        """What is wrong with the answer, in words for the model; None when nothing is."""
        found = []
        if self.unsupported:
            listed = ", ".join(dict.fromkeys(self.unsupported))
            found.append(f"states {listed}, which no task returned")
        found.extend(
            f"mentions {n}, but no task ran with {n} (call the tool for it, or say that it was "
            "not computed)"
            for n in dict.fromkeys(self.not_run)
        )
        found.extend([*self.misplaced, *self.extremes, *self.unanswered, *self.crossings])
        if self.left_out:
            found.append(
                f"leaves out {', '.join(self.left_out)} of my request: no task ran with them (call "
                "the tool again with every value of the request in one call, or say that they "
                "were not computed)"
            )
        if self.grid:
            found.append(
                f"rests on a call where {self.grid.fact} (for the points alone, send this call: "
                f"{self.grid.call})"
            )
        if results_expected and not self.quoted:
            found.append(QUOTES_NONE)
        return "; ".join(found) or None


def check_answer(
    answer: str,
    returned: Sequence[float],
    given: Sequence[float],
    ensembles: Sequence[Sequence[TaskValue]] = (),
    not_run: Collection[float] = (),
    request: str = "",
    tool: str = "",
) -> AnswerCheck:
    """Sort the numbers written in ``answer``, and check what it says about them.

    A number is quoted when it states a value the tools ``returned`` (exactly, or rounded with
    two or more significant digits); it is fine when the model was ``given`` it (the request,
    the tool arguments and descriptions, the other numbers of the results such as run times;
    its sign aside), when it is a small whole number (a count) or a value rounded to one digit;
    any other number is unsupported. With the tasks of each ensemble, values put beside another
    task's arguments (`misplaced`) and wrong largest or smallest results (`wrong_extremes`) are
    found too; and numbers of ``not_run`` (argument values no task that ran had: values a call
    dropped) that the answer mentions. Against the ``request`` and the last ensemble: the
    extreme it asks for and the answer leaves out (`unanswered_extreme`), and the point
    named for a threshold it asks about (`wrong_crossings`); values the request lists that no task
    ran with (`left_out`); and whether the last ensemble (of ``tool``) is every combination of
    values the request gives as points (`grid_of_points`).
    """
    quoted: list[str] = []
    unsupported: list[str] = []
    dropped: list[str] = []
    for written in numbers_in(answer):
        number = _as_float(written)
        if any(math.isclose(number, v, abs_tol=1e-12) for v in returned):
            quoted.append(written)
        elif number in not_run:
            dropped.append(written)
        elif any(math.isclose(abs(number), abs(g), abs_tol=1e-12) for g in given):
            continue
        elif any(same_number(written, v) for v in returned):
            if significant_digits(written) >= 2:
                quoted.append(written)
        elif not (number == round(number) and abs(number) <= SMALL_INTEGER):
            unsupported.append(written)
    tasks = [t for ensemble in ensembles for t in ensemble]
    last = ensembles[-1] if ensembles else []
    ran = {v for params, _ in tasks for v in params.values()}
    said = {_as_float(n) for n in dropped}  # already a problem: "mentions 20, but no task ran"
    missing = [_plain(v) for v in dict.fromkeys(left_out(request, ran)) if v not in said]
    return AnswerCheck(
        quoted,
        unsupported,
        misplaced(answer, tasks),
        wrong_extremes(answer, ensembles),
        dropped,
        unanswered_extreme(request, answer, last),
        wrong_crossings(request, answer, last),
        missing,
        grid_of_points(request, last, tool),
    )


def read_for_the_user(facts: Sequence[str], check: AnswerCheck, result_texts: Sequence[str]) -> str:
    """The answer the agent gives instead of one that misreads the results.

    ``facts`` read from the results by code (`asked_facts`), flags (that, and what ``check``
    found about the call: `call_flags`), then the results.
    """
    lines = [*facts, "", CORRECTED, *call_flags(check)]
    return "\n".join([*lines, "Results returned by the tools:", *result_texts])


def call_flags(check: AnswerCheck) -> list[str]:
    """Flags for what the tasks that ran leave out of the request, or run beyond it."""
    flags = []
    if check.left_out:
        flags.append(f"{FLAG} no task ran with {', '.join(check.left_out)} of the request.]")
    if check.grid:
        flags.append(f"{FLAG} {check.grid.fact}.]")
    return flags


def results_appendix(check: AnswerCheck, result_texts: Sequence[str]) -> str:
    """What the agent adds to an answer that still fails its check: warnings and the results."""
    lines = ["", ""]
    if check.unsupported:
        listed = ", ".join(dict.fromkeys(check.unsupported))
        lines.append(f"{FLAG} {listed} in this answer {NOT_RETURNED}.]")
    said = [*check.misplaced, *check.extremes, *check.unanswered, *check.crossings]
    lines.extend(f"{FLAG} this answer {m}.]" for m in said)
    lines.extend(f"{FLAG} no task ran with {n}.]" for n in dict.fromkeys(check.not_run))
    lines.extend(call_flags(check))
    if not check.quoted and len(lines) == 2:  # no other warning: say why the results follow
        lines.append(f"{FLAG} this answer {QUOTES_NONE}.]")
    lines.append("Results returned by the tools:")
    lines.extend(result_texts)
    return "\n".join(lines)


def unasked_values(arguments: Mapping[str, Any], request: str) -> dict[str, list[float]]:
    """The numbers of ``arguments`` that ``request`` does not give, per argument.

    A request gives the numbers it writes and those of the ranges it spells out (`ranges_in`);
    ``relation`` is not an argument value.
    """
    written = [_as_float(n) for n in numbers_in(request)]
    given = [*written, *(v for values in ranges_in(request) for v in values)]
    unasked: dict[str, list[float]] = {}
    for name, value in arguments.items():
        if name == "relation":
            continue
        missing = [v for v in numbers_of(value) if not any(math.isclose(v, g) for g in given)]
        if missing:
            unasked[name] = list(dict.fromkeys(missing))
    return unasked


def completed_call(call: ToolCall, request: str) -> tuple[str, list[float]] | None:
    """An argument of ``call`` with some values only of a list ``request`` writes: (name, list).

    None if there is none. A list counts when no value of it is another argument's (it is not
    the parameters of points), and not under one-to-one beside another list (lengthening one
    would break the pairs).
    """
    lists = {
        k: numbers_of(v)
        for k, v in call.arguments.items()
        if k != "relation" and isinstance(v, list) and v and _all_numbers(v)
    }
    paired = call.arguments.get("relation", "one-to-one") != "many-to-many"
    for values in listed_values(request):
        for name, had in lists.items():
            others = {x for k, v in lists.items() if k != name for x in v}
            if paired and any(len(v) > 1 for k, v in lists.items() if k != name):
                continue
            if set(had) < set(values) and not others & set(values):
                return name, values
    return None


@dataclass
class Guard:
    """Holds back, once, an ensemble call that does not fit the request; sent again, it runs."""

    request: str
    ensemble_tools: Collection[str]
    """The tools whose calls fan out into tasks (their schema has ``relation``)."""
    held: set[str] = field(default_factory=set)

    def hold(self, call: ToolCall) -> str | None:
        """Why ``call`` is held back, for the model; None to run it.

        Held: every combination of values the request gives as points (`planned_grid`), numbers
        the request does not give (`unasked_values`: made up, or a list expanded wrongly), and
        some values only of a list the request writes (`completed_call`: a list cut short).
        """
        tool = call.name.removesuffix(SUBMIT_SUFFIX)
        if tool not in self.ensemble_tools or call_key(call) in self.held:
            return None
        message = None
        if grid := planned_grid(call, self.request):
            message = HELD_GRID.format(
                tasks=grid.tasks, count=len(grid.points), points=grid.shown, call=grid.call
            )
        elif unasked := unasked_values(call.arguments, self.request):
            listed = "; ".join(f"{k}={', '.join(map(_plain, v))}" for k, v in unasked.items())
            message = HELD_UNASKED.format(values=listed)
        elif completed := completed_call(call, self.request):
            name, values = completed
            message = HELD_PARTIAL.format(
                name=name,
                listed=", ".join(map(_plain, values)),
                had=", ".join(map(_plain, numbers_of(call.arguments[name]))),
                call=json.dumps({"name": call.name, "arguments": {**call.arguments, name: values}}),
            )
        if message:
            self.held.add(call_key(call))
        return message


# ---------------------------------------------------------------------------------------------
# I/O: the chat endpoint, the MCP session and the loop.
# ---------------------------------------------------------------------------------------------


@dataclass
class Endpoint:
    """Where and how to reach the chat-completions API."""

    base_url: str
    api_key: str | None
    model: str | None


class EndpointMissing(Exception):
    """No chat endpoint is configured in the environment."""


def endpoint_from_env(env: dict[str, str]) -> Endpoint:
    """Read ``OPENAI_BASE_URL``, ``OPENAI_API_KEY`` and ``OPENAI_MODEL``."""
    base_url = env.get("OPENAI_BASE_URL") or (OPENAI_URL if env.get("OPENAI_API_KEY") else "")
    if not base_url:
        raise EndpointMissing(
            "no chat endpoint configured: set OPENAI_BASE_URL (an OpenAI-compatible /v1 URL, e.g. "
            "http://127.0.0.1:8080/v1 for llama-server) and OPENAI_API_KEY (any string for a local "
            "server); OPENAI_MODEL is optional when the endpoint serves one model"
        )
    return Endpoint(base_url.rstrip("/"), env.get("OPENAI_API_KEY"), env.get("OPENAI_MODEL"))


@dataclass
class Record:
    """What happened in one run, for the transcript and for ``--record``."""

    request: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    retries: int = 0
    answer: str | None = None
    answer_problems: list[str] = field(default_factory=list)
    """What the answer check found, each time it found something (see `check_answer`)."""
    results_appended: bool = False
    """Whether the results were added to an answer that failed its check twice."""


@dataclass
class Evidence:
    """What an answer may rest on: the values the tools returned and the numbers the model had."""

    request: str
    given: list[float]
    returned: list[float] = field(default_factory=list)
    ensembles: list[list[TaskValue]] = field(default_factory=list)
    """The task values of each ensemble result."""
    texts: list[str] = field(default_factory=list)
    """The text of each successful result, for the appendix."""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """Every call run (name, arguments), refused or not."""
    ensemble_tools: set[str] = field(default_factory=set)
    """The tools that returned an ensemble's tasks."""
    last_ensemble_tool: str = ""
    """The tool that returned the last ensemble."""

    def not_run(self) -> set[float]:
        """Argument values of calls to ensemble tools that no task that ran had (dropped)."""
        asked = {
            n for name, args in self.calls if name in self.ensemble_tools for n in numbers_of(args)
        }
        ran = {v for tasks in self.ensembles for params, _ in tasks for v in params.values()}
        return asked - ran

    def check(self, answer: str) -> tuple[AnswerCheck, str | None]:
        """Check ``answer``; also say what is wrong with it, if anything.

        Without results (no tool returned a value) there is nothing to check against: an
        answer that needed no tool may hold numbers of its own.
        """
        check = check_answer(
            answer,
            self.returned,
            self.given,
            self.ensembles,
            self.not_run(),
            self.request,
            self.last_ensemble_tool,
        )
        return check, check.problems(results_expected=True) if self.returned else None

    def before_any_call(self, answer: str, parameters: Mapping[str, Collection[str]]) -> str | None:
        """What is wrong with an answer given before any tool ran, in words; None if nothing.

        It may not write out a tool's arguments instead of calling it. (Numbers of its own are
        flagged when the answer is given, not asked about: asked, a small model makes up a call
        for a question no tool answers, such as 300 K in Celsius.)
        """
        if self.calls:
            return None
        if described := described_call(answer, parameters):
            return f"writes out arguments for {described.name} but does not call it"
        return None


class ChatModel(Protocol):
    """What the loop needs from a model: one assistant message per conversation state."""

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> dict[str, Any]: ...


class Chat:
    """A minimal chat-completions client over httpx2 (the HTTP library the MCP SDK ships).

    ``temperature`` 0 is greedy decoding; a ``seed``, when set, is sent with every request (an
    endpoint that honours it then repeats its samples).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        timeout_s: float,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> None:
        import httpx2

        self.temperature = temperature
        self.seed = seed

        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
        self._http = httpx2.AsyncClient(
            base_url=endpoint.base_url, headers=headers, timeout=timeout_s
        )
        self._model = endpoint.model

    async def __aenter__(self) -> Chat:
        if self._model is None:
            self._model = await self._only_model()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def _only_model(self) -> str:
        response = await self._http.get("/models")
        response.raise_for_status()
        ids = [m.get("id") for m in response.json().get("data", [])]
        if len(ids) != 1 or not isinstance(ids[0], str):
            raise EndpointMissing(f"the endpoint serves {len(ids)} models; set OPENAI_MODEL to one")
        return ids[0]

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Return the assistant message for ``messages`` (greedy decoding at temperature 0)."""
        payload: dict[str, Any] = {
            "model": self._model,
            "messages": messages,
            "tools": tools,
            "temperature": self.temperature,
            "max_tokens": MAX_REPLY_TOKENS,
        }
        if self.seed is not None:
            payload["seed"] = self.seed
        response = await self._http.post("/chat/completions", json=payload)
        if response.is_error:
            raise RuntimeError(
                f"chat endpoint answered {response.status_code}: {response.text[:500]}"
            )
        message: dict[str, Any] = response.json()["choices"][0]["message"]
        return message


async def run_agent(
    request: str,
    server: Any,
    chat: ChatModel,
    out: TextIO,
    max_retries: int = 3,
    max_rounds: int = 8,
    token: str | None = None,
    only: Sequence[str] | None = None,
) -> Record:
    """Let the model answer ``request`` with the server's tools; print a transcript to ``out``.

    ``server`` is the server's URL (``token``, if given, is sent as its bearer token) or anything
    else ``mcp.Client`` accepts, such as a server object in tests. ``only`` limits the tools
    offered to the model to those names.
    """
    async with _mcp_session(server, token) as session:
        tools = (await session.list_tools()).tools
        missing = sorted(set(only or ()) - {t.name for t in tools})
        if not missing:
            offered = [t for t in tools if not only or t.name in only]
            return await _converse(request, session, offered, chat, out, max_retries, max_rounds)
    # Raised outside the session: inside it the SDK's task group would wrap it in a group.
    known = ", ".join(t.name for t in tools)
    raise ValueError(f"--tools names {missing} but the server has only: {known}")


async def _converse(
    request: str,
    session: Any,
    tools: list[Any],
    chat: ChatModel,
    out: TextIO,
    max_retries: int,
    max_rounds: int,
) -> Record:
    record = Record(request=request)
    print(f"USER: {request}", file=out)
    names = [t.name for t in tools]
    schemas = [tool_to_openai(t.name, t.description, t.input_schema) for t in tools]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": request},
    ]
    texts = [request, *(t.description or "" for t in tools)]
    evidence = Evidence(request, [_as_float(n) for text in texts for n in numbers_in(text)])
    parameters = {t.name: list((t.input_schema or {}).get("properties", {})) for t in tools}
    done: set[str] = set()  # keys of calls that succeeded, so repeats are not run again
    guard = Guard(request, [t for t, names in parameters.items() if "relation" in names])
    last_failed = asked_for_answer = asked_for_call = False
    checked: str | None = None  # an answer that failed its check once; the model was asked again
    for turn in range(max_rounds):
        reply = await chat.complete(messages, schemas)
        parsed = parse_reply(reply, names)
        if not parsed and asked_for_call and not evidence.calls:
            # Asked for the call, the model wrote out its arguments again: that is the call.
            described = described_call(reply.get("content") or "", parameters)
            parsed = [described] if described else []
        entry, parsed = history_entry(reply, parsed, turn)
        messages.append(entry)
        if not parsed:
            if last_failed and not evidence.texts and record.retries < max_retries:
                record.retries += 1
                print(f"NUDGE: {NUDGE_AFTER_ERROR}", file=out)
                messages.append({"role": "user", "content": NUDGE_AFTER_ERROR})
                continue
            answer = (reply.get("content") or "").strip()
            if not answer and not asked_for_answer:  # small models sometimes reply with nothing
                asked_for_answer = True
                print(f"NUDGE: {ASK_FOR_ANSWER}", file=out)
                messages.append({"role": "user", "content": ASK_FOR_ANSWER})
                continue
            no_call = evidence.before_any_call(answer, parameters)
            if no_call and not asked_for_call and turn + 1 < max_rounds:
                asked_for_call = True
                record.answer_problems.append(no_call)
                ask = NO_TOOL_YET.format(problem=no_call)
                print(f"ANSWER (not given): {answer}\nCHECK: {ask}", file=out)
                messages.append({"role": "user", "content": ask})
                continue
            _, problems = evidence.check(answer)
            if problems and answer and checked is None and turn + 1 < max_rounds:
                checked = answer
                record.answer_problems.append(problems)
                fix = FIX_ANSWER.format(problems=problems)
                print(f"ANSWER (not given): {answer}\nCHECK: {fix}", file=out)
                messages.pop()  # the draft goes: a small model shown it tends to repeat it
                messages.append({"role": "user", "content": fix})
                continue
            return _give(answer, evidence, record, out, names)
        form = "native" if reply.get("tool_calls") else "text"
        outcomes = [
            await _run_one(session, item, form, done, guard, record, evidence, out)
            for item in parsed
        ]
        messages.extend(_feedback(parsed, outcomes))
        last_failed = not all(ok for ok, _ in outcomes)
        if last_failed:
            if record.retries >= max_retries:
                print(f"GAVE UP: still failing after {max_retries} retries", file=out)
                return record
            record.retries += 1
    if checked is not None:  # asked to fix its answer, the model never answered again
        return _give(checked, evidence, record, out, names)
    print(f"GAVE UP: no answer after {max_rounds} model turns", file=out)
    return record


def _give(
    answer: str, evidence: Evidence, record: Record, out: TextIO, tools: Collection[str]
) -> Record:
    """Give ``answer``; add the results when it still fails its check.

    Before any call, numbers of the model's own are flagged, and so is an answer that names one
    of the ``tools`` (it tends to describe a call it did not make).

    An answer that still fails its check to a question the results settle (the largest or
    smallest result, where a threshold is crossed) is not given: the agent reads the answer from
    the results itself (`asked_facts`).
    """
    check, problems = evidence.check(answer)
    last = evidence.ensembles[-1] if evidence.ensembles else []
    facts = asked_facts(evidence.request, last) if problems else []
    if problems:
        record.answer_problems.append(problems)
        record.results_appended = True
        if facts:
            answer = read_for_the_user(facts, check, evidence.texts)
        else:
            answer = (answer + results_appendix(check, evidence.texts)).strip()
    elif evidence.calls and not evidence.texts:  # calls were made, none succeeded
        answer = f"{answer}\n\n{NO_RESULT}".strip()
    elif not evidence.calls and (unsupported := check.unsupported):
        numbers = ", ".join(dict.fromkeys(unsupported))
        answer = f"{answer}\n\n{NO_TOOL_RAN.format(numbers=numbers)}".strip()
    elif not evidence.calls and any(re.search(rf"\b{re.escape(t)}\b", answer) for t in tools):
        answer = f"{answer}\n\n{NO_CALL_MADE}".strip()
    record.answer = answer
    print(f"ANSWER: {record.answer}", file=out)
    return record


def _feedback(parsed: list[Parsed], outcomes: list[tuple[bool, str]]) -> list[dict[str, Any]]:
    """Tool messages for calls with an id; one user message for the rest."""
    messages: list[dict[str, Any]] = []
    loose: list[str] = []
    for item, (_, text) in zip(parsed, outcomes, strict=True):
        if item.call_id is not None:
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": text})
        else:
            loose.append(text)
    if loose:
        messages.append({"role": "user", "content": "\n\n".join(loose)})
    return messages


@contextlib.asynccontextmanager
async def _mcp_session(server: Any, token: str | None) -> AsyncIterator[Any]:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    if not isinstance(server, str):
        async with Client(server) as session:
            yield session
        return
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = httpx2.Timeout(30, read=300)  # an ensemble call may take minutes
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
        Client(streamable_http_client(server, http_client=http)) as session,
    ):
        yield session


def history_entry(
    reply: dict[str, Any], parsed: list[Parsed], turn: int
) -> tuple[dict[str, Any], list[Parsed]]:
    """Return the assistant message to keep in the conversation, and the calls with their ids.

    Calls the model wrote as text are kept as if it had used ``tool_calls`` (with made-up ids), so
    the results go back as ``tool`` messages: chat templates render those in the format the model
    was trained on, instead of as a user message it may misread. Text with a broken call stays text.
    """
    if reply.get("tool_calls"):
        entry = {"role": "assistant", "content": reply.get("content") or ""}
        return entry | {"tool_calls": reply["tool_calls"]}, parsed
    if not parsed or not all(isinstance(p, ToolCall) for p in parsed):
        return {"role": "assistant", "content": reply.get("content") or ""}, parsed
    calls = [
        ToolCall(p.name, p.arguments, f"call_{turn}_{i}")
        for i, p in enumerate(parsed)
        if isinstance(p, ToolCall)
    ]
    native = [
        {
            "id": c.call_id,
            "type": "function",
            "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
        }
        for c in calls
    ]
    return {"role": "assistant", "content": "", "tool_calls": native}, list(calls)


async def _run_one(
    session: Any,
    item: Parsed,
    form: str,
    done: set[str],
    guard: Guard,
    record: Record,
    evidence: Evidence,
    out: TextIO,
) -> tuple[bool, str]:
    """Run one parsed call; return (not failed, text for the model).

    A call held back (`Guard`) has not failed: the model may answer in words instead.
    """
    if isinstance(item, CallProblem):
        record.problems.append(item.message)
        record.calls.append({"name": None, "status": "not run", "problem": item.message})
        print(f"BAD CALL: {item.message}", file=out)
        return False, f"Your tool call was not run: {item.message}"
    # The submit form of a call that already returned its results would only start it again.
    direct = ToolCall(item.name.removesuffix(SUBMIT_SUFFIX), item.arguments)
    if call_key(item) in done or call_key(direct) in done:
        print(f"REPEAT (not run): {item.name}({json.dumps(item.arguments)})", file=out)
        return True, REPEATED_CALL
    if message := guard.hold(item):
        record.calls.append({**_call_entry(item, "not run", form), "problem": message})
        print(f"HELD (not run): {item.name}({json.dumps(item.arguments)})", file=out)
        return True, message
    print(f"CALL: {item.name}({json.dumps(item.arguments)})", file=out)
    result = await session.call_tool(item.name, item.arguments)
    texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
    text = render_result(texts, result.structured_content, limit=4000)
    status = "error" if result.is_error else "ok"
    call = _call_entry(item, status, form)
    record.calls.append(call)
    print(f"RESULT ({status}): {shorten(text, 600)}", file=out)
    evidence.given.extend(numbers_of(item.arguments))
    evidence.calls.append((item.name, item.arguments))
    if result.is_error:
        still = f"\n{STILL_STANDS}" if evidence.texts else ""
        return False, f"Error of {item.name}:\n{text}{still}"
    structured = result.structured_content
    if isinstance(structured, dict) and isinstance(structured.get("tasks"), list):
        call["tasks"] = [
            {k: t[k] for k in ("params", "status", "result") if k in t}
            for t in structured["tasks"][:MAX_RECORDED_TASKS]
        ]
    values = returned_values(structured)
    evidence.returned.extend(values)
    evidence.given.extend(other_numbers(text, values))
    if per_task := task_values(structured):
        evidence.ensembles.append(per_task)
        evidence.ensemble_tools.add(item.name)
        evidence.last_ensemble_tool = item.name
    evidence.texts.append(shorten(text, 4000))
    call["text"] = text
    done.add(call_key(item))
    return True, f"Result of {item.name}:\n{text}"


def _call_entry(item: ToolCall, status: str, form: str) -> dict[str, Any]:
    return {"name": item.name, "arguments": item.arguments, "status": status, "form": form}


def _describe(exc: BaseException) -> str:
    inner = getattr(exc, "exceptions", None)  # an exception group (builtin only from 3.11)
    if isinstance(inner, tuple) and inner:
        return "; ".join(_describe(e) for e in inner)
    return f"{type(exc).__name__}: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    import anyio

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("request", help="what to ask the model, in plain words")
    parser.add_argument(
        "--url",
        default=os.environ.get("ENSEMBLE_MCP_URL", DEFAULT_MCP_URL),
        help="MCP server URL (env ENSEMBLE_MCP_URL; default %(default)s)",
    )
    parser.add_argument("--max-retries", type=int, default=3, help="retries after failed calls")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model reply")
    parser.add_argument("--tools", help="comma-separated tool names to offer (default: all)")
    parser.add_argument("--record", help="write a JSON record of the run to this file")
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)"
    )
    args = parser.parse_args(argv)
    try:
        endpoint = endpoint_from_env(dict(os.environ))
    except EndpointMissing as exc:
        print(f"agent.py: {exc}", file=sys.stderr)
        return 2

    token = os.environ.get("ENSEMBLE_MCP_TOKEN") or None

    async def go() -> Record:
        async with Chat(endpoint, args.timeout, args.temperature) as chat:
            return await run_agent(
                args.request,
                args.url,
                chat,
                sys.stdout,
                args.max_retries,
                token=token,
                only=args.tools.split(",") if args.tools else None,
            )

    try:
        record = anyio.run(go)
    except EndpointMissing as exc:
        print(f"agent.py: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - top level: report instead of a traceback
        print(
            f"agent.py: {_describe(exc)} (MCP server {args.url}, chat endpoint "
            f"{endpoint.base_url})",
            file=sys.stderr,
        )
        return 1
    if args.record:
        with open(args.record, "w", encoding="utf-8") as fh:
            json.dump(record.__dict__, fh, indent=2)
    return 0 if record.answer is not None else 1


if __name__ == "__main__":
    sys.exit(main())
