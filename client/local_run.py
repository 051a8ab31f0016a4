"""`tbhud run` with the engine in this process (when no daemon answers).

Ctrl-C stops the run the way `stopTBRun` does: running tasks are killed, recorded as stopped,
their containers removed, and the summary is still printed. A second Ctrl-C cancels at once;
containers are still removed on the way out.
"""

from __future__ import annotations

import argparse
import signal

import trio

from client.cli import BadInput, agent_options, task_ids
from client.render import Progress
from daemon.agents import OptionError, resolve_options
from daemon.engine.run import Engine, RunConfig
from daemon.paths import data_dir
from daemon.sandbox import open_local
from daemon.store import Store
from daemon.tasks.loader import load
from protocol import RunReport


def config_from_args(args: argparse.Namespace, *, container_stats: bool) -> RunConfig:
    try:  # a bad agent or option is refused here, before anything starts
        options = resolve_options(
            args.agent, agent_options(args), agent_command=args.agent_command,
            model=args.model, max_turns=args.max_turns,
            testgen=False if args.no_testgen else None)
    except OptionError as exc:
        raise BadInput(str(exc)) from exc
    return RunConfig(agent=args.agent, agent_options=options, concurrency=args.concurrency,
                     timeout_multiplier=args.timeout_multiplier,
                     container_stats=container_stats)


def run_locally(args: argparse.Namespace) -> RunReport:
    suite = load(args.path, default_image=args.image)
    tasks = suite.select(task_ids(args))
    config = config_from_args(args, container_stats=False)
    home = data_dir()
    store = Store(home)
    progress = Progress(verbose=args.verbose)
    holder: dict[str, RunReport] = {}

    async def main() -> None:
        sandboxes = await open_local(home)
        await sandboxes.remove_orphans()
        engine = Engine(store, progress, sandboxes)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def run_it(task_status: trio.TaskStatus[str]) -> None:
                    holder["report"] = await engine.run(suite, tasks, config,
                                                        task_status=task_status)
                    nursery.cancel_scope.cancel()  # ends the signal watcher

                run_id = await nursery.start(run_it)
                nursery.start_soon(progress.redraw_periodically)
                stopping = False
                async for _ in signals:
                    if not stopping and engine.stop_run(run_id):
                        stopping = True
                        progress.note("stopping: killing the running tasks "
                                      "(Ctrl-C again to abort at once)")
                    else:
                        nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        progress.close()
        store.close()
    if "report" not in holder:
        raise KeyboardInterrupt
    return holder["report"]
