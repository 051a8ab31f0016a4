"""The `nop` agent."""

from __future__ import annotations

import attrs

from daemon.agents.base import Agent, AgentContext, AgentResult


@attrs.frozen
class NopAgent(Agent):
    name = "nop"
    description = "does nothing: the baseline every task's tests must fail"

    async def run(self, ctx: AgentContext) -> AgentResult:
        return AgentResult(turns=0)


AGENT = NopAgent
