"""The `command` agent: a user's shell command."""

from __future__ import annotations

import attrs

from daemon.agents.base import INSTRUCTION_PATH, Agent, AgentContext, AgentResult, Option


@attrs.frozen
class CommandAgent(Agent):
    name = "command"
    description = ("a shell command of yours, run with `sh -c` in the workdir; the instruction "
                   "is in $TB_INSTRUCTION and in the file $TB_INSTRUCTION_FILE")
    options = (Option("command", str, required=True, help="the shell command to run"),)

    command: str

    async def run(self, ctx: AgentContext) -> AgentResult:
        env = {"TB_INSTRUCTION": ctx.instruction, "TB_INSTRUCTION_FILE": INSTRUCTION_PATH,
               "TB_TASK_ID": ctx.task.id}
        code = await ctx.sh(self.command, environment=env)
        return AgentResult(turns=0, note=None if code == 0 else f"command exited {code}")


AGENT = CommandAgent
