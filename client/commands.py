"""Scripting sub-commands that talk to the daemon: daemon, load, start, stop, status, events,
compare — and `run` when a daemon runs. Registered into client/cli.py's parser by `register`.

Exit status: 0 done, 1 failed (or not every task passed, for --wait / run), 2 bad input (the
daemon said the params or the suite are wrong), 130 interrupted. Data goes to stdout (one
JSON document with --json; NDJSON for `events`), messages to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from client.cli import (
    EXIT_NOT_ALL_PASSED,
    EXIT_OK,
    BadInput,
    add_run_options,
    task_ids,
)
from client.connection import Connection, DaemonUnavailable, RpcError, open_connection
from client.render import Progress
from client.wire import read
from protocol import RunReport, converter, structure
from protocol.events import TBRunComplete
from protocol.rpc import INVALID_PARAMS, LOAD_FAILED, StateSnapshot


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def add_daemon_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="a daemon's WebSocket, ws://HOST:PORT (default: the local "
                   "daemon's Unix socket)")
    p.add_argument("--token", help="token for --url (default: the local token file)")


def daemon_path(args: argparse.Namespace, path: str) -> str:
    """A path as the daemon must see it: absolute for the local daemon (it has its own
    working directory), as typed for a daemon on another box."""
    return path if args.url else os.path.abspath(path)


def connect(args: argparse.Namespace, *, autostart: bool = True) -> Any:
    """The daemon named by --url/--token, else the local one (started when allowed)."""
    return open_connection(args.url, args.token, autostart=autostart and args.url is None)


def _talk(fn: Callable[[Connection], Awaitable[int]], args: argparse.Namespace, *,
          autostart: bool = True) -> int:
    """Run `fn` with a connection to the daemon; RPC errors become exit statuses."""

    async def main() -> int:
        async with connect(args, autostart=autostart) as conn:
            return await fn(conn)

    try:
        return trio.run(main)
    except RpcError as exc:
        if exc.code in (INVALID_PARAMS, LOAD_FAILED):
            raise BadInput(exc.message) from exc
        print(f"tbhud: {exc.message}", file=sys.stderr)
        return EXIT_NOT_ALL_PASSED
    except DaemonUnavailable as exc:
        print(f"tbhud: {exc}", file=sys.stderr)
        return EXIT_NOT_ALL_PASSED


# -- daemon ----------------------------------------------------------------------------------
def cmd_daemon(args: argparse.Namespace) -> int:
    from daemon.serving import process

    options = process.Options(listen=args.listen, allow_remote=args.allow_remote)
    try:
        if args.action == "status":
            return _daemon_status(args)
        if args.action == "stop":
            stopped = process.stop()
            print("stopped the daemon" if stopped else "no daemon runs", file=sys.stderr)
            return EXIT_OK
        options.address()  # refuse a bad --listen here, not in the log of a detached child
        if args.foreground:
            return process.run_foreground(options, args.ready_fd)
        status, started = process.start_background(options)
    except process.DaemonError as exc:
        print(f"tbhud: {exc}", file=sys.stderr)
        return EXIT_NOT_ALL_PASSED
    if started:
        print(f"started the daemon: pid {status.pid}, socket {status.socket}, "
              f"url {status.url or '-'}", file=sys.stderr)
    else:
        print(process.already_running_text(), file=sys.stderr)
    return EXIT_OK


def _daemon_status(args: argparse.Namespace) -> int:
    from daemon.serving import process

    status = process.read_status()
    if status is None:
        print("no tbhud daemon runs (`tbhud daemon` starts one)", file=sys.stderr)
        return EXIT_NOT_ALL_PASSED
    if args.json:
        _print_json(process.status_dict(status))
    else:
        print(f"pid      {status.pid}\nsocket   {status.socket}\nurl      {status.url or '-'}"
              f"\ntoken    {status.token_file}\nversion  {status.version}")
    return EXIT_OK


# -- suites and runs -------------------------------------------------------------------------
def cmd_load(args: argparse.Namespace) -> int:
    path = daemon_path(args, args.path)

    async def go(conn: Connection) -> int:
        suite = await conn.call("loadTBSuite", {"path": path})
        if args.json:
            _print_json(suite)
        else:
            from client.render import table

            print(f"{suite['name']} {suite['version']}: {len(suite['tasks'])} task(s)")
            print(table(["task", "difficulty", "category", "name"],
                        [[t["id"], t["difficulty"], t["category"], t["name"]]
                         for t in suite["tasks"]]))
        return EXIT_OK
    return _talk(go, args)


def start_params(args: argparse.Namespace) -> dict[str, Any]:
    """startTBRun params from the run options."""
    params: dict[str, Any] = {
        "suitePath": daemon_path(args, args.path), "agent": args.agent,
        "concurrency": args.concurrency, "timeoutMultiplier": args.timeout_multiplier,
        "testgen": not args.no_testgen}
    optional = {"taskIds": task_ids(args), "agentCommand": args.agent_command,
                "model": args.model, "maxTurns": args.max_turns, "image": args.image}
    params.update({k: v for k, v in optional.items() if v is not None})
    return params


async def follow_run(conn: Connection, params: dict[str, Any], progress: Progress) -> RunReport:
    """Subscribe, start the run, hand its events to `on_event` until it completes, and
    return its stored report. The first SIGINT stops the run (it is still recorded and
    reported); a second one leaves at once (the daemon finishes stopping it)."""
    await conn.call("subscribe")
    run_id = (await conn.call("startTBRun", params))["runId"]
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signals() -> None:
                async for _ in signals:
                    if await conn.call("stopTBRun", {"runId": run_id}):
                        print("tbhud: stopping the run (Ctrl-C again to leave it to the "
                              "daemon)", file=sys.stderr)
                        break
                async for _ in signals:
                    raise KeyboardInterrupt

            nursery.start_soon(on_signals)
            nursery.start_soon(progress.redraw_periodically)
            async for event in conn.events():
                if getattr(event, "run_id", None) == run_id:
                    progress(event)
                if isinstance(event, TBRunComplete) and event.run_id == run_id:
                    break
            else:
                raise DaemonUnavailable("the daemon closed the connection during the run")
            nursery.cancel_scope.cancel()
    return structure(await conn.call("getRun", {"runId": run_id}), RunReport)


def report_exit(report: RunReport, as_json: bool) -> int:
    """Print a run's report like `tbhud run` does; 0 only when every task succeeded."""
    if as_json:
        _print_json(converter.unstructure(report))
    else:
        from client.render import report_text

        print(report_text(report))
    all_passed = report.passed == len(report.task_ids) and report.status == "completed"
    return EXIT_OK if all_passed else EXIT_NOT_ALL_PASSED


