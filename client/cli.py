"""`tbhud` command line. Each sub-command is a small function; bad input exits 2 with one
clear line on stderr and no traceback."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from protocol import converter

EXIT_OK, EXIT_NOT_ALL_PASSED, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(Exception):
    """Exit status 2 with this message."""


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def agent_option(text: str) -> tuple[str, object]:
    """`-o NAME=VALUE`: VALUE as a JSON scalar when it reads as one (3, true, "x"), else as
    the text itself; the daemon checks it against the type the agent declares."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return name, value if isinstance(value, str | int | float | bool) else raw


def add_agent_options(p: argparse.ArgumentParser) -> None:
    """-o/--agent-option, repeatable; `agent_options(args)` gives them as a dict."""
    p.add_argument("-o", "--agent-option", dest="agent_option", action="append", default=[],
                   type=agent_option, metavar="NAME=VALUE",
                   help="an option of the agent (repeatable; `tbhud agents` lists each "
                   "agent's); VALUE is read as JSON when it parses (3, true, '\"text\"'), "
                   "else taken as text")


def agent_options(args: argparse.Namespace) -> dict[str, object]:
    return dict(args.agent_option)


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a TB2 task directory, a dataset directory or a suite JSON")
    p.add_argument("--tasks", help="comma-separated task ids (default: all)")
    p.add_argument("--agent", default="oracle",
                   help="the agent to run (default: oracle; see `tbhud agents`)")
    add_agent_options(p)
    p.add_argument("--agent-command", help="shorthand for -o command=CMD")
    p.add_argument("--model", help="shorthand for -o model=M (agents that take one)")
    p.add_argument("--max-turns", type=positive_int,
                   help="shorthand for -o max_turns=N (agents that take one)")
    p.add_argument("--no-testgen", action="store_true",
                   help="shorthand for -o testgen=false (agents that take one)")
    p.add_argument("--concurrency", type=positive_int, default=1,
                   help="tasks run side by side (default 1)")
    p.add_argument("--timeout-multiplier", type=positive_float, default=1.0,
                   help="scales every task's agent, verifier and build time limits")
    p.add_argument("--image", help="image for suite tasks that name none "
                   "(default: the project's base image)")


def task_ids(args: argparse.Namespace) -> list[str] | None:
    return [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None


def cmd_run(args: argparse.Namespace) -> int:
    from client.commands import report_exit, run_via_daemon

    # A running daemon takes the run, so that attached HUDs see it; else run in-process.
    report = run_via_daemon(args)
    if report is None:
        from client.local_run import run_locally

        report = run_locally(args)
    return report_exit(report, args.json)


def _store():  # type: ignore[no-untyped-def]
    """The local history (closed when used as a context manager)."""
    from daemon.paths import data_dir
    from daemon.store import Store

    return Store(data_dir())


def _ask_daemon(args: argparse.Namespace, method: str, params: dict[str, object]) -> object:
    """One request to the daemon named by --url (whose history lives on its own box)."""
    import trio

    from client.commands import connect

    async def main() -> object:
        async with connect(args, autostart=False) as conn:
            return await conn.call(method, params)

    return trio.run(main)


def cmd_history(args: argparse.Namespace) -> int:
    from protocol import structure
    from protocol.rpc import HistoryResult

    if args.url:
        raw = _ask_daemon(args, "getRunHistory", {"limit": args.limit})
        runs = structure(raw, HistoryResult).runs
    else:
        with _store() as store:
            runs = store.list_runs(args.limit)
    if args.json:
        _print_json([converter.unstructure(r) for r in runs])
    else:
        from client.render import history_text

        print(history_text(runs) if runs else "no runs yet")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from protocol import RunReport, structure
    from protocol.rpc import UNKNOWN_RUN, RpcError

    if args.url:
        try:
            report = structure(_ask_daemon(args, "getRun", {"runId": args.run_id}), RunReport)
        except RpcError as exc:
            if exc.code != UNKNOWN_RUN:
                raise
            report = None
    else:
        with _store() as store:
            report = store.get_run(args.run_id)
    if report is None:
        raise BadInput(f"no run {args.run_id!r} in the history (see `tbhud history`)")
    if args.json:
        _print_json(converter.unstructure(report))
    else:
        from client.render import report_text

        print(report_text(report))
    return EXIT_OK


def cmd_hud(args: argparse.Namespace) -> int:
    from client.hud.app import main as hud_main  # prompt_toolkit only when a HUD is wanted

    options = {key: value for key, value in (
        ("agent", args.agent), ("agentOptions", agent_options(args) or None),
        ("agentCommand", args.agent_command), ("model", args.model),
        ("concurrency", args.concurrency)) if value is not None}
    return hud_main(args.path or "", url=args.url, token=args.token, run_options=options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tbhud", description="Run Terminal-Bench tasks in Docker and watch them live.")
    sub = parser.add_subparsers(dest="command", required=True)

    from client.commands import add_daemon_options, register

    p = sub.add_parser("run", help="run a suite to the end; summary on stdout")
    add_run_options(p)
    add_daemon_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="also print task output")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("history", help="past runs, newest first")
    p.add_argument("--limit", type=positive_int, default=50)
    p.add_argument("--json", action="store_true")
    add_daemon_options(p)
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("show", help="one run's per-task results")
    p.add_argument("run_id")
    p.add_argument("--json", action="store_true")
    add_daemon_options(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("hud", aliases=["attach"],
                       help="full-screen HUD attached to the daemon (started if needed)")
    p.add_argument("path", nargs="?", help="suite path to put in the path field")
    p.add_argument("--url", help="daemon WebSocket, ws://HOST:PORT (default: the local daemon)")
    p.add_argument("--token", help="token for --url (default: read from the local token file)")
    p.add_argument("--agent", help="agent for runs started from the HUD (daemon default: "
                   "oracle; see `tbhud agents`)")
    add_agent_options(p)
    p.add_argument("--agent-command", help="shorthand for -o command=CMD")
    p.add_argument("--model", help="shorthand for -o model=M (agents that take one)")
    p.add_argument("--concurrency", type=positive_int, help="tasks run side by side")
    p.set_defaults(func=cmd_hud)

    register(sub)  # daemon, load, start, stop, status, events, compare
    from client import agents_command

    agents_command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from client.connection import DaemonUnavailable
    from daemon.sandbox import SandboxError
    from daemon.tasks.model import LoadError
    from protocol.rpc import RpcError

    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (BadInput, LoadError) as exc:
        print(f"tbhud: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (SandboxError, DaemonUnavailable, RpcError) as exc:
        print(f"tbhud: {exc}", file=sys.stderr)
        return EXIT_NOT_ALL_PASSED
    except KeyboardInterrupt:
        print("tbhud: interrupted", file=sys.stderr)
        return 130
