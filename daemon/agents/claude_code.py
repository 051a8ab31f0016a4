"""The `claude-code` agent: the Claude Code CLI, run inside the task's container.

    claude -p --output-format stream-json --verbose --dangerously-skip-permissions \
           [--max-turns N] [--model M]  < /tbhud/prompt.md

The prompt (the instruction, wrapped in the TestGen workflow unless `testgen` is off) is copied
into the container as a file and read from stdin, and the command line reaches the CLI as
separate argv elements: no shell ever parses anything that came from a task or a run.

Credentials are what `needs` declares: the engine hands over those variables from the daemon's
environment (`ctx.host_env`), and they go into the exec's environment only. Every line the CLI
prints is redacted before anything else sees it.
"""

from __future__ import annotations

import re

import attrs

from daemon.agents.base import INSTRUCTION_DIR, Agent, AgentContext, AgentError, AgentResult, Option
from daemon.agents.claude_stream import (
    ClaudeStreamParser,
    Final,
    Item,
    Message,
    Raw,
    ToolCall,
    ToolOutput,
    redact,
    shorten,
    testgen_instruction,
    truncate_output,
)
from protocol.events import AgentMessage, ToolResult, ToolUse
from protocol.rpc import AgentNeeds

PROMPT_PATH = f"{INSTRUCTION_DIR}/prompt.md"
# As root, the CLI refuses --dangerously-skip-permissions unless told it runs in a sandbox;
# the task container is that sandbox.
SANDBOX_ENV = {"IS_SANDBOX": "1"}
# "$@" is the claude command line, handed over as argv elements after the script.
RUN_SCRIPT = f'exec "$@" < {PROMPT_PATH}'
# One stream-json line holds a whole message, e.g. a tool result with a file's contents:
# it must reach the parser whole, so the usual line cap is raised for this exec.
STREAM_LINE_MAX = 32 * 1024 * 1024

MISSING_CLAUDE = (
    "claude-code: the `claude` CLI is not on the PATH in this task's image. Provide it: bake "
    "it into the image (e.g. `RUN npm install -g @anthropic-ai/claude-code` in the task's "
    "Dockerfile, or a docker_image that has it), or, when the task's container has network, "
    "install it in a suite setup command (`npm install -g @anthropic-ai/claude-code`, which "
    "needs Node.js 18+ in the image)."
)


def claude_argv(model: str | None, max_turns: int | None) -> list[str]:
    argv = ["claude", "-p", "--output-format", "stream-json", "--verbose",
            "--dangerously-skip-permissions"]
    if max_turns is not None:
        argv += ["--max-turns", str(max_turns)]
    if model:
        argv += ["--model", model]
    return argv


def result_note(final: Final | None, exit_code: int | None) -> str | None:
    """What the agent reports when the session did not end well; None when it did."""
    if final is None:
        return f"claude-code: the CLI exited {exit_code} without a result"
    if final.subtype != "success":
        return f"claude-code: {final.subtype}"  # e.g. error_max_turns
    if final.is_error:
        # The CLI reports some failures (an invalid API key, for one) as a `success` result
        # with is_error set; its text says what went wrong.
        return f"claude-code: error: {shorten(final.result_text, 200)}"
    return None


# How the API says it is busy (HTTP 429 / 529, "overloaded_error", "rate_limit_error").
_API_BUSY = re.compile(r"overloaded|rate.?limit|\b(?:429|529)\b", re.IGNORECASE)


def api_busy(final: Final | None) -> bool:
    """The session failed because the model API was overloaded or rate-limited: a passing
    cause, so the task is tried again (`--retries`) rather than judged."""
    return final is not None and final.is_error and bool(_API_BUSY.search(final.result_text))


