"""The history: SQLite for runs and task results, one directory per run for the files.

Layout under the data directory:
    tbhud.sqlite3
    runs/<run_id>/report.json             written when the run ends
    runs/<run_id>/<task_id>/agent.log      everything the agent printed
    runs/<run_id>/<task_id>/verifier.log   everything /tests/test.sh printed
    runs/<run_id>/<task_id>/verifier/      /logs/verifier copied out (reward, ctrf.json, ...)

Every write commits at once, so a killed process loses at most the task that was running.
Calls are short and synchronous; the daemon calls them from its trio thread.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from protocol import RunReport, TaskResult, converter, pass_rate, tally
from protocol.events import RunSummary

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    suite_name TEXT NOT NULL,
    suite_version TEXT NOT NULL,
    suite_path TEXT NOT NULL,
    agent TEXT NOT NULL,
    status TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    task_ids TEXT NOT NULL,
    total_duration_ms INTEGER NOT NULL DEFAULT 0,
    filepath TEXT
);
CREATE TABLE IF NOT EXISTS task_results (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    task_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    tests_passed INTEGER,
    tests_total INTEGER,
    reward REAL,
    turns INTEGER,
    tokens INTEGER,
    cost_usd REAL,
    error TEXT,
    PRIMARY KEY (run_id, task_id)
);
"""

RESULT_COLUMNS = ("task_id, outcome, duration_ms, tests_passed, tests_total, reward, turns,"
                  " tokens, cost_usd, error")


# Columns added to task_results after its first schema (issue 10), one ALTER each for stores
# made before them: the agent's program version, and whether an error may pass by itself.
AGENT_COLUMNS = {"agent_version": "TEXT", "retryable": "INTEGER"}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Store:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.runs_dir = home / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        # The daemon is single-threaded trio; check_same_thread guards nothing for us.
        self.db = sqlite3.connect(home / "tbhud.sqlite3", isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)
        self._add_columns("task_results", AGENT_COLUMNS)

    def _add_columns(self, table: str, columns: dict[str, str]) -> None:
        have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns.items():
            if name not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------

    def begin_run(self, run_id: str, *, suite_name: str, suite_version: str, suite_path: str,
                  agent: str, task_ids: list[str], timestamp: str) -> None:
        self.db.execute(
            "INSERT INTO runs (run_id, suite_name, suite_version, suite_path, agent, status,"
            " timestamp, task_ids) VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
            (run_id, suite_name, suite_version, suite_path, agent, timestamp,
             json.dumps(task_ids)),
        )

    def record_task(self, run_id: str, result: TaskResult) -> None:
        self.db.execute(
            f"INSERT OR REPLACE INTO task_results (run_id, {RESULT_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, result.task_id, result.outcome, result.duration_ms, result.tests_passed,
             result.tests_total, result.reward, result.turns, result.tokens, result.cost_usd,
             result.error),
        )
        self.db.execute(
            "UPDATE task_results SET agent_version = ?, retryable = ? WHERE run_id = ?"
            " AND task_id = ?", (result.agent_version, result.retryable, run_id, result.task_id))

    def finish_run(self, run_id: str, *, status: str, total_duration_ms: int) -> RunReport:
        """Mark the run ended, write report.json, and return the report."""
        filepath = str(self.run_dir(run_id) / "report.json")
        self.db.execute(
            "UPDATE runs SET status = ?, total_duration_ms = ?, filepath = ? WHERE run_id = ?",
            (status, total_duration_ms, filepath, run_id),
        )
        report = self.get_run(run_id)
        assert report is not None
        tmp = Path(filepath + ".tmp")
        tmp.write_text(json.dumps(converter.unstructure(report), indent=2) + "\n")
        tmp.replace(filepath)  # readers never see a half-written report
        return report

    def add_task(self, run_id: str, task_id: str) -> None:
        """A task the run did not name at its start (a runner's job that grows)."""
        task_ids = self._task_ids(run_id)
        if task_id not in task_ids:
            self.db.execute("UPDATE runs SET task_ids = ? WHERE run_id = ?",
                            (json.dumps([*task_ids, task_id]), run_id))

    def forget_run(self, run_id: str) -> None:
        """Remove a run and its results from the database (an imported run, read again)."""
        self.db.execute("DELETE FROM task_results WHERE run_id = ?", (run_id,))
        self.db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    def mark_interrupted(self) -> list[str]:
        """Runs left `running` by a daemon that died: mark them `interrupted`."""
        rows = self.db.execute("SELECT run_id FROM runs WHERE status = 'running'").fetchall()
        for (run_id,) in rows:
            self.db.execute("UPDATE runs SET status = 'interrupted' WHERE run_id = ?", (run_id,))
        return [r[0] for r in rows]

    # -- files -----------------------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        path = self.runs_dir / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def task_dir(self, run_id: str, task_id: str) -> Path:
        path = self.run_dir(run_id) / task_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- reading ---------------------------------------------------------------------------

    def task_results(self, run_id: str) -> list[TaskResult]:
        rows = self.db.execute(
            f"SELECT {RESULT_COLUMNS}, {', '.join(AGENT_COLUMNS)} FROM task_results"
            " WHERE run_id = ?", (run_id,)
        ).fetchall()
        results = [TaskResult(*row[:-2], agent_version=row[-2],
                              retryable=None if row[-1] is None else bool(row[-1]))
                   for row in rows]
        order = {tid: i for i, tid in enumerate(self._task_ids(run_id))}
        return sorted(results, key=lambda r: order.get(r.task_id, len(order)))

    def _task_ids(self, run_id: str) -> list[str]:
        row = self.db.execute("SELECT task_ids FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return json.loads(row[0]) if row else []

    def get_run(self, run_id: str) -> RunReport | None:
        row = self.db.execute(
            "SELECT run_id, suite_name, suite_version, suite_path, agent, status, timestamp,"
            " task_ids, total_duration_ms, filepath FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row is None:
            return None
        results = self.task_results(run_id)
        counts = tally(results)
        return RunReport(
            run_id=row[0], suite_name=row[1], suite_version=row[2], suite_path=row[3],
            agent=row[4], status=row[5], timestamp=row[6], task_ids=json.loads(row[7]),
            total_duration_ms=row[8], filepath=row[9],
            pass_rate=pass_rate(results), passed=counts["success"], failed=counts["failure"],
            timeout=counts["timeout"], error=counts["error"],
            total_tokens=sum(r.tokens or 0 for r in results), tasks=results,
        )

    def list_runs(self, limit: int = 50) -> list[RunSummary]:
        """Newest first, as the HUD's run history wants them."""
        ids = [r[0] for r in self.db.execute(
            "SELECT run_id FROM runs ORDER BY timestamp DESC, rowid DESC LIMIT ?", (limit,))]
        return [summary(report) for report in map(self.get_run, ids) if report is not None]


def summary(report: RunReport) -> RunSummary:
    return RunSummary(
        run_id=report.run_id, suite_name=report.suite_name, suite_version=report.suite_version,
        timestamp=report.timestamp, pass_rate=report.pass_rate, passed=report.passed,
        failed=report.failed, timeout=report.timeout, error=report.error,
        total_duration_ms=report.total_duration_ms, total_tokens=report.total_tokens,
        task_count=len(report.task_ids), filepath=report.filepath or "",
        status=report.status, agent=report.agent,
    )
