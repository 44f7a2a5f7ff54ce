"""The example agent's tool-call parsing and retry loop, without a model.

No LLM can run in the test suite, so the model is replaced by a scripted `ChatModel` (the one
boundary faked here); the MCP side is a real in-process server reached through `mcp.Client`.
"""

import importlib.util
import io
import json
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from tests.ensemble_mcp.conftest_mcp import build_server

_PATH = Path(__file__).resolve().parents[1] / "examples" / "agents" / "agent.py"
_SPEC = importlib.util.spec_from_file_location("example_agent", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
agent = importlib.util.module_from_spec(_SPEC)
sys.modules["example_agent"] = agent
_SPEC.loader.exec_module(agent)

ToolCall = agent.ToolCall
CallProblem = agent.CallProblem
TOOLS = ["flame_speed", "ensemble_status"]
ARGS = {"pressure": [1, 2, 5], "temperature": [300, 400, 500]}


def test_fenced_json_block_is_one_call() -> None:
    text = f'```json\n{{"name": "flame_speed", "arguments": {json.dumps(ARGS)}}}\n```'
    assert agent.parse_text_tool_calls(text, TOOLS) == [ToolCall("flame_speed", ARGS)]


def test_fence_without_language_tag_is_one_call() -> None:
    text = f'```\n{{"name": "flame_speed", "arguments": {json.dumps(ARGS)}}}\n```'
    assert agent.parse_text_tool_calls(text, TOOLS) == [ToolCall("flame_speed", ARGS)]


def test_bare_json_object_is_one_call() -> None:
    text = json.dumps({"name": "flame_speed", "arguments": ARGS})
    assert agent.parse_text_tool_calls(text, TOOLS) == [ToolCall("flame_speed", ARGS)]


def test_call_inside_prose_is_found() -> None:
    call = json.dumps({"name": "flame_speed", "arguments": ARGS})
    text = f"Sure! I will compute all three points at once:\n{call}\nThe results will follow."
    assert agent.parse_text_tool_calls(text, TOOLS) == [ToolCall("flame_speed", ARGS)]


def test_fenced_call_inside_prose_is_found() -> None:
    call = json.dumps({"name": "flame_speed", "arguments": ARGS}, indent=2)
    text = f"To answer, I call the tool.\n\n```json\n{call}\n```\n\nWait for the result."
    assert agent.parse_text_tool_calls(text, TOOLS) == [ToolCall("flame_speed", ARGS)]


def test_the_tool_name_written_under_function_is_taken_as_the_name() -> None:
    text = "```json\n" + json.dumps({"function": "flame_speed", "arguments": ARGS}) + "\n```"
    assert agent.parse_text_tool_calls(text, TOOLS) == [ToolCall("flame_speed", ARGS)]


def test_an_object_keyed_by_a_tools_name_holds_its_arguments() -> None:
    text = "```json\n" + json.dumps({"flame_speed": ARGS}, indent=2) + "\n```"
    assert agent.parse_text_tool_calls(text, TOOLS) == [ToolCall("flame_speed", ARGS)]
    table = json.dumps({"flame_speeds": [0.38, 0.27]})  # not a tool's name: an answer
    assert agent.parse_text_tool_calls(table, TOOLS) == []


def test_parameters_is_an_alias_of_arguments() -> None:
    text = json.dumps({"name": "flame_speed", "parameters": ARGS})
    assert agent.parse_text_tool_calls(text, TOOLS) == [ToolCall("flame_speed", ARGS)]


def test_arguments_given_as_a_json_string_are_decoded() -> None:
    text = json.dumps({"name": "flame_speed", "arguments": json.dumps(ARGS)})
    assert agent.parse_text_tool_calls(text, TOOLS) == [ToolCall("flame_speed", ARGS)]


def test_qwen_tool_call_tags_are_understood() -> None:
    text = f'<tool_call>\n{{"name": "flame_speed", "arguments": {json.dumps(ARGS)}}}\n</tool_call>'
    assert agent.parse_text_tool_calls(text, TOOLS) == [ToolCall("flame_speed", ARGS)]


def test_malformed_fenced_call_is_a_problem_that_says_how_to_write_it() -> None:
    text = '```json\n{"name": "flame_speed", "arguments": {"pressure": [1, 2]\n```'
    [problem] = agent.parse_text_tool_calls(text, TOOLS)
    assert isinstance(problem, CallProblem)
    assert "not valid JSON" in problem.message
    assert '{"name": "<tool>", "arguments": {...}}' in problem.message


def test_malformed_bare_call_is_a_problem() -> None:
    text = "Calling: {'name': 'flame_speed', 'arguments': {'pressure': [1]}}"
    [problem] = agent.parse_text_tool_calls(text, TOOLS)
    assert isinstance(problem, CallProblem)
    assert "not valid JSON" in problem.message


def test_unknown_tool_is_a_problem_listing_the_tools() -> None:
    text = json.dumps({"name": "flamespeed", "arguments": ARGS})
    [problem] = agent.parse_text_tool_calls(text, TOOLS)
    assert problem == CallProblem(
        "unknown tool 'flamespeed'; the available tools are: flame_speed, ensemble_status"
    )


def test_arguments_that_are_not_an_object_are_a_problem() -> None:
    text = json.dumps({"name": "flame_speed", "arguments": [1, 2]})
    [problem] = agent.parse_text_tool_calls(text, TOOLS)
    assert problem == CallProblem(
        "\"arguments\" of 'flame_speed' must be a JSON object, got [1, 2]"
    )


def test_two_fenced_blocks_are_two_calls_in_order() -> None:
    first = json.dumps(
        {"name": "flame_speed", "arguments": {"pressure": [1], "temperature": [300]}}
    )
    second = json.dumps({"name": "ensemble_status", "arguments": {}})
    text = f"```json\n{first}\n```\nand then\n```json\n{second}\n```"
    assert agent.parse_text_tool_calls(text, TOOLS) == [
        ToolCall("flame_speed", {"pressure": [1], "temperature": [300]}),
        ToolCall("ensemble_status", {}),
    ]


def test_a_json_list_of_calls_is_several_calls() -> None:
    text = json.dumps(
        [
            {"name": "flame_speed", "arguments": {"pressure": [1], "temperature": [300]}},
            {"name": "flame_speed", "arguments": {"pressure": [2], "temperature": [400]}},
        ]
    )
    calls = agent.parse_text_tool_calls(text, TOOLS)
    assert [c.arguments["pressure"] for c in calls] == [[1], [2]]


def test_plain_answer_has_no_calls() -> None:
    text = "The flame speeds are 0.38, 0.41 and 0.47 m/s at 1, 2 and 5 atm."
    assert agent.parse_text_tool_calls(text, TOOLS) == []


def test_json_that_is_not_a_call_is_ignored() -> None:
    text = 'Results:\n```json\n{"result": [0.38, 0.41]}\n```\nand bare {"pressure": [1, 2]}.'
    assert agent.parse_text_tool_calls(text, TOOLS) == []


def test_native_tool_calls_are_parsed_with_their_ids() -> None:
    tool_calls = [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "flame_speed", "arguments": json.dumps(ARGS)},
        },
        {
            "id": "c2",
            "type": "function",
            "function": {"name": "ensemble_status", "arguments": "{}"},
        },
    ]
    assert agent.parse_native_tool_calls(tool_calls, TOOLS) == [
        ToolCall("flame_speed", ARGS, "c1"),
        ToolCall("ensemble_status", {}, "c2"),
    ]


