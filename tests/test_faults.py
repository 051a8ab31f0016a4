"""Faults and hostile agents (issue 13): a stop under an output flood, a keeper that reaps
and survives `kill -9 -1`, a verifier an agent cannot fake. Real Docker throughout."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest
import trio

from daemon.engine.run import RunConfig
from daemon.sandbox.docker.helper import HELPER
from daemon.tasks.loader import load
from protocol.events import TBTaskOutput
from tests.conftest import Rig, make_task

pytestmark = pytest.mark.docker

LIMIT = 180  # seconds any one test may take (a hang fails it, whatever the machine)

FLOOD = "yes \"$(head -c 2000 /dev/zero | tr '\\0' x)\""


async def run(rig: Rig, path: Path, **config: object):
    suite = load(path)
    with trio.fail_after(LIMIT):
        return await rig.engine.run(suite, list(suite.tasks), RunConfig(**config))


async def test_a_stop_under_an_output_flood_ends_the_task_and_its_container(rig: Rig,
                                                                            tmp_path: Path):
    task = make_task(tmp_path, "flood", test="echo 1 > /logs/verifier/reward.txt\n")
    suite = load(task)
    holder = {}
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            async def go(task_status=trio.TASK_STATUS_IGNORED):
                holder["report"] = await rig.engine.run(
                    suite, list(suite.tasks),
                    RunConfig(agent="command", agent_options={"command": FLOOD}),
                    task_status=task_status)

            run_id = await nursery.start(go)
            await rig.wait_for(lambda e: isinstance(e, TBTaskOutput) and e.source == "agent")
            assert rig.engine.stop_run(run_id)
    report = holder["report"]
    assert report.status == "stopped"
    assert report.tasks[0].outcome == "error" and report.tasks[0].error == "stopped"
    assert rig.containers() == []


async def test_the_keeper_reaps_orphans_and_survives_kill_minus_one(rig: Rig, tmp_path: Path):
    # 1,100 orphans that exit at once: unreaped, their zombies would pass the pids limit
    # (1024) and the fork of the next would fail. Then every process is SIGKILLed from
    # inside; the container must still be there for the verifier.
    storm = ("i=0; while [ $i -lt 1100 ]; do (true &) || exit 7; i=$((i+1)); done; "
             "kill -9 -1; sleep 5")
    task = make_task(tmp_path, "zombies", test="""\
        for i in $(seq 50); do (true &); done
        echo 1 > /logs/verifier/reward.txt
        """)
    report = await run(rig, task, agent="command", agent_options={"command": storm})
    result = report.tasks[0]
    assert result.outcome == "success", result.error


async def test_a_fake_bash_or_helper_cannot_fake_the_verdict(rig: Rig, tmp_path: Path,
                                                             docker_client: docker.DockerClient):
    # A root agent puts a `bash` first on PATH that awards 1, and tries to replace the helper
    # that kills processes; the real test awards 0.
    fake = "#!/bin/sh\nmkdir -p /logs/verifier; echo 1 > /logs/verifier/reward.txt\n"
    cmd = (f"printf '{fake}' > /usr/local/bin/bash && chmod +x /usr/local/bin/bash && "
           f"cp /usr/local/bin/bash /usr/local/bin/sh && "
           f"if cp /usr/local/bin/bash {HELPER}; then echo HELPER-REPLACED; "
           "else echo HELPER-READ-ONLY; fi")
    task = make_task(tmp_path, "faker", test="echo 0 > /logs/verifier/reward.txt\n")
    report = await run(rig, task, agent="command", agent_options={"command": cmd})
    lines = [e.text for e in rig.of_type(TBTaskOutput) if e.source == "agent"]
    assert "HELPER-READ-ONLY" in lines and "HELPER-REPLACED" not in lines
    assert report.tasks[0].outcome == "failure", report.tasks[0].error
    assert report.tasks[0].reward == 0.0