@attrs.frozen
class ClaudeCodeAgent(Agent):
    name = "claude-code"
    description = ("Anthropic's Claude Code CLI (`claude -p --output-format stream-json`), "
                   "its stream read live into turns, tool calls, tokens and cost")
    options = (
        Option("testgen", bool, default=True,
               help="wrap the instruction in tbhud's TestGen workflow (false: the bare one)"),
        Option("model", str, help="--model for the CLI (default: the CLI's own)"),
        Option("max_turns", int, minimum=1,
               help="--max-turns for the CLI, at least 1 (default: the task's max_turns, "
               "else the CLI's)"),
    )
    needs = AgentNeeds(
        # Hidden as *** in everything the agent reports.
        credentials=("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"),
        # A model name, not a credential: the CLI's own init line shows it.
        env=("ANTHROPIC_MODEL",),
        # Declared only: the image must have it (see MISSING_CLAUDE).
        binaries=("claude",))

    testgen: bool
    model: str | None
    max_turns: int | None

    async def run(self, ctx: AgentContext) -> AgentResult:
        env = ctx.host_env
        secrets = [env[n] for n in self.needs.credentials if n in env]
        user, sandbox = ctx.task.agent_user, ctx.sandbox

        check = await sandbox.exec(["sh", "-c", "command -v claude"], user=user,
                                   on_line=lambda _s, _l: None)
        if check.exit_code != 0:
            raise AgentError(MISSING_CLAUDE)

        prompt = testgen_instruction(ctx.instruction) if self.testgen else ctx.instruction
        await sandbox.put_files({"prompt.md": prompt.encode()}, INSTRUCTION_DIR)

        max_turns = self.max_turns or ctx.task.max_turns
        parser = ClaudeStreamParser()
        session = _Session(ctx, parser, secrets)
        done = await sandbox.exec(
            ["sh", "-c", RUN_SCRIPT, "sh", *claude_argv(self.model, max_turns)],
            user=user, environment={**env, **SANDBOX_ENV}, on_line=session.on_line,
            max_line=STREAM_LINE_MAX)
        note = result_note(parser.final, done.exit_code)
        if api_busy(parser.final):
            raise AgentError(redact(note or "claude-code: the model API is busy", secrets),
                             retryable=True)
        return session.result(note=redact(note, secrets) if note else None)


@attrs.define
class _Session:
    """Turns the CLI's output lines into log lines, events and the running result."""

    ctx: AgentContext
    parser: ClaudeStreamParser
    secrets: list[str]
    turn: int = 0

    def on_line(self, stream: str, line: str) -> None:
        # Redact the raw line first: everything below is derived from it.
        line = redact(line, self.secrets)
        if stream == "stderr":
            self.out(truncate_output(line))
            return
        for item in self.parser.feed_line(line):
            self.report(item)
        if self.parser.turn != self.turn:
            self.turn = self.parser.turn
            self.ctx.set_turn(self.turn)
        # Kept up to date so that an agent cut off at its timeout still counts what it did.
        self.ctx.partial_result = self.result()

    def report(self, item: Item) -> None:
        ctx, hide = self.ctx, self.hide
        run_id, task_id = ctx.run_id, ctx.task.id
        if isinstance(item, Message):
            ctx.emit(AgentMessage(run_id=run_id, task_id=task_id, turn=item.turn,
                                  text=hide(item.text)))
        elif isinstance(item, ToolCall):
            ctx.emit(ToolUse(run_id=run_id, task_id=task_id, turn=item.turn,
                             tool_name=hide(item.tool_name), tool_id=item.tool_id,
                             input=hide(item.input_summary)))
        elif isinstance(item, ToolOutput):
            ctx.emit(ToolResult(run_id=run_id, task_id=task_id, tool_id=item.tool_id,
                                output=hide(item.output), is_error=item.is_error))
        # A line we could not read (or one piece of a line too long to be read whole) is
        # shown, but not at any length.
        text = truncate_output(item.text) if isinstance(item, Raw) else item.render()
        self.out(text)

    def hide(self, text: str) -> str:
        # Again after parsing: JSON can spell a secret with \u escapes the raw line hid.
        return redact(text, self.secrets)

    def out(self, text: str) -> None:
        self.ctx.output(self.hide(text))

    def result(self, note: str | None = None) -> AgentResult:
        s = self.parser.summary()
        return AgentResult(turns=s.turns, tokens=s.tokens, cost_usd=s.cost_usd, note=note)


AGENT = ClaudeCodeAgent
