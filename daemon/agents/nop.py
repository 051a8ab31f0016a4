"""The `nop` agent."""

from __future__ import annotations

import attrs

from daemon.agents.base import AgentContext, AgentResult


@attrs.frozen
class NopAgent:
    """Does nothing: the baseline every task's tests must fail."""

    name: str = "nop"

    async def run(self, ctx: AgentContext) -> AgentResult:
        return AgentResult(turns=0)
