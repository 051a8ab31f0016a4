"""protocol.fold on its own: events in, run and task state out; the clock passed in."""

from __future__ import annotations

from protocol.converter import event_from_wire
from protocol.fold import Board, apply
from protocol.rpc import Counts, OutputLine, StateSnapshot, TaskState
from tests.test_hud_state import (
    COUNTS,
    RUN,
    complete,
    output,
    progress,
    run_complete,
    run_start,
    suite_info,
    task_start,
)


def fold(board: Board, *wire: dict, now: float = 0.0) -> None:
    for w in wire:
        apply(board, event_from_wire(w), now)


def test_a_task_through_its_phases_with_elapsed_time_from_the_given_clock() -> None:
    board = Board()
    fold(board, run_start("a", "b"))
    fold(board, task_start("a", 0, 2), now=10.0)
    a = board.tasks["a"]
    assert (a.status, a.phase, a.elapsed(12.5)) == ("running", "setup", 2500)
    fold(board, progress("a", "agent", 4000, turn=3), now=20.0)
    assert (a.phase, a.turn, a.elapsed(21.0)) == ("agent", 3, 5000)
    fold(board, progress("a", "agent", 4500), now=20.5)
    assert a.turn == 3  # a report without a turn keeps the last one
    fold(board, complete("a", "success", ms=7000, testsPassed=2, testsTotal=3, reward=1.0))
    assert (a.status, a.elapsed(99.0), a.tests_passed, a.reward) == ("success", 7000, 2, 1.0)
    fold(board, progress("a", "verification", 9000))
    assert a.status == "success"  # a late report does not reopen a finished task
    counts = board.counts()
    assert (counts.passed, counts.done, counts.total) == (1, 1, 2)
    assert board.is_running() and board.tasks["b"].elapsed(5.0) is None
    fold(board, run_complete(1, 0))
    assert board.complete is not None and not board.is_running()


def test_output_is_split_and_bounded() -> None:
    board = Board(output_lines=3)
    fold(board, run_start("a"), output("a", "one"), output("a", "two\nthree\nfour", "system"))
    assert list(board.tasks["a"].output) == [("system", "two"), ("system", "three"),
                                             ("system", "four")]


def test_events_of_another_run_are_left_out() -> None:
    board = Board()
    fold(board, run_start("a"), task_start("a", 0, 1) | {"runId": "tb-other"})
    assert board.tasks["a"].status == "pending"
    assert apply(board, event_from_wire(output("a", "x") | {"runId": "tb-other"}), 0) is None


def test_suite_rows_and_run_only_tasks() -> None:
    board = Board()
    fold(board, suite_info("a", "b"), run_start("b", "x"), task_start("x", 1, 2))
    assert list(board.tasks) == ["a", "b", "x"]
    assert board.tasks["a"].status is None and not board.tasks["x"].in_suite
    assert [t.id for t in board.run_tasks()] == ["b", "x"]
    fold(board, suite_info("c"))  # another suite: the run's tasks stay on the board
    assert list(board.tasks) == ["c", "b", "x"] and not board.tasks["b"].in_suite


def test_containers() -> None:
    board = Board()
    cid = "f" * 64
    base = {"runId": RUN, "taskId": "a", "containerId": cid}
    fold(board, run_start("a"),
         base | {"type": "container_stats", "cpuPercent": 5.0, "memoryBytes": 10,
                 "memoryLimitBytes": 100})
    box = board.tasks["a"].container
    assert box is not None and box.image == "?" and box.memory_limit_bytes == 100
    fold(board, base | {"type": "container_start", "image": "img", "cpus": 2.0,
                        "memoryMb": 512})
    box = board.tasks["a"].container
    assert box is not None and (box.image, box.cpus, box.cpu_percent) == ("img", 2.0, None)
    fold(board, base | {"type": "container_stop", "containerId": "other", "exitCode": 1})
    assert not box.stopped  # another container's stop
    fold(board, base | {"type": "container_stop", "exitCode": 0})
    assert box.stopped and box.exit_code == 0