def cmd_start(args: argparse.Namespace) -> int:
    async def go(conn: Connection) -> int:
        if args.wait:
            progress = Progress(verbose=args.verbose)
            try:
                report = await follow_run(conn, start_params(args), progress)
            finally:
                progress.close()
            return report_exit(report, args.json)
        result = await conn.call("startTBRun", start_params(args))
        if args.json:
            _print_json(result)
        else:
            print(result["runId"])
        return EXIT_OK
    return _talk(go, args)


def run_via_daemon(args: argparse.Namespace) -> RunReport | None:
    """`tbhud run` through a running daemon, so attached HUDs see it; None when no daemon
    answers (the caller then runs in-process). Raises BadInput for bad params or suites."""
    progress = Progress(verbose=args.verbose)

    async def main() -> RunReport | None:
        connected = False
        try:
            async with connect(args, autostart=False) as conn:
                connected = True
                return await follow_run(conn, start_params(args), progress)
        except DaemonUnavailable:
            if connected or args.url:  # a daemon named by --url must answer
                raise
            return None

    try:
        return trio.run(main)
    except RpcError as exc:
        if exc.code in (INVALID_PARAMS, LOAD_FAILED):
            raise BadInput(exc.message) from exc
        raise BadInput(f"the daemon refused the run: {exc.message}") from exc
    finally:
        progress.close()


def cmd_stop(args: argparse.Namespace) -> int:
    async def go(conn: Connection) -> int:
        params = {"runId": args.run_id} if args.run_id else {}
        result = await conn.call("stopTBRun", params)
        if args.json:
            _print_json(result)
        else:
            print("stopping the run" if result["stopped"] else "no run to stop",
                  file=sys.stderr)
        return EXIT_OK
    return _talk(go, args, autostart=False)


def cmd_status(args: argparse.Namespace) -> int:
    async def go(conn: Connection) -> int:
        state = await conn.call("getState")
        if args.json:
            _print_json(state)
        else:
            print(status_text(read(state, StateSnapshot)))
        return EXIT_OK
    return _talk(go, args, autostart=False)


def status_text(state: StateSnapshot) -> str:
    from client.render import duration, table

    suite, run, counts = state.suite, state.active_run, state.counts
    lines = [f"daemon {state.version}",
             f"suite  {suite.name} ({len(suite.tasks)} tasks, {suite.path or '-'})"
             if suite else "suite  -",
             f"run    {run.run_id} ({run.agent or '-'}), running" if run
             else "run    - (no active run)"]
    if state.tasks:
        lines.append(f"tasks  {counts.done}/{counts.total} done: {counts.passed} "
                     f"passed, {counts.failed} failed, {counts.timeout} timeout, "
                     f"{counts.error} error")
        lines.append("")
        lines.append(table(
            ["task", "status", "phase", "turn", "time", "container"],
            [[t.task_id, t.status, t.phase or "-",
              "-" if t.current_turn is None else str(t.current_turn),
              duration(t.duration_ms if t.duration_ms is not None else t.elapsed_ms),
              (t.container_id or "-")[:12]] for t in state.tasks]))
    return "\n".join(lines)


