"""Agents: what runs inside the task's sandbox during the agent phase, one module each."""

from __future__ import annotations

from daemon.agents.base import Agent
from daemon.agents.claude_code import ClaudeCodeAgent
from daemon.agents.command import CommandAgent
from daemon.agents.nop import NopAgent
from daemon.agents.oracle import OracleAgent

AGENT_NAMES = ("oracle", "nop", "command", "claude-code")


def make_agent(name: str, *, command: str | None = None, testgen: bool = True) -> Agent:
    """The agent called `name`; ValueError (bad input) for an unknown one."""
    if name == "oracle":
        return OracleAgent()
    if name == "nop":
        return NopAgent()
    if name == "command":
        if not command:
            raise ValueError("--agent command needs --agent-command CMD")
        return CommandAgent(command)
    if name == "claude-code":
        return ClaudeCodeAgent(testgen=testgen)
    raise ValueError(f"unknown agent {name!r}; expected one of {', '.join(AGENT_NAMES)}")
