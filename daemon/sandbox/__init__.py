"""Sandboxes: the interface the engine and the agents see (`base.py`) and its
implementations (`docker/`)."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.sandbox.base import (
    BuildTimeout,
    ExecResult,
    Mount,
    Sandbox,
    SandboxError,
    SandboxProvider,
    Stats,
)

if TYPE_CHECKING:
    from daemon.sandbox.pool import SandboxPool

__all__ = ["BuildTimeout", "ExecResult", "Mount", "Sandbox", "SandboxError", "SandboxProvider",
           "Stats", "open_local", "open_pool"]


async def open_local(home: Path) -> SandboxProvider:
    """The sandbox provider for this machine: its Docker engine (a SandboxError when none
    answers). `home` is the data directory, whose sandboxes are told apart from other
    instances'. (The docker SDK is imported here, not at start, so that serving code loads
    without it.)"""
    try:
        from daemon.sandbox.docker import DockerSandboxes
    except ModuleNotFoundError as exc:  # a client-only install
        raise SandboxError(f"the engine cannot run here: {exc} (install tbhud with its "
                           "dependencies, or use a daemon elsewhere with --url)") from exc
    return await DockerSandboxes.open(home)


async def open_pool(home: Path, engines: Path | None = None) -> SandboxPool:
    """The engines a run spreads over: those of `engines` (engines.toml), else of the data
    directory's engines.toml, else the local engine alone (as `open_local`, whose error it
    raises). Engines of a file that do not answer now start down, even all of them (a probe
    brings them in later; `check` refuses a run meanwhile); an EnginesError for a bad
    file."""
    import trio

    from daemon.sandbox.engines import find_engines
    from daemon.sandbox.pool import Member, SandboxPool

    specs = find_engines(engines, home)
    if specs is None:  # the local engine alone, found as the docker CLI finds it
        url = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        return SandboxPool.of(await open_local(home), url=url)
    try:
        from daemon.sandbox.docker import DockerSandboxes
    except ModuleNotFoundError:
        await open_local(home)  # says why, in its words
        raise
    peers: list[DockerSandboxes] = []  # each engine's, once it answered: base image sources
    members = [Member(s.name, s.public_url, s.slots, None,
                      connect=partial(DockerSandboxes.open_engine, s, home, peers), up=False)
               for s in specs]
    pool = SandboxPool(members)
    async with trio.open_nursery() as nursery:  # connected side by side: a slow one waits alone
        for member in members:
            nursery.start_soon(pool.probe, member)
    return pool
