"""Sandboxes: the interface the engine and the agents see (`base.py`) and its
implementations (`docker/`)."""

from pathlib import Path

from daemon.sandbox.base import (
    BuildTimeout,
    ExecResult,
    Mount,
    Sandbox,
    SandboxError,
    SandboxProvider,
    Stats,
)

__all__ = ["BuildTimeout", "ExecResult", "Mount", "Sandbox", "SandboxError", "SandboxProvider",
           "Stats", "open_local"]


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
