"""The claude-code agent's pure part: stream-json parser, redaction, TestGen wrapper, fake CLI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from daemon.agents.claude_stream import (
    OUTPUT_LIMIT,
    TASK_BEGIN,
    TASK_END,
    ClaudeStreamParser,
    Final,
    Init,
    Message,
    Raw,
    ToolCall,
    ToolOutput,
    redact,
    summarize_input,
    testgen_instruction,
    truncate_output,
)

FIXTURES = Path(__file__).parent / "fixtures" / "claude"

# What the recorded transcripts hold, worked out by hand from their usage blocks.
# success.jsonl: 5 API messages (A..E), A and C split over two assistant lines each.
SUCCESS_TURNS = 5
SUCCESS_TOKENS = 21 + 6254 + 77000 + 464  # input + cache creation + cache read + output
SUCCESS_COST = 0.0535755
# max_turns.jsonl: 3 API messages, stopped by --max-turns 3.
MAX_TURNS_TURNS = 3
MAX_TURNS_TOKENS = 11 + 5525 + 39742 + 343
MAX_TURNS_COST = 0.01260645


def parse(lines: list[str]) -> tuple[ClaudeStreamParser, list]:
    parser = ClaudeStreamParser()
    items = [item for line in lines for item in parser.feed_line(line)]
    return parser, items


def fixture_lines(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines(keepends=True)


def of(items: list, cls: type) -> list:
    return [i for i in items if isinstance(i, cls)]


# ---------------------------------------------------------------------------------------------
# Recorded transcripts


def test_success_transcript() -> None:
    parser, items = parse(fixture_lines("success.jsonl"))

    assert items[0] == Init(model="claude-sonnet-4-5-20250929", tools=items[0].tools,
                            version="2.0.14")
    assert len(items[0].tools) == 15 and "Bash" in items[0].tools

    # The two Node warning lines are not JSON.
    raws = of(items, Raw)
    assert [r.text[:9] for r in raws] == ["(node:27)", "(Use `nod"]

    assert [(m.turn, m.text[:20]) for m in of(items, Message)] == [
        (1, "I'll start by lookin"),
        (3, "Python isn't install"),
        (5, "Done. `/app/hello.tx"),
    ]
    assert [(c.turn, c.tool_name, c.tool_id, c.input_summary) for c in of(items, ToolCall)] == [
        (1, "Bash", "toolu_01HbV5qk2J8tYz3xWn7rP4aM", "ls -la /app"),
        (2, "Bash", "toolu_01Kx9TzR4mLc6VbQ2wNe8sYd", "python --version"),
        (3, "Write", "toolu_01Qm3WcE7rTy5UiO9pAs1dFg", "/app/hello.txt"),
        (4, "Bash", "toolu_01Ns6YbV2cXz8LkJ4hGf7dSa", "cat /app/hello.txt && wc -c /app/hello.txt"),
    ]
    outputs = of(items, ToolOutput)
    assert [(o.tool_id, o.is_error) for o in outputs] == [
        ("toolu_01HbV5qk2J8tYz3xWn7rP4aM", False),
        ("toolu_01Kx9TzR4mLc6VbQ2wNe8sYd", True),
        ("toolu_01Qm3WcE7rTy5UiO9pAs1dFg", False),
        ("toolu_01Ns6YbV2cXz8LkJ4hGf7dSa", False),
    ]
    assert "python: command not found" in outputs[1].output
    assert outputs[3].output == "Hello, world!\n14 /app/hello.txt"

    final = items[-1]
    assert isinstance(final, Final)
    assert final.subtype == "success" and final.is_error is False
    assert final.num_turns == SUCCESS_TURNS
    assert final.tokens == SUCCESS_TOKENS
    assert final.cost_usd == SUCCESS_COST
    assert final.result_text.startswith("Done.")

    s = parser.summary()
    assert (s.turns, s.tokens, s.cost_usd, s.subtype, s.is_error) == (
        SUCCESS_TURNS,
        SUCCESS_TOKENS,
        SUCCESS_COST,
        "success",
        False,
    )


def test_max_turns_transcript() -> None:
    parser, items = parse(fixture_lines("max_turns.jsonl"))

    assert items[0] == Init(model="claude-haiku-4-5-20251001", tools=items[0].tools,
                            version="2.0.14")
    assert of(items, Raw) == []
    assert [(c.turn, c.tool_name, c.input_summary) for c in of(items, ToolCall)] == [
        (1, "Bash", "cd /app && make"),
        (2, "Read", "/app/Makefile"),
        (3, "Edit", "/app/Makefile"),
    ]
    outputs = of(items, ToolOutput)
    assert [o.is_error for o in outputs] == [True, False, False]
    # Claude Code's <system-reminder> after the Read result is not shown as tool output.
    assert outputs[1].output.endswith("     5→") and "system-reminder" not in outputs[1].output

    final = items[-1]
    assert isinstance(final, Final)
    # The line says is_error false (as some CLI versions do); not reaching success is an error.
    assert final.subtype == "error_max_turns" and final.is_error is True
    assert (final.num_turns, final.tokens, final.cost_usd) == (
        MAX_TURNS_TURNS,
        MAX_TURNS_TOKENS,
        MAX_TURNS_COST,
    )
    assert parser.summary().is_error is True


def test_live_turn_count_follows_message_ids() -> None:
    parser = ClaudeStreamParser()
    turns = []
    for line in fixture_lines("success.jsonl")[:-1]:  # everything before the result
        parser.feed_line(line)
        turns.append(parser.turn)
    # Split messages (two lines, one id) do not count twice.
    assert turns == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5]


def test_tokens_fall_back_to_assistant_usage_without_result() -> None:
    parser, _ = parse(fixture_lines("success.jsonl")[:-1])
    s = parser.summary()
    # Last usage per message id, summed: the same total the result line reports.
    assert (s.turns, s.tokens, s.cost_usd, s.subtype, s.is_error) == (
        SUCCESS_TURNS,
        SUCCESS_TOKENS,
        None,
        None,
        True,
    )


def test_result_num_turns_wins_over_live_count() -> None:
    lines = [
        {"type": "assistant", "message": {"id": "m1", "content": [{"type": "text", "text": "hi"}]}},
        {"type": "result", "subtype": "success", "num_turns": 7},
    ]
    parser, _ = parse([json.dumps(x) for x in lines])
    assert parser.turn == 7 and parser.summary().turns == 7


def test_result_usage_wins_over_assistant_usage() -> None:
    usage = {"input_tokens": 1, "output_tokens": 1}
    lines = [
        {"type": "assistant", "message": {"id": "m1", "content": [], "usage": usage}},
        {"type": "result", "subtype": "success",
         "usage": {"input_tokens": 100, "output_tokens": 5}},
    ]
    parser, _ = parse([json.dumps(x) for x in lines])
    assert parser.summary().tokens == 105


def test_subagent_messages_do_not_count_as_turns() -> None:
    lines = [
        {"type": "assistant", "message": {"id": "m1", "content": [
            {"type": "tool_use", "id": "t1", "name": "Task",
             "input": {"description": "explore"}}]}},
        {"type": "assistant", "parent_tool_use_id": "t1", "message": {"id": "s1", "content": [
            {"type": "tool_use", "id": "t2", "name": "Glob", "input": {"pattern": "**/*.py"}}]}},
    ]
    parser, items = parse([json.dumps(x) for x in lines])
    assert parser.turn == 1
    assert [(c.turn, c.tool_name, c.input_summary) for c in of(items, ToolCall)] == [
        (1, "Task", '{"description":"explore"}'),
        (1, "Glob", "**/*.py"),
    ]


def test_renderings() -> None:
    _, items = parse(fixture_lines("success.jsonl"))
    rendered = [i.render() for i in items]
    assert rendered[0] == "claude-code 2.0.14 started: model claude-sonnet-4-5-20250929, 15 tools"
    assert "[turn 1] Bash: ls -la /app" in rendered
    assert "[turn 3] Write: /app/hello.txt" in rendered
    error = "  -> (error) Exit code 127\n     /bin/bash: line 1: python: command not found"
    assert error in rendered
    assert rendered[-1].startswith("result: success, 5 turns, 83,739 tokens, $0.0536\n  Done.")
    assert ToolOutput("t", "").render() == "  -> (no output)"
    many = ToolOutput("t", "\n".join(str(n) for n in range(30))).render().splitlines()
    assert len(many) == 13 and many[-1] == "     … (+18 more lines)"


# ---------------------------------------------------------------------------------------------
# Malformed input: never an exception


@pytest.mark.parametrize(
    "line",
    [
        "not json at all",
        '{"type":"assis',
        "[1, 2, 3]",
        '"a string"',
        "42",
        "null",
        '{"type":"assistant"}',
        '{"type":"assistant","message":"text"}',
        '{"type":"assistant","message":{"content":{"type":"text"}}}',
        '{"type":"assistant","message":{"content":null}}',
        '{"type":"user"}',
        '{"type":"user","message":{"content":7}}',
        '{"type":"something_new","x":1}',
        '{"type":"system","subtype":"compact_boundary"}',
        '{"no_type":true}',
    ],
)
def test_malformed_lines_become_raw(line: str) -> None:
    parser = ClaudeStreamParser()
    assert parser.feed_line(line) == [Raw(line)]
    assert parser.turn == 0


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "assistant",
         "message": {"content": [None, 3, {"type": "tool_use"}, {"type": "text"}]}},
        {"type": "assistant",
         "message": {"id": 5, "content": [{"type": "tool_use", "name": ["x"], "input": "s"}]}},
        {"type": "user", "message": {"content": [{"type": "tool_result"}, "x", None]}},
        {"type": "result"},
        {"type": "result", "subtype": None, "num_turns": "3", "usage": "lots",
         "total_cost_usd": "1"},
        {"type": "result", "subtype": {"type": "text"}, "result": ["a"]},
        {"type": "system", "subtype": "init", "tools": "Bash"},
        {"type": "assistant",
         "message": {"content": [{"type": "tool_use", "input": {"a": float("nan")}}]}},
    ],
)
def test_odd_shapes_are_tolerated(obj: dict) -> None:
    items = ClaudeStreamParser().feed_line(json.dumps(obj))
    for item in items:
        assert isinstance(item.render(), str)
        if isinstance(item, Final):
            assert item.subtype == "unknown" and item.is_error


def test_tolerant_partial_parsing() -> None:
    parser = ClaudeStreamParser()
    # content as a plain string: one message.
    line = '{"type":"assistant","message":{"content":"hello"}}'
    assert parser.feed_line(line) == [Message(1, "hello")]
    # a tool_use with nothing but a name.
    assert parser.feed_line(
        '{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Bash"}]}}'
    ) == [ToolCall(2, "Bash", "", "")]
    # thinking is skipped, an unknown block is shown raw, a bad result has defaults.
    items = parser.feed_line(
        '{"type":"assistant","message":{"content":'
        '[{"type":"thinking","thinking":"hm"},{"type":"odd"}]}}'
    )
    assert items == [Raw('{"type":"odd"}')]
    assert parser.feed_line('{"type":"result"}') == [Final("unknown", True, 3, None, 0, "")]
    # blank lines, bytes and stream_event deltas.
    assert parser.feed_line("\n") == []
    assert parser.feed_line(b'{"type":"stream_event","event":{}}\n') == []
    assert parser.feed_line(b"\xff\xfe garbage\n") == [Raw("\ufffd\ufffd garbage")]


def test_tool_result_content_as_blocks() -> None:
    line = {
        "type": "user",
        "message": {"content": [{
            "type": "tool_result",
            "tool_use_id": "toolu_1",
            "is_error": True,
            "content": [
                {"type": "text", "text": "first"},
                {"type": "image", "source": {"type": "base64", "data": "AAAA"}},
                {"type": "text", "text": "second"},
            ],
        }]},
    }
    assert ClaudeStreamParser().feed_line(json.dumps(line)) == [
        ToolOutput("toolu_1", "first\n[image]\nsecond", True)
    ]


def test_error_result_text_from_errors_list() -> None:
    line = {"type": "result", "subtype": "error_during_execution", "is_error": True,
            "errors": ["API Error: 529 overloaded", "aborted"]}
    [final] = ClaudeStreamParser().feed_line(json.dumps(line))
    assert final.is_error and final.result_text == "API Error: 529 overloaded; aborted"


def test_input_summary() -> None:
    assert summarize_input("Bash", {"command": "cd /app\nmake test"}) == "cd /app ⏎ make test"
    assert summarize_input("Edit", {"file_path": "/a.py", "old_string": "x"}) == "/a.py"
    assert summarize_input("Grep", {"pattern": "TODO", "path": "/app"}) == "TODO in /app"
    assert summarize_input("TodoWrite", {"todos": []}) == '{"todos":[]}'
    assert summarize_input("X", None) == ""
    long = summarize_input("Bash", {"command": "echo " + "a" * 500})
    assert len(long) == 200 and long.endswith("…")


def test_long_tool_output_is_truncated_with_marker() -> None:
    text = "H" * 5000 + "T" * 5000
    out = truncate_output(text)
    assert out.startswith("H" * 1000) and out.endswith("T" * 1000)
    assert "[… 8,000 chars cut …]" in out
    assert len(out) < OUTPUT_LIMIT + 40
    assert truncate_output("short") == "short"
    line = {"type": "user", "message": {"content": [
        {"type": "tool_result", "tool_use_id": "t", "content": text}]}}
    [item] = ClaudeStreamParser().feed_line(json.dumps(line))
    assert item.output == out


# ---------------------------------------------------------------------------------------------
# Redaction and TestGen


def test_redact() -> None:
    key = "sk-ant-api03-abcDEF123"
    assert redact(f"key={key} again {key}", [key]) == "key=*** again ***"
    assert redact("nothing here", [key, ""]) == "nothing here"
    assert redact("abc", [""]) == "abc"  # an empty secret hides nothing
    # The longer secret is hidden whole, not as "***" plus a leftover tail.
    assert redact("tok-123456", ["tok", "tok-123456"]) == "***"
    # A secret with characters JSON escapes is hidden in a raw stream-json line too.
    odd = 'pa"ss\\word'
    raw = json.dumps({"type": "assistant", "message": {"content": odd}})
    assert odd not in json.loads(redact(raw, [odd]))["message"]["content"]
    assert redact(raw, [odd]) == '{"type": "assistant", "message": {"content": "***"}}'


def test_testgen_keeps_instruction_verbatim() -> None:
    instruction = "Create /app/hello.txt.\n\n  Keep   spacing, `code` and ${VARS}.\n"
    wrapped = testgen_instruction(instruction)
    assert f"{TASK_BEGIN}\n{instruction}\n{TASK_END}" in wrapped
    assert wrapped.index(TASK_BEGIN) > wrapped.index("write tests")
    assert "never read, list or search for /tests" in wrapped
    steps = ("Analyse", "Write your own tests", "Review your tests", "Implement", "Run your tests")
    for step in steps:
        assert step in wrapped


# ---------------------------------------------------------------------------------------------
# The stand-in `claude` executable, run on the host with its paths moved under tmp_path


FAKE = FIXTURES / "claude"


def run_fake(tmp_path: Path, args: list[str], transcript: str, stdin: str | None = None):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TBHUD_FAKE_ROOT": str(tmp_path),
        "TBHUD_FAKE_TRANSCRIPT": str(FIXTURES / transcript),
        "ANTHROPIC_API_KEY": "sk-ant-secret-value",
    }
    return subprocess.run(
        [str(FAKE), *args], env=env, input=stdin or "", capture_output=True, text=True, timeout=30
    )


CLI = ["-p", "--output-format", "stream-json", "--verbose", "--max-turns", "30",
       "--model", "claude-sonnet-4-5", "--dangerously-skip-permissions"]


def test_fake_claude_replays_success(tmp_path: Path) -> None:
    assert os.access(FAKE, os.X_OK)
    proc = run_fake(tmp_path, [*CLI, "Do the task.\nLine two."], "success.jsonl")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (FIXTURES / "success.jsonl").read_text()
    assert (tmp_path / "app" / "hello.txt").read_text() == "Hello, world!\n"
    args = (tmp_path / "tmp" / "fake-claude-args").read_text()
    assert args.startswith("-p\n--output-format\nstream-json\n--verbose\n")
    assert "sk-ant-secret-value" not in args
    assert (tmp_path / "tmp" / "fake-claude-prompt").read_text() == "Do the task.\nLine two.\n"


def test_fake_claude_reads_prompt_from_stdin_and_fails_max_turns(tmp_path: Path) -> None:
    args = [*CLI, "--permission-mode", "bypassPermissions"]
    proc = run_fake(tmp_path, args, "max_turns.jsonl", stdin="from stdin")
    assert proc.returncode == 1
    assert proc.stdout == (FIXTURES / "max_turns.jsonl").read_text()
    assert (tmp_path / "tmp" / "fake-claude-prompt").read_text() == "from stdin\n"
    assert not (tmp_path / "app" / "hello.txt").exists()


def test_fake_claude_rejects_stream_json_without_verbose(tmp_path: Path) -> None:
    proc = run_fake(tmp_path, ["-p", "--output-format", "stream-json", "hi"], "success.jsonl")
    assert proc.returncode == 1 and "requires --verbose" in proc.stderr
    assert proc.stdout == ""
