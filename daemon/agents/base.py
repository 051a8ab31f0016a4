"""What every agent shares: what runs inside the task's container during the agent phase.

An agent gets an `AgentContext` and returns an `AgentResult`. It never handles its own time
limit: the engine cancels it at the agent timeout and then kills every process in the
container, so an agent only has to start its processes and report what they print.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs

from daemon.sandbox import Sandbox
from daemon.tasks.model import TaskSpec
from protocol import Event

INSTRUCTION_DIR = "/tbhud"
INSTRUCTION_PATH = f"{INSTRUCTION_DIR}/instruction.md"  # documented in the README
SOLUTION_DIR = "/solution"


class AgentError(RuntimeError):
    """The agent could not run at all; the task's outcome becomes `error` with this text."""


@attrs.frozen
class AgentResult:
    turns: int | None = None
    tokens: int | None = None
    cost_usd: float | None = None
    # An agent that ran but reports a failure of its own (e.g. max turns) says so here;
    # verification still decides the outcome.
    note: str | None = None


@attrs.define
class AgentContext:
    sandbox: Sandbox
    task: TaskSpec
    run_id: str
    instruction: str
    # Output lines go to the agent log and to clients as tb_task_output(source="agent").
    output: Callable[[str], None]
    # Turn count changes become tb_task_progress(currentTurn=...).
    set_turn: Callable[[int], None]
    # Agent events (agent_message, tool_use, tool_result) for clients.
    emit: Callable[[Event], None]
    model: str | None = None
    max_turns: int | None = None
    # What the agent has done so far, kept up to date by agents that can tell (claude-code):
    # the engine records it when it cuts the agent off at its timeout.
    partial_result: AgentResult | None = None

    async def sh(self, script: str, environment: dict[str, str] | None = None) -> int:
        """Run a shell script as the task's agent user in the workdir, output to the log."""
        done = await self.sandbox.exec(
            ["sh", "-c", script], user=self.task.agent_user, environment=environment,
            on_line=lambda _stream, line: self.output(line))
        assert done.exit_code is not None  # no time limit given: it ran to its end
        return done.exit_code


class Agent(Protocol):
    name: str

    async def run(self, ctx: AgentContext) -> AgentResult: ...
