"""`tbhud agents [--json]`: the agents the daemon can run, as it declares them (getAgents):
name, description, options (for `-o NAME=VALUE`) and what each needs from the host.

Asks the daemon (started on demand, like the other commands) rather than the registry in this
process: the daemon is what runs the agents, on its box (`--url`), with its environment.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from client.commands.common import EXIT_OK, add_daemon_options, print_json, talk


def needs_lines(needs: dict[str, Any]) -> list[str]:
    """What an agent needs from the host, one line per kind it names."""
    kinds = (
        ("credentials", "a credential, one of (daemon's environment)"),
        ("env", "passed on when set (daemon's environment)"),
        ("binaries", "on the PATH in the task's image"),
        ("files", "in the task's container"),
    )
    return [f"{words}: {', '.join(needs[key])}" for key, words in kinds if needs.get(key)]


def agents_text(agents: list[dict[str, Any]]) -> str:
    from client.render import table

    blocks = []
    for agent in agents:
        lines = [f"{agent['name']}: {agent.get('description', '')}"]
        rows = [[o["name"], o["type"],
                 "required" if o.get("required") else
                 "-" if o.get("default") is None else json.dumps(o["default"]),
                 o.get("help", "")] for o in agent.get("options") or []]
        table_lines = table(["option (-o NAME=VALUE)", "type", "default", "help"],
                            rows).splitlines() if rows else ["no options"]
        needs = needs_lines(agent.get("needs") or {}) or ["nothing"]
        lines += ["  " + line for line in table_lines]
        lines += ["  needs:", *("    " + line for line in needs)]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def cmd_agents(args: argparse.Namespace) -> int:
    async def go(conn: Any) -> int:
        agents = (await conn.call("getAgents"))["agents"]
        if args.json:
            print_json(agents)
        else:
            print(agents_text(agents))
        return EXIT_OK
    return talk(go, args)


def register(sub: Any) -> None:
    """Add `agents` to `tbhud`'s sub-parsers."""
    p = sub.add_parser("agents", help="the agents the daemon can run: options, needs")
    p.add_argument("--json", action="store_true", help="the getAgents list")
    add_daemon_options(p)
    p.set_defaults(func=cmd_agents)
