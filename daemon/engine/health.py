"""A task's healthcheck (`[environment.healthcheck]`), run in its sandbox before the agent.

Docker's HEALTHCHECK semantics, as Harbor runs them: the command is tried at once, then
every `start_interval_sec` while the start period lasts (failures there do not count), then
every `interval_sec`; each try may run `timeout_sec`; `retries` consecutive counted failures
fail the check. The first try that exits 0 passes it.
"""

from __future__ import annotations

import trio

from daemon.engine.logs import Tail
from daemon.sandbox import Sandbox
from daemon.sandbox.base import Log
from daemon.tasks.model import Healthcheck

OUTPUT_KEPT = 2000  # characters of the last try's output carried in the error
# A try is bounded by coreutils' `timeout` in the sandbox, which kills only that try's
# command (the sandbox's own time limit would kill every process, the service that is
# starting too); this much later the wait for it is given up as a last resort.
BACKSTOP_SEC = 10.0


async def wait_healthy(sandbox: Sandbox, healthcheck: Healthcheck, log: Log) -> str | None:
    """None once the check passes; else "healthcheck failed: <the last try's output>"."""
    started = trio.current_time()
    failures = 0
    tries = 0
    while True:
        in_start_period = trio.current_time() - started < healthcheck.start_period_sec
        tries += 1
        output = await _try(sandbox, healthcheck)
        if output is None:
            log(f"healthcheck passed (try {tries})")
            return None
        if not in_start_period:
            failures += 1
            if failures >= healthcheck.retries:
                return f"healthcheck failed: {output}"
        counted = f"{failures}/{healthcheck.retries}" if failures else "in its start period"
        log(f"healthcheck: try {tries} failed ({counted}): {output.splitlines()[-1]}")
        await trio.sleep(healthcheck.start_interval_sec if in_start_period
                         else healthcheck.interval_sec)


async def _try(sandbox: Sandbox, healthcheck: Healthcheck) -> str | None:
    """None if the command exited 0 within its time; else what it printed (and why)."""
    tail = Tail(OUTPUT_KEPT)
    limit = healthcheck.timeout_sec
    cmd = ["timeout", "-s", "KILL", f"{limit:g}", "bash", "-c", healthcheck.command]
    with trio.move_on_after(limit + BACKSTOP_SEC):
        done = await sandbox.exec(cmd, on_line=lambda _s, line: tail.add(line))
        if done.exit_code == 0:
            return None
        # 137: `timeout` killed it (KILL); 124 would be a TERM it sent.
        why = (f"timed out after {limit:g}s" if done.exit_code in (124, 137)
               else f"exit status {done.exit_code}")
        return (tail.text().strip() + f" ({why})").strip()
    return f"timed out after {limit:g}s"
