"""Run the trial requests through the example agent against an OpenAI-compatible endpoint.

::

    export OPENAI_BASE_URL=http://127.0.0.1:8080/v1   # e.g. llama-server (see ../README.md)
    python examples/agents/trials/run_trials.py                        # greedy, once each
    python examples/agents/trials/run_trials.py --temperature 0.7 --runs 5 --out runs.jsonl

Each request of ``requests.json`` goes to ``agent.run_agent`` with the example server
(``../server.py``) in this process, all its tools offered. Every run is judged by ``scoring.py``
against the true flame speeds; the script prints one line per run and then, per kind of request:
first call right, right after an error, silent wrong (wrong tasks or a wrong answer presented as
right), answer right, and whether the answer quotes the results. Without ``OPENAI_BASE_URL`` (or
``OPENAI_API_KEY`` for api.openai.com) it says what to set and skips (exit status 0).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent))
sys.path.insert(0, str(_HERE))

import agent  # noqa: E402
import scoring  # noqa: E402

_STATE = tempfile.TemporaryDirectory(prefix="ensemble-trials-")  # removed at exit


def load_requests(path: Path, kinds: Sequence[str], ids: Sequence[str]) -> list[dict[str, Any]]:
    """The requests of ``path``, only those of ``kinds`` / with ``ids`` when given."""
    requests: list[dict[str, Any]] = json.loads(path.read_text())["requests"]
    return [
        r for r in requests if (not kinds or r["kind"] in kinds) and (not ids or r["id"] in ids)
    ]


async def run_all(
    args: argparse.Namespace, endpoint: agent.Endpoint, out: TextIO | None = None
) -> int:
    """Run every selected request ``args.runs`` times; print the verdicts and the table.

    With ``out``, one JSON line per run (request, verdict, record, transcript) is written to it.
    """
    flame_speed, server = _example_server()
    from ensemble_mcp.tools import spec_from_function

    tool = spec_from_function(flame_speed)
    requests = load_requests(args.requests, _split(args.kinds), _split(args.ids))
    server.start()
    try:
        tools = await _tool_texts(server)
        given = [float(n.replace(",", "")) for t in tools for n in agent.numbers_in(t)]
        tallies: dict[str, scoring.Tally] = {}
        async with agent.Chat(endpoint, args.timeout, args.temperature) as chat:
            for request in requests:
                for run in range(args.runs):
                    chat.seed = _seed(args.seed, request["id"], run)
                    transcript = io.StringIO()
                    started = time.monotonic()
                    record = await agent.run_agent(
                        request["request"], server, chat, transcript, only=args.tools
                    )
                    seconds = time.monotonic() - started
                    verdict = scoring.score(
                        request, record.__dict__, tool, _truth(flame_speed), given
                    )
                    tallies.setdefault(request["kind"], scoring.Tally()).add(verdict)
                    print(_line(request["id"], run, verdict, seconds), flush=True)
                    if args.verbose:
                        print(transcript.getvalue(), flush=True)
                    if out is not None:
                        row = {
                            "id": request["id"],
                            "kind": request["kind"],
                            "run": run,
                            "temperature": args.temperature,
                            "seconds": round(seconds, 1),
                            "score": {**verdict.__dict__, "silent_wrong": verdict.silent_wrong},
                            "record": record.__dict__,
                            "transcript": transcript.getvalue(),
                        }
                        out.write(json.dumps(row) + "\n")
                        out.flush()
    finally:
        server.shutdown()
    print(f"\ntemperature {args.temperature}, {args.runs} run(s) per request")
    print(scoring.table(tallies))
    return 0


def rescore(args: argparse.Namespace) -> int:
    """Judge the runs saved in ``args.rescore`` again (no model): the table, per temperature."""
    import anyio

    from ensemble_mcp.tools import spec_from_function

    flame_speed, server = _example_server()
    tool = spec_from_function(flame_speed)
    requests = {r["id"]: r for r in load_requests(args.requests, (), ())}
    given = [
        float(n.replace(",", ""))
        for t in anyio.run(_tool_texts, server)
        for n in agent.numbers_in(t)
    ]
    by_temperature: dict[float, dict[str, scoring.Tally]] = {}
    with open(args.rescore, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            request = requests[row["id"]]
            if _split(args.kinds) and request["kind"] not in _split(args.kinds):
                continue
            verdict = scoring.score(request, row["record"], tool, _truth(flame_speed), given)
            tallies = by_temperature.setdefault(row["temperature"], {})
            tallies.setdefault(request["kind"], scoring.Tally()).add(verdict)
            if args.verbose:
                print(_line(row["id"], row["run"], verdict, row["seconds"]))
    for temperature, tallies in sorted(by_temperature.items()):
        print(f"\ntemperature {temperature} ({args.rescore})")
        print(scoring.table(dict(sorted(tallies.items(), key=lambda kv: _order(kv[0])))))
    return 0


def _seed(base: int | None, request_id: str, run: int) -> int | None:
    """A seed of its own per request and run, derived from ``base``.

    One seed for all requests correlates their samples: the replies start alike, so the same
    draws take the same odd turn in every request.
    """
    if base is None:
        return None
    return (base + zlib.crc32(request_id.encode()) + run) % 2**31


def _example_server() -> tuple[Any, Any]:
    """The example server (``../server.py``, in this process) and its ``flame_speed``.

    Its journal goes to a temporary state directory of this run, unless $ENSEMBLE_MCP_STATE_DIR
    names one: ``server.py`` started by hand holds the default one.
    """
    from ensemble_mcp.journal import STATE_DIR_ENV

    if STATE_DIR_ENV not in os.environ:
        os.environ[STATE_DIR_ENV] = _STATE.name
    from server import flame_speed, server

    return flame_speed, server


def _order(kind: str) -> int:
    kinds = [r["kind"] for r in load_requests(_HERE / "requests.json", (), ())]
    return kinds.index(kind) if kind in kinds else len(kinds)


async def _tool_texts(server: Any) -> list[str]:
    from mcp import Client

    async with Client(server) as session:
        return [t.description or "" for t in (await session.list_tools()).tools]


def _truth(fn: Any) -> scoring.Truth:
    def truth(params: Any) -> float:
        return float(fn(**params))

    return truth


def _line(request_id: str, run: int, v: scoring.RunScore, seconds: float) -> str:
    flags = {
        "first": v.first_right,
        "after-error": v.right_after_error,
        "tasks": v.tasks_right,
        "answer": v.answer_right,
        "quotes": v.quotes,
    }
    shown = " ".join(f"{k}={'-' if f is None else 'YN'[not f]}" for k, f in flags.items())
    silent = "  SILENT WRONG" if v.silent_wrong else ""
    return f"{request_id:<16} #{run} {shown} ({seconds:.0f} s){silent}"


def _split(text: str | None) -> list[str]:
    return [t for t in (text or "").split(",") if t]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    import anyio

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=Path, default=_HERE / "requests.json")
    parser.add_argument("--kinds", help="comma-separated kinds to run (default: all)")
    parser.add_argument("--ids", help="comma-separated request ids to run (default: all)")
    parser.add_argument("--runs", type=int, default=1, help="runs per request (default 1)")
    parser.add_argument("--temperature", type=float, default=0.0, help="default 0: greedy")
    parser.add_argument(
        "--seed", type=int, help="base seed; each request and run gets its own, derived from it"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per model reply")
    parser.add_argument("--tools", type=lambda s: s.split(","), help="offer only these tools")
    parser.add_argument("--out", help="append one JSON line per run (record and verdict)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each transcript")
    parser.add_argument("--rescore", help="judge the runs of this --out file again; no model")
    args = parser.parse_args(argv)
    if args.rescore:
        return rescore(args)
    try:
        endpoint = agent.endpoint_from_env(dict(os.environ))
    except agent.EndpointMissing as exc:
        print(f"run_trials.py: skipped: {exc}", file=sys.stderr)
        return 0
    if not args.out:
        return anyio.run(run_all, args, endpoint)
    with open(args.out, "a", encoding="utf-8") as out:
        return anyio.run(run_all, args, endpoint, out)


if __name__ == "__main__":
    sys.exit(main())
