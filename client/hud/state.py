"""What the HUD knows: plain objects fed by daemon events and `getState` snapshots.

Pure: no I/O, no prompt_toolkit, no trio. The clock is injected so that tests can move time.
The layout reads this state on every redraw; the key bindings change the view fields; the
connection task feeds events in and calls `invalidate()` afterwards.

A snapshot (`getState`) replaces what the daemon owns (suite, run, task statuses, recent
output, history) and keeps what is the user's own (checked tasks, cursor, open panels), so a
reconnect or a second HUD shows the daemon's truth without losing the user's place.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from client.render import duration
from protocol import RunReport, TaskResult, camel, converter
from protocol.events import (
    AgentMessage,
    ContainerStart,
    ContainerStats,
    ContainerStop,
    ErrorEvent,
    RunSummary,
    SuiteTask,
    TBRunComplete,
    TBRunHistory,
    TBRunStart,
    TBSuiteInfo,
    TBTaskComplete,
    TBTaskOutput,
    TBTaskProgress,
    TBTaskStart,
    ToolResult,
    ToolUse,
)
from protocol.rpc import Comparison

OUTPUT_LINES = 5000  # per task; older lines fall off (the daemon keeps the full log on disk)
DONE = ("success", "failure", "timeout", "error")
STATUS_ICONS = {"pending": "·", "running": "▶", "success": "✓", "failure": "✗",
                "timeout": "⏱", "error": "!"}


@attrs.define(eq=False)
class ContainerView:
    container_id: str
    image: str
    cpus: float | None = None
    memory_mb: int | None = None
    cpu_percent: float | None = None
    memory_bytes: int | None = None
    memory_limit_bytes: int | None = None
    stopped: bool = False
    exit_code: int | None = None


@attrs.define(eq=False)
class TaskView:
    id: str
    name: str
    category: str = "uncategorized"
    difficulty: str = "medium"
    in_suite: bool = True
    # None: not part of the run on screen; else pending | running | success | failure | ...
    status: str | None = None
    phase: str | None = None
    turn: int | None = None
    # The daemon reports elapsed time when the phase or turn changes; between reports the
    # HUD counts on from `elapsed_at` (the state clock when the report arrived).
    elapsed_ms: int = 0
    elapsed_at: float = 0.0
    duration_ms: int | None = None
    error: str | None = None
    tests_passed: int | None = None
    tests_total: int | None = None
    container: ContainerView | None = None
    output: deque[tuple[str, str]] = attrs.Factory(lambda: deque(maxlen=OUTPUT_LINES))

    def reset_for_run(self) -> None:
        self.status, self.phase, self.turn = "pending", None, None
        self.elapsed_ms, self.duration_ms, self.error = 0, None, None
        self.tests_passed = self.tests_total = None
        self.container = None
        self.output.clear()


@attrs.frozen
class Counts:
    passed: int = 0
    failed: int = 0
    timeout: int = 0
    error: int = 0
    total: int = 0

    @property
    def done(self) -> int:
        return self.passed + self.failed + self.timeout + self.error


def _get(obj: dict[str, Any], key: str, default: Any = None) -> Any:
    value = obj.get(key, default)
    return default if value is None else value


def suite_from_wire(data: dict[str, Any]) -> TBSuiteInfo:
    """Lenient: a snapshot or loadTBSuite result may carry fields newer than this client."""
    tasks = [SuiteTask(id=str(t["id"]), name=str(_get(t, "name", t["id"])),
                       category=str(_get(t, "category", "uncategorized")),
                       difficulty=_get(t, "difficulty", "medium"))
             for t in data.get("tasks") or []]
    return TBSuiteInfo(name=str(_get(data, "name", "?")), version=str(_get(data, "version", "")),
                       tasks=tasks, path=data.get("path"))


def run_start_from_wire(data: dict[str, Any]) -> TBRunStart:
    return TBRunStart(run_id=data["runId"], suite_name=_get(data, "suiteName", "?"),
                      suite_version=_get(data, "suiteVersion", ""),
                      total_tasks=int(_get(data, "totalTasks", len(data.get("taskIds") or []))),
                      task_ids=list(data.get("taskIds") or []),
                      timestamp=_get(data, "timestamp", ""), agent=data.get("agent"),
                      concurrency=data.get("concurrency"))


def summary_from_wire(data: dict[str, Any]) -> RunSummary:
    # Fields newer than this client are dropped rather than refused.
    known = {camel(a.name) for a in attrs.fields(RunSummary)}
    return converter.structure({k: v for k, v in data.items() if k in known}, RunSummary)


def report_from_wire(data: dict[str, Any]) -> RunReport:
    known = {camel(a.name) for a in attrs.fields(RunReport)}
    task_known = {camel(a.name) for a in attrs.fields(TaskResult)}
    fields = {k: v for k, v in data.items() if k in known}
    fields["tasks"] = [{k: v for k, v in t.items() if k in task_known}
                       for t in data.get("tasks") or []]
    return converter.structure(fields, RunReport)


@attrs.define(eq=False)
class HudState:
    clock: Callable[[], float] = time.monotonic

    # -- the link to the daemon --
    link: str = "connecting"  # connecting | connected | reconnecting | failed
    attempt: int = 0  # reconnection attempts since the link was lost
    link_error: str | None = None
    daemon_version: str | None = None

    # -- what the daemon owns --
    suite: TBSuiteInfo | None = None
    tasks: dict[str, TaskView] = attrs.Factory(dict)  # suite order, then run-only tasks
    run: TBRunStart | None = None
    run_complete: TBRunComplete | None = None
    run_started_at: float | None = None
    history: list[RunSummary] = attrs.Factory(list)

    # -- what the user owns --
    checked: set[str] = attrs.Factory(set)
    cursor: int = 0  # index into `tasks`: the task whose output and container are shown
    follow_running: bool = True  # the cursor jumps to a task when it starts
    scroll: int = 0  # output lines scrolled back from the newest; 0 follows new lines
    history_cursor: int = 0
    report: RunReport | None = None  # a run opened from the history (Enter)
    baseline_id: str | None = None
    comparison: Comparison | None = None  # the opened run against the baseline
    show_help: bool = False
    show_history: bool = False
    confirm_stop: bool = False
    # While confirming: stop only this task (x) rather than the whole run (Ctrl+X).
    stop_task_id: str | None = None
    notice: str | None = None  # one line: the last error or what just happened
    notice_at: float = 0.0

    # -- queries -------------------------------------------------------------------------

    def notice_text(self, ttl: float = 10.0) -> str | None:
        """The notice while it is fresh; the key hints come back after `ttl` seconds."""
        if self.notice and self.clock() - self.notice_at < ttl:
            return self.notice
        return None

    def task_list(self) -> list[TaskView]:
        return list(self.tasks.values())

    def current(self) -> TaskView | None:
        views = self.task_list()
        return views[self.cursor] if 0 <= self.cursor < len(views) else None

    def run_task_ids(self) -> list[str]:
        if self.run is not None:
            return self.run.task_ids
        return [t.id for t in self.tasks.values() if t.status is not None]

    def counts(self) -> Counts:
        statuses = [self.tasks[t].status for t in self.run_task_ids() if t in self.tasks]
        total = self.run.total_tasks if self.run is not None else len(statuses)
        return Counts(statuses.count("success"), statuses.count("failure"),
                      statuses.count("timeout"), statuses.count("error"), total)

    def running(self) -> list[TaskView]:
        return [t for t in self.tasks.values() if t.status == "running"]

    def is_running(self) -> bool:
        if self.run is None or self.run_complete is not None:
            return False
        return any(self.tasks[t].status in ("pending", "running")
                   for t in self.run.task_ids if t in self.tasks)

    def elapsed_ms(self, view: TaskView) -> int | None:
        if view.status == "running":
            return view.elapsed_ms + int((self.clock() - view.elapsed_at) * 1000)
        return view.duration_ms

    def selected_ids(self) -> list[str]:
        return [t.id for t in self.tasks.values() if t.id in self.checked and t.in_suite]

    # -- the link ------------------------------------------------------------------------

    def connected(self) -> None:
        self.link, self.attempt, self.link_error = "connected", 0, None

    def lost(self, attempt: int, error: str) -> None:
        self.link, self.attempt, self.link_error = "reconnecting", attempt, error

    def failed(self, error: str) -> None:
        """The link ended on a bug of ours: no reconnecting (it would fail the same way)."""
        self.link, self.link_error = "failed", error

    # -- events --------------------------------------------------------------------------

    def apply(self, event: object) -> None:
        match event:
            case TBTaskOutput():  # first: by far the most frequent
                view = self.tasks.get(event.task_id)
                if view is None:
                    view = self._ensure(event.task_id)
                # A daemon folds lines into one event ("\n"-joined) for a lagging client.
                lines = event.text.split("\n")
                source = event.source
                view.output.extend((source, line) for line in lines)
                if self.scroll and view is self.current():
                    # Scrolled back: keep the same lines on screen while new ones arrive.
                    self.scroll = min(self.scroll + len(lines), len(view.output))
            case TBSuiteInfo():
                self.set_suite(event)
            case TBRunStart():
                self._run_start(event)
            case TBTaskStart():
                view = self._ensure(event.task_id, event.task_name, event.category,
                                    event.difficulty)
                view.status, view.phase = "running", "setup"
                view.elapsed_ms, view.elapsed_at = 0, self.clock()
                current = self.current()
                if self.follow_running and (current is None or current.status != "running"):
                    self.move_to(event.task_id)
            case TBTaskProgress():
                view = self._ensure(event.task_id)
                view.status = "running"
                view.phase = event.phase
                if event.current_turn is not None:
                    view.turn = event.current_turn
                view.elapsed_ms, view.elapsed_at = event.elapsed_ms, self.clock()
            case TBTaskComplete():
                view = self._ensure(event.task_id)
                view.status, view.duration_ms = event.outcome, event.duration_ms
                view.turn = event.turns or view.turn
                view.error = event.error
                view.tests_passed, view.tests_total = event.tests_passed, event.tests_total
                if self.follow_running and view is self.current():
                    running = self.running()
                    if running:
                        self.move_to(running[0].id)
            case TBRunComplete():
                if self.run is None or self.run.run_id == event.run_id:
                    self.run_complete = event
                    total = self.run.total_tasks if self.run else "?"
                    self.say(f"run {event.status or 'completed'}: {event.passed}/{total} "
                             f"passed in {duration(event.total_duration_ms)}")
            case TBRunHistory():
                self.history = list(event.runs)
                self.history_cursor = min(self.history_cursor, max(len(self.history) - 1, 0))
            case ContainerStart():
                self._ensure(event.task_id).container = ContainerView(
                    event.container_id, event.image, event.cpus, event.memory_mb)
            case ContainerStats():
                box = self._ensure(event.task_id).container
                if box is None or box.container_id != event.container_id:
                    box = self.tasks[event.task_id].container = ContainerView(
                        event.container_id, "?")
                box.cpu_percent, box.memory_bytes = event.cpu_percent, event.memory_bytes
                box.memory_limit_bytes = event.memory_limit_bytes
            case ContainerStop():
                box = self._ensure(event.task_id).container
                if box is not None and box.container_id == event.container_id:
                    box.stopped, box.exit_code = True, event.exit_code
            case ErrorEvent():
                where = f"{event.task_id}: " if event.task_id else ""
                self.say(f"daemon: {where}{event.message}")
            case AgentMessage() | ToolUse() | ToolResult():
                # The agent's output lines already show these; the structured form is for
                # scripts (`tbhud events`).
                pass
            case _:
                pass

    def apply_all(self, events: Iterable[object]) -> None:
        for event in events:
            self.apply(event)

    def set_suite(self, info: TBSuiteInfo) -> None:
        old_ids = [t.id for t in self.tasks.values() if t.in_suite]
        views: dict[str, TaskView] = {}
        for task in info.tasks:
            view = self.tasks.get(task.id) or TaskView(task.id, task.name)
            view.name, view.category, view.difficulty = task.name, task.category, task.difficulty
            view.in_suite = True
            views[task.id] = view
        # Tasks of the run on screen stay visible even when the new suite lacks them.
        for view in self.tasks.values():
            if view.id not in views and view.status is not None:
                view.in_suite = False
                views[view.id] = view
        current = self.current()
        self.tasks = views
        new_ids = [t.id for t in info.tasks]
        if new_ids != old_ids or self.suite is None or self.suite.path != info.path:
            self.checked = set(new_ids)  # a new suite starts with every task selected
        else:
            self.checked &= set(new_ids)
        self.suite = info
        if current is not None and current.id in views:
            self.move_to(current.id)
        else:
            self.cursor = 0
        self.cursor = min(self.cursor, max(len(self.tasks) - 1, 0))

    def _run_start(self, event: TBRunStart) -> None:
        self.run, self.run_complete = event, None
        self.run_started_at = self.clock()
        for view in self.tasks.values():
            view.status = None
        for tid in event.task_ids:
            self._ensure(tid).reset_for_run()
        self.scroll = 0
        if self.follow_running and event.task_ids:
            self.move_to(event.task_ids[0])

    def _ensure(self, task_id: str, name: str | None = None, category: str | None = None,
                difficulty: str | None = None) -> TaskView:
        view = self.tasks.get(task_id)
        if view is None:
            view = self.tasks[task_id] = TaskView(task_id, name or task_id, in_suite=False)
        if name and not view.in_suite:
            view.name = name
        if category and not view.in_suite:
            view.category = category
        if difficulty and not view.in_suite:
            view.difficulty = difficulty
        return view

    def move_to(self, task_id: str) -> None:
        for index, tid in enumerate(self.tasks):
            if tid == task_id:
                if index != self.cursor:
                    self.cursor, self.scroll = index, 0
                return

    # -- snapshot ------------------------------------------------------------------------

    def apply_snapshot(self, snap: dict[str, Any]) -> None:
        """The daemon's whole state (`getState`): on attach and after every reconnect."""
        self.daemon_version = snap.get("version") or self.daemon_version
        current = self.current()
        if snap.get("suite"):
            self.set_suite(suite_from_wire(snap["suite"]))
        else:
            self.suite = None
            self.tasks = {}
        active = snap.get("activeRun")
        self.run = run_start_from_wire(active) if active else None
        self.run_complete = None
        for view in self.tasks.values():
            view.status = None
        now = self.clock()
        for item in snap.get("tasks") or []:
            view = self._ensure(item["taskId"], item.get("name"), item.get("category"),
                                item.get("difficulty"))
            view.status = item.get("status") or "pending"
            view.phase = item.get("phase")
            view.turn = item.get("currentTurn")
            view.elapsed_ms, view.elapsed_at = int(item.get("elapsedMs") or 0), now
            view.duration_ms = item.get("durationMs")
            view.error = item.get("error")
            if item.get("containerId"):
                view.container = ContainerView(
                    item["containerId"], item.get("image") or "?", item.get("cpus"),
                    item.get("memoryMb"), item.get("cpuPercent"), item.get("memoryBytes"),
                    item.get("memoryLimitBytes"), stopped=view.status in DONE)
            else:
                view.container = None
        for tid, lines in (snap.get("recentOutput") or {}).items():
            view = self._ensure(tid)
            view.output.clear()
            view.output.extend((line.get("source", "agent"), line.get("text", ""))
                               for line in lines)
        self.history = [summary_from_wire(h) for h in snap.get("history") or []]
        self.history_cursor = min(self.history_cursor, max(len(self.history) - 1, 0))
        if current is not None and current.id in self.tasks:
            self.move_to(current.id)
        self.cursor = min(self.cursor, max(len(self.tasks) - 1, 0))
        running = self.running()
        shown = self.current()
        if self.follow_running and running and (shown is None or shown.status != "running"):
            self.move_to(running[0].id)  # attaching mid-run: show what is going on
        shown = self.current()
        self.scroll = min(self.scroll, len(shown.output) if shown is not None else 0)

    # -- user actions (called by the key bindings) ---------------------------------------

    def say(self, text: str) -> None:
        self.notice, self.notice_at = text, self.clock()

    def move(self, delta: int) -> None:
        if self.tasks:
            self.cursor = max(0, min(len(self.tasks) - 1, self.cursor + delta))
            self.scroll = 0
            self.follow_running = False  # the user chose; `f` gives control back


    def toggle_checked(self) -> None:
        view = self.current()
        if view is not None and view.in_suite:
            self.checked ^= {view.id}

    def check_all(self) -> None:
        self.checked = {t.id for t in self.tasks.values() if t.in_suite}

    def check_none(self) -> None:
        self.checked = set()

    def scroll_output(self, lines: int) -> None:
        view = self.current()
        total = len(view.output) if view else 0
        self.scroll = max(0, min(total, self.scroll + lines))

    def follow(self) -> None:
        self.scroll = 0

    def move_history(self, delta: int) -> None:
        if self.history:
            self.history_cursor = max(0, min(len(self.history) - 1,
                                             self.history_cursor + delta))

    def history_run(self) -> RunSummary | None:
        if 0 <= self.history_cursor < len(self.history):
            return self.history[self.history_cursor]
        return None
