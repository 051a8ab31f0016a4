"""A newer daemon: events with fields and types this client does not know. The HUD state and
`tbhud events` keep working over a real Unix socket, and nothing reconnects; the daemon, for
its part, stays strict about requests (tests/test_daemon.py)."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import trio

from client.connection import open_connection
from client.hud.state import HudState
from daemon.serving import process
from daemon.serving.transports import read_line
from protocol import unstructure
from protocol.framing import LineBuffer
from protocol.rpc import Counts, StateSnapshot
from tests.conftest import ROOT, TBHUD
from tests.test_hud_state import RUN, output, run_start, suite_info, task_start

LIMIT = 30

SNAPSHOT = unstructure(StateSnapshot(
    suite=None, active_run=None, tasks=[], recent_output={}, history=[], version="9.9",
    counts=Counts(passed=0, failed=0, timeout=0, error=0, done=0, total=0))) | {
    "fromTheFuture": {"nested": True}}
THOUGHT = {"type": "agent_thought", "runId": RUN, "taskId": "a", "text": "hmm"}
FRAMES = [suite_info("a") | {"fromTheFuture": 1}, THOUGHT, run_start("a"),
          task_start("a", 0, 1), output("a", "hello") | {"streamId": 3},
          output("a", "again") | {"streamId": 4}]


async def fake_daemon(frames: list[dict[str, Any]], hang_up: bool,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The line protocol of the daemon's Unix socket, as a newer daemon speaks it: answers
    subscribe with SNAPSHOT then sends `frames`; answers version; hangs up after the frames
    when `hang_up`."""
    path = process.socket_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen()

    async def serve(stream: trio.SocketStream) -> None:
        async def send(obj: dict[str, Any]) -> None:
            await stream.send_all(json.dumps(obj).encode() + b"\n")

        lines = LineBuffer(1 << 20)
        async with stream:
            while (line := await read_line(stream, lines)) is not None:
                request = json.loads(line)
                reply = {"jsonrpc": "2.0", "id": request["id"]}
                if request["method"] == "subscribe":
                    await send(reply | {"result": {"subscribed": True, "state": SNAPSHOT}})
                    for frame in frames:
                        await send(frame)
                    if hang_up:
                        return
                else:
                    await send(reply | {"result": {"version": "9.9"}})

    await trio.serve_listeners(serve, [trio.SocketListener(sock)], task_status=task_status)


async def test_the_hud_state_applies_known_events_and_skips_the_rest(
        home: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tbhud.client.wire")
    state = HudState()
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(fake_daemon, FRAMES, False)
            async with open_connection(autostart=False) as conn:
                state.apply_snapshot((await conn.call("subscribe"))["state"])
                async for event in conn.events():
                    state.apply(event)
                    if "a" in state.tasks and len(state.tasks["a"].output) == 2:
                        break
                # The same connection still answers: no error ended it, nothing reconnects.
                assert (await conn.call("version")) == {"version": "9.9"}
            nursery.cancel_scope.cancel()
    assert state.daemon_version == "9.9"
    assert state.suite is not None and [t.id for t in state.task_list()] == ["a"]
    assert state.tasks["a"].status == "running"
    assert list(state.tasks["a"].output) == [("agent", "hello"), ("agent", "again")]
    notes = [r.getMessage() for r in caplog.records if r.name == "tbhud.client.wire"]
    assert sum("'streamId'" in n for n in notes) == 1  # twice sent, noted once
    assert sum("'fromTheFuture' of TBSuiteInfo" in n for n in notes) == 1
    assert sum("'fromTheFuture' of StateSnapshot" in n for n in notes) == 1
    assert sum("'agent_thought'" in n for n in notes) == 1


async def test_tbhud_events_prints_every_frame_as_sent(home: Path) -> None:
    """Unknown types pass through as the daemon's NDJSON, extra fields included."""
    env = {**os.environ, "TBHUD_HOME": str(home)}
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(fake_daemon, FRAMES, True)  # hangs up
            done = await trio.run_process([*TBHUD, "events"], cwd=ROOT, env=env,
                                          capture_stdout=True, capture_stderr=True, check=False)
            nursery.cancel_scope.cancel()
    printed = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert printed == FRAMES
    stderr = done.stderr.decode()
    assert "Traceback" not in stderr and "closed the connection" in stderr
