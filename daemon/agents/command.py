"""The `command` agent: a user's shell command."""

from __future__ import annotations

import attrs

from daemon.agents.base import INSTRUCTION_PATH, AgentContext, AgentResult


@attrs.frozen
class CommandAgent:
    """A user's shell command, run with `sh -c` in the workdir. The instruction is in
    $TB_INSTRUCTION and in the file $TB_INSTRUCTION_FILE (/tbhud/instruction.md)."""

    command: str
    name: str = "command"

    async def run(self, ctx: AgentContext) -> AgentResult:
        env = {"TB_INSTRUCTION": ctx.instruction, "TB_INSTRUCTION_FILE": INSTRUCTION_PATH,
               "TB_TASK_ID": ctx.task.id}
        code = await ctx.sh(self.command, environment=env)
        return AgentResult(turns=0, note=None if code == 0 else f"command exited {code}")
