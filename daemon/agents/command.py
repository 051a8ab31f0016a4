"""The `command` agent: a user's shell command."""

from __future__ import annotations

import attrs

from daemon.agents.base import INSTRUCTION_PATH, Agent, AgentContext, AgentResult, Option

# Linux refuses to start a program with one environment string over 128 KiB ("argument list
# too long"): a larger instruction is passed in the file only, $TB_INSTRUCTION left empty.
ENV_INSTRUCTION_MAX = 64 * 1024


@attrs.frozen
class CommandAgent(Agent):
    name = "command"
    description = ("a shell command of yours, run with `sh -c` in the workdir; the instruction "
                   "is in the file $TB_INSTRUCTION_FILE and, up to 64 KiB, in $TB_INSTRUCTION")
    options = (Option("command", str, required=True, help="the shell command to run"),)

    command: str

    async def run(self, ctx: AgentContext) -> AgentResult:
        inline = ctx.instruction if len(ctx.instruction.encode()) <= ENV_INSTRUCTION_MAX else ""
        env = {"TB_INSTRUCTION": inline, "TB_INSTRUCTION_FILE": INSTRUCTION_PATH,
               "TB_TASK_ID": ctx.task.id}
        code = await ctx.sh(self.command, environment=env)
        return AgentResult(turns=0, note=None if code == 0 else f"command exited {code}")


AGENT = CommandAgent