def test_native_call_with_malformed_arguments_is_a_problem_keeping_its_id() -> None:
    tool_calls = [{"id": "c9", "function": {"name": "flame_speed", "arguments": '{"pressure": ['}}]
    [problem] = agent.parse_native_tool_calls(tool_calls, TOOLS)
    assert isinstance(problem, CallProblem)
    assert problem.call_id == "c9"
    assert "the arguments of 'flame_speed' are not valid JSON" in problem.message


def test_reply_with_native_calls_ignores_its_text() -> None:
    message = {
        "content": json.dumps({"name": "ensemble_status", "arguments": {}}),
        "tool_calls": [{"id": "c1", "function": {"name": "flame_speed", "arguments": "{}"}}],
    }
    assert agent.parse_reply(message, TOOLS) == [ToolCall("flame_speed", {}, "c1")]


def test_reply_without_content_or_calls_has_no_calls() -> None:
    assert agent.parse_reply({"role": "assistant", "content": None}, TOOLS) == []


def test_text_calls_are_kept_in_history_as_native_calls_with_made_up_ids() -> None:
    reply = {
        "role": "assistant",
        "content": "Calling it:\n"
        + json.dumps(
            [
                {"name": "flame_speed", "arguments": {"pressure": [1]}},
                {"name": "ensemble_status", "arguments": {}},
            ]
        ),
    }
    entry, calls = agent.history_entry(reply, agent.parse_reply(reply, TOOLS), turn=3)
    assert [c.call_id for c in calls] == ["call_3_0", "call_3_1"]
    assert entry == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_3_0",
                "type": "function",
                "function": {"name": "flame_speed", "arguments": '{"pressure": [1]}'},
            },
            {
                "id": "call_3_1",
                "type": "function",
                "function": {"name": "ensemble_status", "arguments": "{}"},
            },
        ],
    }


def test_text_with_a_broken_call_stays_text_in_history() -> None:
    reply = {"role": "assistant", "content": '{"name": "nope", "arguments": {}}'}
    parsed = agent.parse_reply(reply, TOOLS)
    entry, calls = agent.history_entry(reply, parsed, turn=0)
    assert entry == {"role": "assistant", "content": reply["content"]}
    assert calls == parsed


def test_mcp_tool_becomes_an_openai_function_schema() -> None:
    schema = {"type": "object", "properties": {"p": {"type": "array"}}, "required": ["p"]}
    assert agent.tool_to_openai("flame_speed", "Flame speed.", schema) == {
        "type": "function",
        "function": {"name": "flame_speed", "description": "Flame speed.", "parameters": schema},
    }


def test_long_result_is_cut_with_a_count_of_what_was_left_out() -> None:
    assert agent.shorten("abcdefghij", 4) == "abcd… (6 more characters)"
    assert agent.render_result([], {"result": [1, 2]}, limit=100) == '{"result":[1,2]}'


def test_missing_endpoint_names_the_variables_to_set(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL"):
        monkeypatch.delenv(name, raising=False)
    assert agent.main(["flame speed at 1 atm"]) == 2
    err = capsys.readouterr().err
    assert "OPENAI_BASE_URL" in err and "OPENAI_API_KEY" in err and "OPENAI_MODEL" in err


def test_endpoint_is_read_from_the_environment() -> None:
    endpoint = agent.endpoint_from_env(
        {"OPENAI_BASE_URL": "http://127.0.0.1:8080/v1/", "OPENAI_API_KEY": "k", "OPENAI_MODEL": "m"}
    )
    assert (endpoint.base_url, endpoint.api_key, endpoint.model) == (
        "http://127.0.0.1:8080/v1",
        "k",
        "m",
    )


class ScriptedModel:
    """Stands in for the LLM: returns prepared replies and keeps what it was sent."""

    def __init__(self, replies: list[dict[str, Any]]) -> None:
        self.replies = replies
        self.seen: list[list[dict[str, Any]]] = []

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> dict[str, Any]:
        self.seen.append([dict(m) for m in messages])
        return self.replies.pop(0)


def _flame_server() -> MCPServer:
    server = MCPServer("flames", log_level="WARNING")

    @server.tool(description="Flame speed per (pressure, temperature) pair.")
    def flame_speed(pressure: list[float], temperature: list[float]) -> list[float]:
        if len(pressure) != len(temperature):
            raise ToolError(
                f"lengths differ: pressure {len(pressure)}, temperature {len(temperature)}"
            )
        return [p * t for p, t in zip(pressure, temperature, strict=True)]

    return server


def _text(value: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": value if isinstance(value, str) else json.dumps(value)}


async def test_error_result_goes_back_to_the_model_which_retries_and_answers() -> None:
    model = ScriptedModel(
        [
            _text({"name": "flame_speed", "arguments": {"pressure": [1, 2], "temperature": [300]}}),
            _text(
                {
                    "name": "flame_speed",
                    "arguments": {"pressure": [1, 2], "temperature": [300, 300]},
                }
            ),
            _text("600 and 300."),
        ]
    )
    out = io.StringIO()
    record = await agent.run_agent("flame speed at 1 and 2 atm, 300 K", _flame_server(), model, out)
    assert record.answer == "600 and 300."
    assert record.retries == 1
    assert [c["status"] for c in record.calls] == ["error", "ok"]
    call, result = model.seen[1][-2:]
    assert call["tool_calls"][0]["id"] == result["tool_call_id"] == "call_0_0"
    assert result["role"] == "tool"
    assert "lengths differ: pressure 2, temperature 1" in result["content"]
    assert "300.0" in model.seen[2][-1]["content"] and "600.0" in model.seen[2][-1]["content"]
    transcript = out.getvalue()
    assert transcript.startswith("USER: flame speed at 1 and 2 atm, 300 K\n")
    assert "CALL: flame_speed(" in transcript and "RESULT (error)" in transcript
    assert transcript.endswith("ANSWER: 600 and 300.\n")


async def test_model_that_explains_an_error_instead_of_retrying_is_nudged_once() -> None:
    model = ScriptedModel(
        [
            _text({"name": "flame_speed", "arguments": {"pressure": [1, 2], "temperature": [300]}}),
            _text("The lists have different lengths."),
            _text({"name": "flame_speed", "arguments": {"pressure": [1], "temperature": [300]}}),
            _text("300."),
        ]
    )
    record = await agent.run_agent("x", _flame_server(), model, io.StringIO())
    assert record.answer == "300."
    assert record.retries == 2
    assert model.seen[2][-1] == {"role": "user", "content": agent.NUDGE_AFTER_ERROR}


async def test_unknown_tool_is_reported_to_the_model_and_retries_are_bounded() -> None:
    bad = _text({"name": "flamespeed", "arguments": {}})
    model = ScriptedModel([bad, bad, bad])
    out = io.StringIO()
    record = await agent.run_agent("x", _flame_server(), model, out, max_retries=2)
    assert record.answer is None
    assert record.retries == 2
    assert (
        record.problems == ["unknown tool 'flamespeed'; the available tools are: flame_speed"] * 3
    )
    assert "unknown tool 'flamespeed'" in model.seen[1][-1]["content"]
    assert out.getvalue().endswith("GAVE UP: still failing after 2 retries\n")


async def test_native_call_result_is_sent_as_a_tool_message() -> None:
    model = ScriptedModel(
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {
                            "name": "flame_speed",
                            "arguments": '{"pressure": [2], "temperature": [3]}',
                        },
                    }
                ],
            },
            _text("6."),
        ]
    )
    record = await agent.run_agent("x", _flame_server(), model, io.StringIO())
    assert record.answer == "6."
    sent = model.seen[1][-1]
    assert (sent["role"], sent["tool_call_id"]) == ("tool", "c1")
    assert "6.0" in sent["content"]


