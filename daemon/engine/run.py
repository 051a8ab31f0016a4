"""Run engine: runs a suite's tasks in sandboxes and reports everything as protocol events.

    engine = Engine(store, emit, sandboxes)   # sandboxes: a daemon.sandbox.SandboxProvider
    report = await engine.run(suite, tasks, RunConfig(...))   # nursery.start() gives the run id

One task, one sandbox (a container): setup (image, sandbox, files) -> agent -> verification
-> teardown. The sandbox is removed on every path out of a task: success, error, timeout, stop,
Ctrl-C and cancellation. Stopping a run (`stop_run`) or a task (`stop_task`) records the
stopped tasks as `error` ("stopped") and the run as `stopped`; cancelling `run()` from
outside does the same before the cancellation goes on.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import attrs
import trio

from daemon.agents import Agent, prepare_agent
from daemon.engine.task import TaskRun, _ms
from daemon.sandbox import SandboxProvider
from daemon.store import Store, now_iso
from daemon.tasks.model import Suite, TaskSpec
from protocol import Event, RunReport
from protocol.events import TBRunComplete, TBRunStart
from protocol.rpc import DEFAULT_CONCURRENCY, PULL_POLICIES, PullPolicy


@attrs.frozen
class RunConfig:
    agent: str = "oracle"
    # The agent's options by name, as it declares them (daemon/agents: make_agent checks
    # them); what is not given takes the declared default.
    agent_options: dict[str, Any] = attrs.Factory(dict)
    concurrency: int = DEFAULT_CONCURRENCY
    timeout_multiplier: float = 1.0
    # Replaces every task's agent timeout (the HUD's startTBRun `timeout`, seconds).
    agent_timeout_sec: float | None = None
    pull: PullPolicy = "missing"
    # Live container CPU/memory for HUDs; `tbhud run` alone has nobody to show them to.
    container_stats: bool = True

    def __attrs_post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not (self.timeout_multiplier > 0 and math.isfinite(self.timeout_multiplier)):
            raise ValueError("timeout multiplier must be a positive number")
        if self.pull not in PULL_POLICIES:
            raise ValueError(f"pull must be one of {', '.join(PULL_POLICIES)}, got {self.pull!r}")


def new_run_id() -> str:
    return f"tb-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


@attrs.define
class _Run:
    run_id: str
    stopping: bool = False
    task_scopes: dict[str, trio.CancelScope] = attrs.Factory(dict)


class Engine:
    def __init__(self, store: Store, emit: Callable[[Event], None],
                 sandboxes: SandboxProvider) -> None:
        self.store = store
        self.emit = emit
        self.sandboxes = sandboxes
        self.runs: dict[str, _Run] = {}

    # -- steering --------------------------------------------------------------------------

    def stop_run(self, run_id: str) -> bool:
        run = self.runs.get(run_id)
        if run is None:
            return False
        run.stopping = True  # tasks not started yet will not start
        for scope in run.task_scopes.values():
            scope.cancel()
        return True

    def stop_task(self, run_id: str, task_id: str) -> bool:
        run = self.runs.get(run_id)
        scope = run.task_scopes.get(task_id) if run else None
        if scope is None:
            return False
        scope.cancel()
        return True

    # -- a run -----------------------------------------------------------------------------

    async def run(self, suite: Suite, tasks: list[TaskSpec], config: RunConfig, *,
                  run_id: str | None = None, agent: Agent | None = None,
                  task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> RunReport:
        """`agent`: the run's agent, prepared already (prepare_agent); else it is made and
        prepared here, before anything is stored or any sandbox starts."""
        if agent is None:
            agent = await prepare_agent(config.agent, config.agent_options)
        run = _Run(run_id or new_run_id())
        task_ids = [t.id for t in tasks]
        timestamp = now_iso()
        self.store.begin_run(run.run_id, suite_name=suite.name, suite_version=suite.version,
                             suite_path=suite.path, agent=config.agent, task_ids=task_ids,
                             timestamp=timestamp)
        self.runs[run.run_id] = run
        self.emit(TBRunStart(run_id=run.run_id, suite_name=suite.name,
                             suite_version=suite.version, total_tasks=len(tasks),
                             task_ids=task_ids, timestamp=timestamp, agent=config.agent,
                             concurrency=config.concurrency))
        task_status.started(run.run_id)
        started = time.monotonic()
        # Slots are taken in suite order before each task is spawned, so tasks start in the
        # order given (trio does not promise FIFO among tasks waiting on a limiter).
        slots = trio.Semaphore(config.concurrency)
        finished = False
        try:
            async with trio.open_nursery() as nursery:
                for index, task in enumerate(tasks):
                    await slots.acquire()
                    if run.stopping:
                        slots.release()
                        break  # the rest never start: no result, shown as not run
                    # Registered before the task runs, so a stop in between reaches it too.
                    scope = run.task_scopes[task.id] = trio.CancelScope()
                    nursery.start_soon(self._task_slot, run, agent, task, index, len(tasks),
                                       config, scope, slots)
            finished = True
        finally:
            # Also on cancellation from outside (Ctrl-C, daemon shutdown): the run is stored
            # as stopped and clients hear the end of it. (No await here: nothing to shield.)
            status = "stopped" if run.stopping or not finished else "completed"
            report = self.store.finish_run(run.run_id, status=status,
                                           total_duration_ms=_ms(time.monotonic() - started))
            self.emit(TBRunComplete(
                run_id=run.run_id, pass_rate=report.pass_rate, passed=report.passed,
                failed=report.failed, timeout=report.timeout, error=report.error,
                total_duration_ms=report.total_duration_ms, status=status))
            del self.runs[run.run_id]
        return report

    async def _task_slot(self, run: _Run, agent: Any, task: TaskSpec, index: int, total: int,
                         config: RunConfig, scope: trio.CancelScope,
                         slots: trio.Semaphore) -> None:
        try:
            await TaskRun(self, run.run_id, agent, task, index, total, config, scope).run()
        finally:
            del run.task_scopes[task.id]
            slots.release()
