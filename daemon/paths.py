"""Where tbhud keeps things (protocol/locations.py says where; the daemon's side creates the
directories, private to the user)."""

from __future__ import annotations

import os
from pathlib import Path

from protocol import locations


def data_dir() -> Path:
    """SQLite store, run directories, daemon token. Created 0700 on first use."""
    path = locations.data_dir()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    private(path)
    return path


def private(path: Path) -> None:
    """Make an existing directory 0700 (the history, logs and token are the user's alone);
    one that belongs to another user is refused, saying so."""
    info = path.stat()
    if info.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user (uid {info.st_uid}); set "
                              "TBHUD_HOME to a directory of your own")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)


def runtime_dir() -> Path:
    """The daemon's Unix socket, pidfile and log. Always a 0700 directory."""
    path = locations.runtime_dir()
    if path.parent == locations.data_dir():
        data_dir()  # first, so that the data directory itself is made 0700
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # an existing directory may have been made looser
    return path
