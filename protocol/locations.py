"""Where a daemon and its clients find each other: pure functions from the environment to
paths, so both sides agree without the client importing the daemon. Nothing is created here;
the daemon makes the directories (0700) when it starts (daemon/paths.py).

    $TBHUD_HOME set:   everything under it; the runtime files in $TBHUD_HOME/run
    otherwise:         data in $XDG_DATA_HOME/tbhud (~/.local/share/tbhud), runtime files in
                       $XDG_RUNTIME_DIR/tbhud (else the data directory's run/)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["data_dir", "log_path", "pid_path", "runtime_dir", "socket_path", "status_path",
           "token_path"]


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The SQLite store, run directories, the daemon's token and log."""
    env = _env(environ)
    if env.get("TBHUD_HOME"):
        return Path(env["TBHUD_HOME"])
    xdg = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "tbhud"


def runtime_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The daemon's Unix socket, pidfile and status file."""
    env = _env(environ)
    if not env.get("TBHUD_HOME") and env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "tbhud"
    return data_dir(env) / "run"


def socket_path(environ: Mapping[str, str] | None = None) -> Path:
    return runtime_dir(environ) / "daemon.sock"


def pid_path(environ: Mapping[str, str] | None = None) -> Path:
    return runtime_dir(environ) / "daemon.pid"


def status_path(environ: Mapping[str, str] | None = None) -> Path:
    return runtime_dir(environ) / "daemon.json"


def token_path(environ: Mapping[str, str] | None = None) -> Path:
    """The WebSocket token (0600), which local clients read by themselves."""
    return data_dir(environ) / "token"


def log_path(environ: Mapping[str, str] | None = None) -> Path:
    """What a background daemon prints."""
    return data_dir(environ) / "daemon.log"