def cmd_events(args: argparse.Namespace) -> int:
    async def go(conn: Connection) -> int:
        await conn.call("subscribe")
        # As sent: fields and event types newer than this client pass through unchanged.
        async for frame in conn.frames():
            sys.stdout.write(json.dumps(frame, separators=(",", ":"), ensure_ascii=False) + "\n")
            sys.stdout.flush()
        print("tbhud: the daemon closed the connection", file=sys.stderr)
        return EXIT_NOT_ALL_PASSED

    try:
        return _talk(go, args)
    except BrokenPipeError:  # `tbhud events | head`
        sys.stdout = None  # type: ignore[assignment]  # nothing more to flush
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from daemon.paths import data_dir
    from daemon.store import Store
    from protocol.rpc import Comparison, compare

    if args.url:  # another box's history: ask its daemon
        holder: dict[str, Comparison] = {}

        async def go(conn: Connection) -> int:
            raw = await conn.call("compareRuns", {"runId": args.run_id,
                                                  "baselineId": args.baseline_id})
            holder["result"] = structure(raw, Comparison)
            return EXIT_OK

        if _talk(go, args, autostart=False) != EXIT_OK:
            return EXIT_NOT_ALL_PASSED
        result = holder["result"]
    else:
        with Store(data_dir()) as store:  # the history is on disk: no daemon needed
            run, baseline = store.get_run(args.run_id), store.get_run(args.baseline_id)
        for rid, report in ((args.run_id, run), (args.baseline_id, baseline)):
            if report is None:
                raise BadInput(f"no run {rid!r} in the history (see `tbhud history`)")
        assert run is not None and baseline is not None
        result = compare(run, baseline)
    if args.json:
        _print_json(converter.unstructure(result))
        return EXIT_OK
    from client.render import table

    rows = [[t.task_id, t.change, t.baseline_outcome or "-", t.outcome or "-",
             "-" if t.duration_delta_ms is None else f"{t.duration_delta_ms / 1000:+.1f}s"]
            for t in result.tasks]
    print(table(["task", "change", "baseline", "run", "time"], rows))
    print(f"\npass rate {result.baseline_pass_rate:.1%} -> {result.pass_rate:.1%} "
          f"({result.pass_rate_delta * 100:+.1f} points); {result.improved} improved, "
          f"{result.regressed} regressed, {result.unchanged} unchanged, {result.added} added, "
          f"{result.removed} removed; time {result.duration_delta_ms / 1000:+.1f}s")
    return EXIT_OK


# -- registration ----------------------------------------------------------------------------
def register(sub: Any) -> None:
    """Add the daemon sub-commands to `tbhud`'s sub-parsers."""
    p = sub.add_parser("daemon", help="start the daemon in the background (or status / stop)")
    p.add_argument("action", nargs="?", choices=("start", "status", "stop"), default="start")
    p.add_argument("--foreground", action="store_true",
                   help="run in this process until SIGTERM (systemd, tests)")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="WebSocket address (default $TBHUD_LISTEN or 127.0.0.1:4242; "
                        "`none` for the Unix socket only)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow --listen on a non-loopback address")
    p.add_argument("--json", action="store_true", help="status: one JSON object")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_daemon)

    p = sub.add_parser("load", help="load a suite into the daemon (HUDs show it)")
    p.add_argument("path", help="a TB2 task directory, a dataset directory or a suite JSON")
    p.add_argument("--json", action="store_true")
    add_daemon_options(p)
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("start", help="start a run in the daemon; prints its id")
    add_run_options(p)
    p.add_argument("--wait", action="store_true",
                   help="follow it to the end like `tbhud run` (same output, exit status)")
    p.add_argument("-v", "--verbose", action="store_true", help="--wait: also task output")
    p.add_argument("--json", action="store_true")
    add_daemon_options(p)
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("stop", help="stop the active run (or RUN_ID)")
    p.add_argument("run_id", nargs="?")
    p.add_argument("--json", action="store_true")
    add_daemon_options(p)
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("status", help="the daemon's suite, active run and tasks")
    p.add_argument("--json", action="store_true", help="the getState object")
    add_daemon_options(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("events", help="every daemon event as NDJSON until interrupted")
    p.add_argument("--json", action="store_true", help="(the default; for uniformity)")
    add_daemon_options(p)
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("compare", help="a run against a baseline, task by task")
    p.add_argument("run_id")
    p.add_argument("baseline_id")
    p.add_argument("--json", action="store_true")
    add_daemon_options(p)
    p.set_defaults(func=cmd_compare)