def test_restore_from_a_snapshot() -> None:
    board = Board()
    fold(board, run_start("a"), output("a", "old"))
    empty = dict.fromkeys(["phase", "current_turn", "duration_ms", "container_id", "image",
                           "cpus", "memory_mb", "cpu_percent", "memory_bytes", "error"])
    snap = StateSnapshot(
        suite=None, active_run=None,
        tasks=[TaskState(task_id="a", status="running", elapsed_ms=900, **empty)],  # type: ignore[arg-type]
        recent_output={"a": [OutputLine(text="new", source="agent")]},
        counts=Counts(**COUNTS), history=[], version="1")
    board.restore(snap, now=50.0)
    a = board.tasks["a"]
    assert board.run is None and a.elapsed(51.0) == 1900
    assert list(a.output) == [("agent", "new")]


def test_a_pull_shows_in_the_phase_until_the_next_report() -> None:
    board = Board()
    fold(board, run_start("a"), task_start("a", 0, 1))
    a = board.tasks["a"]
    assert a.phase_text() == "setup"
    fold(board, progress("a", "setup", 100) | {"detail": "pulling", "percent": 45.4})
    assert a.phase_text() == "setup: pulling 45%"
    fold(board, progress("a", "agent", 900))
    assert (a.phase_text(), a.percent) == ("agent", None)


def test_attempts_count_as_trials_a_retried_try_does_not_and_the_phase_names_the_attempt():
    board = Board()
    fold(board, {**run_start("a", "b"), "attempts": 2})
    fold(board, {**task_start("a", 0, 2), "attempt": 1, "attempts": 2})
    a = board.tasks["a"]
    assert a.phase_text() == "setup, attempt 1/2"
    fold(board, complete("a", "error", error="engine lost", attempt=1, attempts=2,
                         retryable=True, willRetry=True))
    assert (a.status, a.outcomes, a.error) == ("running", [], "engine lost")
    fold(board, complete("a", "failure", attempt=1, attempts=2, tries=2))
    fold(board, {**task_start("a", 0, 2), "attempt": 2, "attempts": 2})
    fold(board, progress("a", "agent", 100))
    assert a.phase_text() == "agent, attempt 2/2"
    fold(board, complete("a", "success", attempt=2, attempts=2))
    fold(board, {**task_start("b", 1, 2), "attempt": 1, "attempts": 2})
    assert a.outcomes == ["failure", "success"] and a.status == "success"
    counts = board.counts()
    assert (counts.passed, counts.failed, counts.error, counts.done, counts.total) == (
        1, 1, 0, 2, 4)
    fold(board, {**run_complete(1, 1), "passAtK": {"1": 0.5, "2": 1.0}})
    assert board.pass_at_k() == {"1": 0.5, "2": 1.0}


def test_live_turn_limit_tokens_and_cost_from_progress() -> None:
    board = Board()
    fold(board, run_start("a"), task_start("a", 0, 1))
    fold(board, progress("a", "agent", 100, turn=2) | {"maxTurns": 30, "tokens": 1200,
                                                       "costUsd": 0.01})
    a = board.tasks["a"]
    assert (a.turn, a.max_turns, a.tokens, a.cost_usd) == (2, 30, 1200, 0.01)
    fold(board, progress("a", "agent", 200, turn=3))  # a report without them keeps them
    assert (a.turn, a.max_turns, a.tokens) == (3, 30, 1200)


def test_a_multi_step_tasks_step_shows_in_the_phase_and_survives_a_restore() -> None:
    board = Board()
    fold(board, run_start("a"), task_start("a", 0, 1))
    a = board.tasks["a"]
    step = {"step": 2, "stepsTotal": 3, "stepName": "implement"}
    fold(board, progress("a", "agent", 100) | step)
    assert (a.step, a.steps_total, a.step_name) == (2, 3, "implement")
    assert a.phase_text() == "agent, step 2/3: implement"
    fold(board, progress("a", "verification", 200))  # a report without it keeps it
    assert a.phase_text() == "verification, step 2/3: implement"
    empty = dict.fromkeys(["phase", "current_turn", "duration_ms", "container_id", "image",
                           "cpus", "memory_mb", "cpu_percent", "memory_bytes", "error"])
    snap = StateSnapshot(
        suite=None, active_run=None,
        tasks=[TaskState(task_id="a", status="running", elapsed_ms=900, step=3,  # type: ignore[arg-type]
                         steps_total=3, step_name="polish", **empty)],
        recent_output={}, counts=Counts(**COUNTS), history=[], version="1")
    restored = Board()
    restored.restore(snap, now=0.0)
    assert restored.tasks["a"].step_text() == "step 3/3: polish"
    fold(board, run_start("a"))  # a new run starts without a step
    assert (a.step, a.phase_text()) == (None, "setup")