def test_unreachable_mcp_server_is_reported_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_MODEL", "m")
    url = f"http://127.0.0.1:{port}/mcp"
    assert agent.main(["x", "--url", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("agent.py: ConnectError: ")
    assert f"MCP server {url}" in err


def test_calls_with_equal_values_have_equal_keys() -> None:
    a = ToolCall("flame_speed", {"pressure": [1, 2], "temperature": 300})
    b = ToolCall("flame_speed", {"temperature": 300.0, "pressure": [1.0, 2.0]})
    c = ToolCall("flame_speed", {"pressure": [1, 2], "temperature": 400})
    assert agent.call_key(a) == agent.call_key(b) != agent.call_key(c)


async def test_a_repeated_successful_call_is_not_run_again() -> None:
    call = {"name": "flame_speed", "arguments": {"pressure": [2], "temperature": [3]}}
    model = ScriptedModel([_text(call), _text(call), _text("6.")])
    out = io.StringIO()
    record = await agent.run_agent("x", _flame_server(), model, out)
    assert record.answer == "6."
    assert len(record.calls) == 1
    assert model.seen[2][-1]["content"] == agent.REPEATED_CALL
    assert "REPEAT (not run): flame_speed(" in out.getvalue()


async def test_the_submit_form_of_a_call_that_returned_its_results_is_not_run() -> None:
    server = build_server()
    call = {"name": "add", "arguments": {"a": [1, 2], "b": 10}}
    submit = {"name": "add_submit", "arguments": {"a": [1, 2], "b": 10}}
    model = ScriptedModel([_text(call), _text(submit), _text("11.0 and 12.0.")])
    record = await agent.run_agent("add 10 to 1 and 2", server, model, io.StringIO())
    assert [c["name"] for c in record.calls] == ["add"]
    assert model.seen[2][-1]["content"] == agent.REPEATED_CALL
    first = ScriptedModel([_text(submit), _text(call), _text("11.0 and 12.0.")])
    record = await agent.run_agent("add 10 to 1 and 2", server, first, io.StringIO())
    assert [c["name"] for c in record.calls] == ["add_submit", "add"]  # an id is no result


async def test_only_limits_the_tools_offered_and_rejects_unknown_names() -> None:
    server = _flame_server()

    @server.tool(description="Another tool.")
    def other() -> int:
        return 1

    model = ScriptedModel([_text("no tools needed.")])
    seen_tools: list[list[dict[str, Any]]] = []
    complete = model.complete

    async def spy(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
        seen_tools.append(tools)
        return await complete(messages, tools)

    model.complete = spy  # type: ignore[method-assign]
    await agent.run_agent("x", server, model, io.StringIO(), only=["other"])
    assert [t["function"]["name"] for t in seen_tools[0]] == ["other"]
    with pytest.raises(ValueError, match=r"--tools names \['nope'\] but the server has only"):
        await agent.run_agent("x", server, model, io.StringIO(), only=["nope"])


async def test_an_empty_reply_is_asked_once_for_an_answer() -> None:
    call = {"name": "flame_speed", "arguments": {"pressure": [2], "temperature": [3]}}
    model = ScriptedModel([_text(call), _text(""), _text("")])
    record = await agent.run_agent("x", _flame_server(), model, io.StringIO())
    assert model.seen[2][-1] == {"role": "user", "content": agent.ASK_FOR_ANSWER}
    assert len(model.seen) == 3
    assert record.answer is not None and record.results_appended
    assert record.answer == (
        f"[agent.py: this answer {agent.QUOTES_NONE}.]\nResults returned by the tools:\n6.0"
    )


def test_calls_written_one_per_line_in_one_fence_are_several_calls() -> None:
    first = json.dumps(
        {"name": "flame_speed", "arguments": {"pressure": [1], "temperature": [300]}}
    )
    second = json.dumps({"name": "ensemble_status", "arguments": {"ensemble_id": "e1"}})
    text = f"```json\n{first}\n{second}\n```"
    assert agent.parse_text_tool_calls(text, TOOLS) == [
        ToolCall("flame_speed", {"pressure": [1], "temperature": [300]}),
        ToolCall("ensemble_status", {"ensemble_id": "e1"}),
    ]


def test_empty_fence_is_not_a_call() -> None:
    assert agent.parse_text_tool_calls("```json\n\n```", TOOLS) == []


# -- the answer check --------------------------------------------------------------------------


def test_numbers_in_text_are_found_as_written_but_not_inside_words() -> None:
    text = "CO2 at 1,000 K, -2.5e-3 and 0.3845 m/s over 300-400 K; see call_0."
    assert agent.numbers_in(text) == ["1,000", "-2.5e-3", "0.3845", "300", "400"]


def test_a_number_states_a_value_rounded_cut_or_in_hundredths_of_its_unit() -> None:
    for written in ("0.3845", "0.38", "0.385", "0.384", "0.4", "38.45", "384.5"):
        assert agent.same_number(written, 0.3845), written
    for written in ("0.39", "0.3", "0", "3845", "0.38451"):
        assert not agent.same_number(written, 0.3845), written
    assert agent.same_number("600", 600.0) and agent.same_number("6e2", 600.0)


def test_answer_numbers_are_quoted_given_counts_or_unsupported() -> None:
    check = agent.check_answer(
        "The 4 tasks at 300 K: 1 atm gives 0.3845 m/s, 10 atm 0.1216, 5 atm 0.1300.",
        returned=[0.3845, 0.2719, 0.172, 0.1216],
        given=[1, 2, 5, 10, 300],
    )
    assert check.quoted == ["0.3845", "0.1216"]
    assert check.unsupported == ["0.1300"]
    assert check.problems(results_expected=True) == "states 0.1300, which no task returned"
    silent = agent.check_answer("The results are listed above.", [0.3845], [])
    assert silent.problems(results_expected=True) == (
        "quotes none of the values the tools returned"
    )


async def test_an_answer_stating_a_value_no_task_returned_is_asked_again_once() -> None:
    call = {"name": "flame_speed", "arguments": {"pressure": [2, 3], "temperature": [100, 100]}}
    model = ScriptedModel([_text(call), _text("The speeds are 200 and 0.125."), _text("200, 300.")])
    out = io.StringIO()
    record = await agent.run_agent("x", _flame_server(), model, out)
    assert record.answer == "200, 300."
    assert record.answer_problems == ["states 0.125, which no task returned"]
    assert not record.results_appended
    fix = model.seen[2][-1]
    assert fix["role"] == "user"
    assert fix["content"].startswith(
        "Answer my request using the tool results above. A draft of your answer states 0.125, "
        "which no task returned; do not repeat that."
    )
    assert all(m.get("content") != "The speeds are 200 and 0.125." for m in model.seen[2])
    assert "CHECK: Answer my request using the tool results above. A draft" in out.getvalue()


async def test_an_answer_still_wrong_after_the_second_ask_gets_the_results_and_a_flag() -> None:
    call = {"name": "flame_speed", "arguments": {"pressure": [2, 3], "temperature": [100, 100]}}
    model = ScriptedModel([_text(call), _text("About 0.125."), _text("Roughly 0.125 m/s.")])
    record = await agent.run_agent("x", _flame_server(), model, io.StringIO())
    assert record.results_appended and len(model.seen) == 3
    assert record.answer is not None
    assert record.answer.splitlines() == [
        "Roughly 0.125 m/s.",
        "",
        f"[agent.py: 0.125 in this answer {agent.NOT_RETURNED}.]",
        "Results returned by the tools:",
        "200.0",
        "300.0",
    ]


async def test_an_answer_quoting_no_result_is_asked_again_then_given_with_the_results() -> None:
    call = {"name": "flame_speed", "arguments": {"pressure": [2], "temperature": [3]}}
    model = ScriptedModel([_text(call), _text("Done: 1 task."), _text("It ran.")])
    record = await agent.run_agent("x", _flame_server(), model, io.StringIO())
    assert record.answer_problems == [agent.QUOTES_NONE] * 2
    assert record.answer == (
        f"It ran.\n\n[agent.py: this answer {agent.QUOTES_NONE}.]\n"
        "Results returned by the tools:\n6.0"
    )


async def test_numbers_of_its_own_in_an_answer_before_any_call_are_flagged_not_asked() -> None:
    model = ScriptedModel([_text("300 K is 26.85 degrees Celsius.")])
    record = await agent.run_agent("300 K in Celsius?", _flame_server(), model, io.StringIO())
    assert len(model.seen) == 1 and not record.calls  # asked for a call, a small model makes one up
    assert record.answer == (
        "300 K is 26.85 degrees Celsius.\n\n"
        "[agent.py: no tool ran; 26.85 in this answer come from the model, not from a tool.]"
    )


async def test_an_answer_needing_no_number_is_given_as_it_is() -> None:
    model = ScriptedModel([_text("A laminar flame speed is how fast a flame front moves.")])
    record = await agent.run_agent("What is it?", _flame_server(), model, io.StringIO())
    assert record.answer == "A laminar flame speed is how fast a flame front moves."
    assert len(model.seen) == 1 and not record.answer_problems


async def test_an_answer_that_names_a_tool_none_having_run_says_so() -> None:
    plan = "I will use the `flame_speed` tool with pressure 1 and 2 and temperature 3."
    model = ScriptedModel([_text(plan)])
    record = await agent.run_agent("1 and 2 at 3?", _flame_server(), model, io.StringIO())
    assert record.answer == f"{plan}\n\n{agent.NO_CALL_MADE}"


async def test_arguments_written_out_instead_of_a_call_are_asked_for_as_a_call() -> None:
    plan = 'I will use flame_speed with ```json\n{"pressure": [1, 2], "temperature": [3, 3]}\n```'
    call = {"name": "flame_speed", "arguments": {"pressure": [1, 2], "temperature": [3, 3]}}
    model = ScriptedModel([_text(plan), _text(call), _text("3.0 and 6.0.")])
    record = await agent.run_agent("1 and 2 at 3?", _flame_server(), model, io.StringIO())
    problem = "writes out arguments for flame_speed but does not call it"
    assert model.seen[1][-1]["content"] == agent.NO_TOOL_YET.format(problem=problem)
    assert [c["status"] for c in record.calls] == ["ok"]
    assert record.answer == "3.0 and 6.0." and record.answer_problems == [problem]


async def test_arguments_written_out_again_when_asked_for_the_call_are_the_call() -> None:
    plan = 'I would call flame_speed with ```json\n{"pressure": [1, 2], "temperature": [3, 3]}\n```'
    again = 'Call flame_speed:\n```json\n{"pressure": [1, 2], "temperature": [3, 3]}\n```'
    model = ScriptedModel([_text(plan), _text(again), _text("3.0 and 6.0.")])
    record = await agent.run_agent("1 and 2 at 3?", _flame_server(), model, io.StringIO())
    assert [(c["name"], c["status"]) for c in record.calls] == [("flame_speed", "ok")]
    assert record.calls[0]["arguments"] == {"pressure": [1, 2], "temperature": [3, 3]}
    assert model.seen[2][-2]["tool_calls"][0]["function"]["name"] == "flame_speed"
    assert record.answer == "3.0 and 6.0."


def test_run_times_and_other_numbers_of_a_result_may_be_repeated() -> None:
    text = "flame_speed: 1 task; 0.0123 s\n#0 pressure=1.0 -> 0.3845 (8.6e-05 s)"
    seen = agent.other_numbers(text, [0.3845])
    assert seen == [1.0, 0.0123, 0.0, 1.0, 8.6e-05]
    check = agent.check_answer("0.3845 m/s, computed in 8.6e-05 s", [0.3845], seen)
    assert check.quoted == ["0.3845"] and check.unsupported == []


def test_a_given_number_may_be_written_with_the_other_sign() -> None:
    check = agent.check_answer("exponent = -0.5: 0.3845", [0.3845], given=[0.5])
    assert check.unsupported == []


def test_a_value_put_beside_another_tasks_arguments_is_found() -> None:
    tasks = [
        ({"pressure": p, "temperature": t}, v)
        for (p, t), v in {(1, 300): 0.3845, (1, 400): 0.6398, (5, 300): 0.172}.items()
    ]
    answer = "- Pressure 1 atm, Temperature 300 K: 0.172 m/s\n- Pressure 1 atm, 400 K: 0.6398 m/s"
    assert agent.misplaced(answer, tasks) == [
        "gives 0.172 for pressure=1, temperature=300, but 0.172 is the result of pressure=5, "
        "temperature=300"
    ]
    listed = "At 1 and 5 atm (300 K) the speeds are 0.3845 and 0.172 m/s."
    assert agent.misplaced(listed, tasks) == []
    assert agent.misplaced("The largest is 0.6398 m/s, at 400 K.", tasks) == []


async def test_an_answer_that_swaps_results_is_asked_again_naming_the_swap() -> None:
    server = build_server()  # a real ensemble server: its results echo each task's arguments
    call = {"name": "add", "arguments": {"a": [1, 2], "b": 10}}
    swapped = "For a=1 the sum is 12.0; for a=2 it is 11.0."
    model = ScriptedModel([_text(call), _text(swapped), _text("a=1: 11.0, a=2: 12.0.")])
    record = await agent.run_agent("add 10 to 1 and 2", server, model, io.StringIO())
    assert record.answer == "a=1: 11.0, a=2: 12.0."
    assert record.answer_problems == [
        "gives 12.0 for a=1, but 12.0 is the result of a=2, b=10; "
        "gives 11.0 for a=2, but 11.0 is the result of a=1, b=10"
    ]
    assert "A draft of your answer gives 12.0 for a=1, but" in model.seen[2][-1]["content"]


SWEEP = [
    ({"pressure": p, "temperature": 300.0}, v) for p, v in [(1, 0.3845), (2, 0.2719), (10, 0.1216)]
]
GRID = [
    ({"pressure": p, "temperature": t}, v)
    for (p, t), v in {
        (1, 300): 0.3845,
        (1, 400): 0.6398,
        (2, 300): 0.2719,
        (2, 400): 0.4524,
    }.items()
]


@pytest.mark.parametrize(
    ("answer", "found"),
    [
        (
            "The fastest flame at 300 K is at 10 atm, with a speed of 0.1216 m/s.",
            "calls 0.1216 the fastest, but the largest result is 0.3845 at pressure=1",
        ),
        (
            "The slowest flame is at 2 atm with a speed of 0.2719 m/s.",
            "calls 0.2719 the slowest, but the smallest result is 0.1216 at pressure=10",
        ),
        (
            "The fastest flame at 300 K is at 10 atm.",
            "says the fastest is at pressure=10, but the largest result is 0.3845 at pressure=1",
        ),
        ("1 atm gives the fastest flame, 0.3845 m/s; 10 atm the slowest, 0.1216 m/s.", None),
        ("The fastest is 0.3845 m/s at 1 atm, then 0.2719 at 2 atm.", None),
        ("Fastest and slowest: 0.1216 and 0.3845.", None),  # both sides: not judged
        ("The lowest pressure where it is under 0.3 m/s is 2 atm (0.2719 m/s).", None),
    ],
)
def test_a_result_called_the_largest_or_smallest_wrongly_is_found(
    answer: str, found: str | None
) -> None:
    assert agent.wrong_extremes(answer, [SWEEP]) == ([found] if found else [])


def test_in_a_grid_only_the_opposite_extreme_is_called_wrong() -> None:
    at_two = "At 2 atm the fastest flame is 0.4524 m/s, at 400 K."  # the fastest of that row
    assert agent.wrong_extremes(at_two, [GRID]) == []
    swapped = "The highest flame speed is 0.2719 m/s."
    assert agent.wrong_extremes(swapped, [GRID]) == [
        "calls 0.2719 the highest, but the largest result is 0.6398 at pressure=1, temperature=400"
    ]


def test_an_input_value_in_the_answer_is_not_a_quoted_result() -> None:
    check = agent.check_answer("Pressures 0.25 and 0.5 atm.", [0.2479, 0.5438], given=[0.25, 0.5])
    assert check.quoted == [] and check.unsupported == []
    assert check.problems(results_expected=True) == "quotes none of the values the tools returned"
    loose = agent.check_answer("About 0.4 m/s.", [0.3845], given=[])
    assert loose.quoted == [] and loose.unsupported == []  # rounded to one digit: not flagged


async def test_an_answer_about_a_value_a_retry_dropped_is_asked_again() -> None:
    server = build_server()
    unequal = {"name": "add", "arguments": {"a": [1, 2, 3], "b": [10, 20]}}
    dropped = {"name": "add", "arguments": {"a": [1, 2, 3], "b": [10]}}
    claim = "With b = 10 and 20 the sums are 11.0, 12.0 and 13.0."
    model = ScriptedModel([_text(unequal), _text(dropped), _text(claim), _text(claim)])
    record = await agent.run_agent("add 10 and 20 to 1, 2, 3", server, model, io.StringIO())
    assert [c["status"] for c in record.calls] == ["error", "ok"]
    assert record.answer_problems[0] == (
        "mentions 20, but no task ran with 20 (call the tool for it, or say that it was not "
        "computed)"
    )
    assert record.answer is not None and record.results_appended
    assert f"{agent.FLAG} no task ran with 20.]" in record.answer


async def test_an_answer_after_only_failed_calls_says_that_no_number_comes_from_a_tool() -> None:
    bad = _text({"name": "flame_speed", "arguments": {"pressure": [1, 2], "temperature": [300]}})
    explain = _text("Use equal lengths, about 0.38 m/s.")
    model = ScriptedModel([bad, explain, explain, explain])
    record = await agent.run_agent("x", _flame_server(), model, io.StringIO())
    assert model.seen[2][-1] == {"role": "user", "content": agent.NUDGE_AFTER_ERROR}
    assert record.answer == f"Use equal lengths, about 0.38 m/s.\n\n{agent.NO_RESULT}"


RAMP = [
    ({"pressure": 1.0, "temperature": t}, v)
    for t, v in [(300, 0.3845), (350, 0.5052), (400, 0.6398), (450, 0.7881)]
]


@pytest.mark.parametrize(
    ("request_text", "answer", "found"),
    [
        (
            "Which of 1, 2 and 10 atm gives the fastest flame at 300 K?",
            "At 1 atm: 0.3845; at 2 atm: 0.2719; at 10 atm: 0.1216.",
            "does not say which result is the fastest: the largest result is 0.3845 at pressure=1",
        ),
        (
            "Which of 1, 2 and 10 atm gives the fastest flame?",
            "The highest is 0.3845 at 1 atm.",
            None,
        ),
        (
            "Which pressure gives the slowest flame?",
            "The fastest is 0.3845.",
            "does not say which result is the slowest: "
            "the smallest result is 0.1216 at pressure=10",
        ),
        (
            "What is the lowest pressure at which it is under 0.3?",
            "It is 2 atm.",
            None,
        ),  # an argument
        ("Flame speeds at 1, 2 and 10 atm?", "0.3845, 0.2719 and 0.1216.", None),  # none asked
    ],
)
def test_an_answer_that_never_names_the_extreme_asked_for_is_found(
    request_text: str, answer: str, found: str | None
) -> None:
    assert agent.unanswered_extreme(request_text, answer, SWEEP) == ([found] if found else [])


THRESHOLD_REQUEST = "From 300 K to 450 K in 50 K steps, where does the speed first exceed 0.6 m/s?"
FIRST_ABOVE = "the first temperature whose result is above 0.6 is 400 (0.6398)"


@pytest.mark.parametrize(
    ("answer", "found"),
    [
        ("The flame speed first exceeds 0.6 m/s at 400 K (0.6398 m/s).", None),
        ("It crosses 0.6 between 350 K and 400 K.", None),
        (
            "The flame speed first exceeds 0.6 m/s at 300 K.",
            f"names temperature=300, whose result is 0.3845; {FIRST_ABOVE}",
        ),
        (
            "At 450 K it is 0.7881, which is above 0.6.",
            f"names temperature=450, whose result is 0.7881; {FIRST_ABOVE}",
        ),
        ("At 300 K: 0.3845. At 400 K: 0.6398. At 450 K: 0.7881.", None),  # no bound stated
    ],
)
def test_the_point_named_for_a_threshold_is_judged(answer: str, found: str | None) -> None:
    assert agent.wrong_crossings(THRESHOLD_REQUEST, answer, RAMP) == ([found] if found else [])


def test_a_threshold_answer_quotes_a_result_too_and_a_bound_none_passes_is_said() -> None:
    given = [0.6, 300, 350, 400, 450]  # the request's bound and the call's arguments
    bare = agent.check_answer(
        "Above 0.6 from 400 K.", [0.6398], given, [RAMP], (), THRESHOLD_REQUEST
    )
    assert bare.problems(results_expected=True) == agent.QUOTES_NONE
    assert agent.asked_bound("speeds below 2.5e-1 please") == (0.25, False)
    assert agent.asked_bound("sweep over 1, 5 and 10 atm") is None  # a list, not a bound
    assert agent.asked_bound("over 1, 5 and 10 atm, where is it above 0.9?") == (0.9, True)
    none_above = agent.wrong_crossings("where is it above 0.9?", "Above 0.9 at 450 K.", RAMP)
    assert none_above == ["names temperature=450, whose result is 0.7881; no result is above 0.9"]


def test_a_sentence_naming_both_extremes_is_judged_per_clause() -> None:
    answer = "So the fastest is at 2 atm and 300 K with 0.2719 m/s, and the slowest is 0.6398 m/s."
    assert agent.wrong_extremes(answer, [GRID]) == [
        "calls 0.2719 the fastest, but the largest result is 0.6398 at pressure=1, temperature=400",
        "calls 0.6398 the slowest, but the smallest result is 0.2719 at pressure=2, "
        "temperature=300",
    ]


async def test_a_failed_call_after_results_is_not_answered_as_if_nothing_ran() -> None:
    call = {"name": "flame_speed", "arguments": {"pressure": [2], "temperature": [3]}}
    bad = {"name": "flame_speed", "arguments": {"pressure": [1, 2], "temperature": [3]}}
    model = ScriptedModel([_text(call), _text(bad), _text("It is 6.0.")])
    record = await agent.run_agent("x", _flame_server(), model, io.StringIO())
    assert record.answer == "It is 6.0."
    assert [c["status"] for c in record.calls] == ["ok", "error"]
    error = model.seen[2][-1]["content"]
    assert "lengths differ" in error and error.endswith(agent.STILL_STANDS)
    assert all(m["content"] != agent.NUDGE_AFTER_ERROR for m in model.seen[2])


@pytest.mark.parametrize(
    ("request_text", "lists"),
    [
        ("Which of 1, 2, 5 and 10 atm at 300 K?", [[1, 2, 5, 10]]),
        ("At (1 atm, 300 K) and (2 atm, 400 K)", [[1, 300], [2, 400]]),
        ("points 0.5 atm/320 K, 1 atm/340 K", [[0.5, 320, 1, 340]]),
        ("from 300 K to 350 K, in 25 K steps", [[300, 325, 350]]),
        ("at 2 atm, from 300 K to 650 K", []),
        ("from 300 K to 400 K in steps of 50 K", [[300, 350, 400]]),
        ("between 0.5 and 1.5 atm in 0.5 atm increments", [[0.5, 1.5], [0.5, 1.0, 1.5]]),
        ("from 1 to 3 atm every 1 atm, at 300 K", [[1, 2, 3]]),
    ],
)
def test_the_lists_a_request_writes_are_found(request_text: str, lists: list[list[float]]) -> None:
    assert agent.listed_values(request_text) == lists


def test_values_of_a_list_that_no_task_ran_with_are_left_out() -> None:
    ran = {1.0, 2.0, 300.0}
    assert agent.left_out("at 1, 2, 5 and 10 atm, all at 300 K", ran) == [5.0, 10.0]
    assert agent.left_out("steps of 25 from 1 to 2", ran) == []  # no list, no range
    assert agent.left_out("from 1 to 3 atm in steps of 1 atm", ran) == [3.0]
    assert agent.left_out("at 7 and 8 atm", ran) == []  # no value of the list ran: not judged


async def test_an_answer_about_a_call_that_left_out_listed_values_is_asked_again() -> None:
    short = {"name": "add", "arguments": {"a": [1, 2], "b": 10}}
    full = {"name": "add", "arguments": {"a": [1, 2, 3], "b": 10}}
    replies = [short, short, "11.0 and 12.0.", full, "11.0, 12.0 and 13.0."]  # held, sent again
    model = ScriptedModel([_text(r) for r in replies])
    record = await agent.run_agent("add 10 to 1, 2 and 3", build_server(), model, io.StringIO())
    assert [c["status"] for c in record.calls] == ["not run", "ok", "ok"]
    assert record.answer == "11.0, 12.0 and 13.0."
    assert record.answer_problems == [
        "leaves out 3 of my request: no task ran with them (call the tool again with every value "
        "of the request in one call, or say that they were not computed)"
    ]


def test_a_line_ending_in_a_colon_goes_on_with_the_next() -> None:
    answer = "The first temperature above 0.6 is:\n\n**300 K**"
    assert agent.lines_of(answer) == ["The first temperature above 0.6 is: **300 K**"]
    assert agent.wrong_crossings(THRESHOLD_REQUEST, answer, RAMP) == [
        f"names temperature=300, whose result is 0.3845; {FIRST_ABOVE}"
    ]


@pytest.mark.parametrize(
    ("answer", "found"),
    [
        (
            "At (1 atm, 300 K) it is 0.3845 m/s, at (2 atm, 400 K) it is 0.6398 m/s.",
            "gives 0.6398 for pressure=2, temperature=400, but 0.6398 is the result of "
            "pressure=1, temperature=400",
        ),
        ("At (1 atm, 300 K) it is 0.3845 m/s, at (2 atm, 400 K) it is 0.4524 m/s.", None),
        ("At 300 K and 400 K the speeds are 0.3845, 0.6398 (1 atm).", None),  # a list
        ("For 1 atm and 300 K, the speed is 0.3845; for 2 atm, 0.2719 at 300 K.", None),
        ("At 300 K, for 1, and 2 atm they are 0.3845, and 0.2719, respectively.", None),  # cut
    ],
)
def test_a_value_put_beside_another_tasks_arguments_in_a_clause_is_found(
    answer: str, found: str | None
) -> None:
    assert agent.misplaced(answer, GRID) == ([found] if found else [])


@pytest.mark.parametrize(
    ("request_text", "tasks", "facts"),
    [
        (
            "Which pressure gives the slowest flame?",
            SWEEP,
            ["The smallest result is 0.1216 at pressure=10."],
        ),
        (
            "Where is the flame fastest?",
            GRID,
            ["The largest result is 0.6398 at pressure=1, temperature=400."],
        ),
        (THRESHOLD_REQUEST, RAMP, [f"{FIRST_ABOVE[0].upper()}{FIRST_ABOVE[1:]}."]),
        ("Where is it above 0.9?", RAMP, ["No result is above 0.9."]),
        ("Flame speeds at 1, 2 and 10 atm?", SWEEP, []),  # no question the results settle
    ],
)
def test_the_facts_a_question_asks_for_are_read_from_the_results(
    request_text: str, tasks: list[agent.TaskValue], facts: list[str]
) -> None:
    assert agent.asked_facts(request_text, tasks) == facts


async def test_an_answer_that_misreads_the_extreme_twice_is_replaced_by_the_results() -> None:
    server = build_server()
    call = {"name": "add", "arguments": {"a": [1, 2, 3], "b": 10}}
    wrong = "The largest sum is 11.0, at a=1."
    model = ScriptedModel([_text(call), _text(wrong), _text(wrong)])
    record = await agent.run_agent(
        "Which of 1, 2 and 3 gives the largest sum with 10?", server, model, io.StringIO()
    )
    assert record.answer is not None and record.results_appended
    facts, blank, flag, _ = record.answer.split("\n", 3)
    assert (facts, blank, flag) == ("The largest result is 13 at a=3.", "", agent.CORRECTED)
    assert "11.0, at a=1" not in record.answer  # the misreading is not passed on
    assert "#2 a=3.0, b=10.0 -> 13.0" in record.answer  # the results follow
    misplaced = "The largest sum is 13.0, at a=1."  # the right value at the wrong point
    model = ScriptedModel([_text(call), _text(misplaced), _text(misplaced)])
    record = await agent.run_agent(
        "Which of 1, 2 and 3 gives the largest sum with 10?", server, model, io.StringIO()
    )
    assert record.answer is not None
    assert record.answer.startswith("The largest result is 13 at a=3.\n\n" + agent.CORRECTED)


async def test_an_answer_with_other_problems_keeps_its_text_and_gets_the_flags() -> None:
    server = build_server()
    call = {"name": "add", "arguments": {"a": [1, 2, 3], "b": 10}}
    invented = "The sums are 11.0, 12.0 and 13.5."
    model = ScriptedModel([_text(call), _text(invented), _text(invented)])
    record = await agent.run_agent("add 10 to 1, 2 and 3", server, model, io.StringIO())
    assert record.answer is not None and record.answer.startswith(invented)
    assert f"{agent.FLAG} 13.5 in this answer" in record.answer
    assert agent.CORRECTED not in record.answer


def _grid(pressures: list[float], temperatures: list[float]) -> list[agent.TaskValue]:
    return [
        ({"pressure": p, "temperature": t}, round(0.38 * t / 300 / p**0.5, 4))
        for p in pressures
        for t in temperatures
    ]


@pytest.mark.parametrize(
    ("request_text", "tasks", "found"),
    [
        (
            "What is the flame speed at (1 atm, 300 K), (2 atm, 400 K) and (5 atm, 500 K)?",
            _grid([1, 2, 5], [300, 400, 500]),
            "every combination ran (9 tasks), but the request gives 3 points of pressure, "
            "temperature: (1, 300), (2, 400), (5, 500)",
        ),
        (
            "Flame speed at p=2 atm, T=350 K and at p=6 atm, T=550 K, please.",
            _grid([2, 6], [350, 550]),
            "every combination ran (4 tasks), but the request gives 2 points of pressure, "
            "temperature: (2, 350), (6, 550)",
        ),
        (
            "Cases 300 K/1 atm and 400 K/2 atm.",  # each point written temperature first
            _grid([1, 2], [300, 400]),
            "every combination ran (4 tasks), but the request gives 2 points of pressure, "
            "temperature: (1, 300), (2, 400)",
        ),
        ("Every combination of 1 and 2 atm with 300 and 400 K.", _grid([1, 2], [300, 400]), None),
        ("Pressures 1, 2 and 5 at 300, 400 and 500 K.", _grid([1, 2, 5], [300, 400, 500]), None),
        ("At (1 atm, 300 K) and (2 atm, 400 K).", GRID[:1] + GRID[3:], None),  # the points ran
        ("At (1 atm, 300 K) and (2 atm, 400 K).", _grid([1, 2], [300, 400, 500]), None),
    ],
)
def test_every_combination_of_values_the_request_gives_as_points_is_found(
    request_text: str, tasks: list[agent.TaskValue], found: str | None
) -> None:
    grid = agent.grid_of_points(request_text, tasks, "flame_speed")
    assert (grid and grid.fact) == found
    if grid:
        call = json.loads(grid.call)
        assert call["name"] == "flame_speed" and call["arguments"]["relation"] == "one-to-one"
        points = zip(call["arguments"]["pressure"], call["arguments"]["temperature"], strict=True)
        assert list(points) == grid.points


async def test_a_grid_call_for_points_is_held_once_with_the_call_for_the_points() -> None:
    server = build_server()
    grid = {"name": "add", "arguments": {"a": [1, 2], "b": [10, 20], "relation": "many-to-many"}}
    points = {"name": "add", "arguments": {"a": [1, 2], "b": [10, 20], "relation": "one-to-one"}}
    request = "What are the sums at (1, 10) and (2, 20)?"
    model = ScriptedModel([_text(grid), _text(points), _text("11.0 and 22.0.")])
    record = await agent.run_agent(request, server, model, io.StringIO())
    held = model.seen[1][-1]["content"]
    assert held == agent.HELD_GRID.format(
        tasks=4, count=2, points="(1, 10), (2, 20)", call=json.dumps(_floats(points))
    )
    assert [c["status"] for c in record.calls] == ["not run", "ok"]
    assert record.answer == "11.0 and 22.0."


def _floats(call: dict[str, Any]) -> dict[str, Any]:
    """``call`` with its lists of numbers written as floats (as the agent writes a call)."""
    args = {
        k: [float(x) for x in v] if isinstance(v, list) else v for k, v in call["arguments"].items()
    }
    return {**call, "arguments": args}


async def test_a_grid_for_points_sent_again_runs_then_its_answer_is_asked_and_flagged() -> None:
    server = build_server()
    grid = {"name": "add", "arguments": {"a": [1, 2], "b": [10, 20], "relation": "many-to-many"}}
    request = "What are the sums at (1, 10) and (2, 20)?"
    replies = [_text(grid), _text(grid), _text("11.0 and 22.0."), _text("11.0 and 22.0.")]
    model = ScriptedModel(replies)
    record = await agent.run_agent(request, server, model, io.StringIO())
    assert [c["status"] for c in record.calls] == ["not run", "ok"]
    ask = model.seen[3][-1]["content"]
    assert "rests on a call where every combination ran (4 tasks), but the request gives 2" in ask
    points = {"name": "add", "arguments": {"a": [1, 2], "b": [10, 20], "relation": "one-to-one"}}
    assert f"for the points alone, send this call: {json.dumps(_floats(points))})" in ask
    assert record.answer is not None
    assert f"{agent.FLAG} every combination ran (4 tasks), but the request" in record.answer


def test_a_planned_grid_keeps_the_calls_other_arguments_in_the_call_for_the_points() -> None:
    request = "Flame speed at p=2 atm, T=350 K and at p=6 atm, T=550 K, fuel 1."
    args = {"pressure": [2, 6], "temperature": [350, 550], "fuel": [1], "relation": "many-to-many"}
    grid = agent.planned_grid(ToolCall("flame_speed", args), request)
    assert grid is not None and (grid.names, grid.points, grid.tasks) == (
        ("pressure", "temperature"),
        [(2.0, 350.0), (6.0, 550.0)],
        4,
    )
    assert json.loads(grid.call)["arguments"] == {
        "fuel": [1],
        "pressure": [2.0, 6.0],
        "temperature": [350.0, 550.0],
        "relation": "one-to-one",
    }
    paired = {**args, "relation": "one-to-one"}
    assert agent.planned_grid(ToolCall("flame_speed", paired), request) is None


@pytest.mark.parametrize(
    ("arguments", "request_text", "unasked"),
    [
        (
            {"pressure": [1.0], "temperature": [300.0]},
            "What is 300 K in Celsius?",
            {"pressure": [1.0]},
        ),
        (
            {"pressure": [1], "temperature": [300, 500, 750], "relation": "many-to-many"},
            "At 1 atm from 300 K to 500 K in steps of 25 K?",
            {"temperature": [750.0]},
        ),
        ({"pressure": [1, 2, 5], "temperature": 300}, "1, 2 and 5 atm at 300 K", {}),
        ({"word": ["a"], "n": [2, 2]}, "Which tools do you have?", {"n": [2.0]}),
    ],
)
def test_argument_values_the_request_does_not_give_are_found(
    arguments: dict[str, Any], request_text: str, unasked: dict[str, list[float]]
) -> None:
    assert agent.unasked_values(arguments, request_text) == unasked


async def test_a_call_with_values_the_request_does_not_give_is_held_once() -> None:
    server = build_server()
    call = {"name": "add", "arguments": {"a": [1, 2], "b": 10}}
    request = "Which tools do you have? Do not run them."
    model = ScriptedModel([_text(call), _text("add: adds two lists.")])
    record = await agent.run_agent(request, server, model, io.StringIO())
    assert model.seen[1][-1]["content"] == agent.HELD_UNASKED.format(values="a=1, 2; b=10")
    assert [c["status"] for c in record.calls] == ["not run"]
    assert record.answer == f"add: adds two lists.\n\n{agent.NO_CALL_MADE}"
    again = ScriptedModel([_text(call), _text(call), _text("11.0 and 12.0.")])
    record = await agent.run_agent(request, server, again, io.StringIO())
    assert [c["status"] for c in record.calls] == ["not run", "ok"]  # sent again, it ran
