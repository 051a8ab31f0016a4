"""`tbhud hud` (alias `attach`): the full-screen HUD attached to a daemon."""

from __future__ import annotations

import argparse
from typing import Any

from client.commands.common import add_ssh_option, non_negative_int, positive_int
from client.commands.runs import add_agent_options, add_pull_option, agent_options


def cmd_hud(args: argparse.Namespace) -> int:
    from client.hud.app import main as hud_main  # prompt_toolkit only when a HUD is wanted

    options = {key: value for key, value in (
        ("agent", args.agent), ("agentOptions", agent_options(args) or None),
        ("agentCommand", args.agent_command), ("model", args.model),
        ("concurrency", args.concurrency), ("pull", args.pull),
        ("attempts", args.attempts), ("retries", args.retries),
        ("queue", True if args.queue else None)) if value is not None}
    return hud_main(args.path or "", url=args.url, token=args.token, run_options=options)


def register(sub: Any) -> None:
    p = sub.add_parser("hud", aliases=["attach"],
                       help="full-screen HUD attached to the daemon (started if needed)")
    p.add_argument("path", nargs="?", help="suite path to put in the path field")
    p.add_argument("--url", help="daemon WebSocket, ws://HOST:PORT (default: the local daemon)")
    p.add_argument("--token", help="token for --url (default: read from the local token file)")
    add_ssh_option(p)
    p.add_argument("--agent", help="agent for runs started from the HUD (daemon default: "
                   "oracle; see `tbhud agents`)")
    add_agent_options(p)
    p.add_argument("--concurrency", type=positive_int, help="tasks run side by side")
    add_pull_option(p, default=None)
    p.add_argument("-k", "--attempts", type=positive_int,
                   help="runs started from the HUD run every task K times (pass@k)")
    p.add_argument("--retries", type=non_negative_int,
                   help="tries of a retryable infrastructure error (daemon default 1)")
    p.add_argument("--queue", action="store_true",
                   help="Ctrl+T while a run is active queues the new run behind it")
    p.set_defaults(func=cmd_hud)
