"""The `oracle` agent: the task's own solution."""

from __future__ import annotations

import attrs

from daemon.agents.base import SOLUTION_DIR, Agent, AgentContext, AgentError, AgentResult


@attrs.frozen
class OracleAgent(Agent):
    name = "oracle"
    description = "runs the task's own solution/solve.sh: proves the task can be solved"

    async def run(self, ctx: AgentContext) -> AgentResult:
        if "solve.sh" not in ctx.task.solution_files:
            raise AgentError(f"task {ctx.task.id} has no solution/solve.sh for the oracle agent")
        await ctx.sandbox.put_files(ctx.task.solution_files, SOLUTION_DIR)
        # `[solution.env]` of task.toml, as Harbor hands it to solve.sh.
        code = await ctx.sh(f"bash {SOLUTION_DIR}/solve.sh",
                            environment=ctx.task.solution_env or None)
        return AgentResult(turns=0, note=None if code == 0 else f"solve.sh exited {code}")


AGENT = OracleAgent
