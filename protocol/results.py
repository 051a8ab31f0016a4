"""Results of tasks and runs, as stored, reported (`--json`, report.json) and sent (`getRun`).

Every field is required so that unknown values travel as JSON null rather than vanishing.
"""

from __future__ import annotations

import attrs

from protocol.events import Outcome, RunStatus


@attrs.frozen
class TaskResult:
    task_id: str
    outcome: Outcome
    duration_ms: int
    tests_passed: int | None
    tests_total: int | None
    reward: float | None
    turns: int | None
    tokens: int | None
    cost_usd: float | None
    # Why an `error` or `timeout` happened, or what the agent reported on a failure
    # (e.g. "claude-code: error_max_turns"); null for a plain success or failure.
    error: str | None
    # The agent's program version (claude-code: the CLI's), when it tells (issue 10).
    agent_version: str | None = None
    # An `error` whose cause may pass by itself (the model API overloaded or unreachable):
    # running the task again may succeed. Null when not an error or not known.
    retryable: bool | None = None


@attrs.frozen
class RunReport:
    run_id: str
    suite_name: str
    suite_version: str
    suite_path: str
    agent: str
    status: RunStatus
    timestamp: str
    pass_rate: float
    passed: int
    failed: int
    timeout: int
    error: int
    total_duration_ms: int
    total_tokens: int
    task_ids: list[str]
    tasks: list[TaskResult]
    # The JSON report written when the run ended (null while it runs).
    filepath: str | None


def tally(results: list[TaskResult]) -> dict[str, int]:
    counts = {"success": 0, "failure": 0, "timeout": 0, "error": 0}
    for r in results:
        counts[r.outcome] += 1
    return counts


def pass_rate(results: list[TaskResult]) -> float:
    """Share of recorded tasks that succeeded (0.0 when none is recorded)."""
    return tally(results)["success"] / len(results) if results else 0.0
