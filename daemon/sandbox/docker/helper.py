"""tbhud's static helper for task containers (helper.c): the keeper at PID 1 that reaps
orphans, and the process killer. Built once per source version with the host's C compiler,
kept in the user's cache directory, and bind-mounted read-only into each container at
`HELPER_DIR`, out of the agent's reach."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from daemon.sandbox.base import SandboxError

SOURCE = Path(__file__).with_name("helper.c")
HELPER_DIR = "/.tbhud"  # where containers see it
HELPER = f"{HELPER_DIR}/helper"
KEEPER = [HELPER, "init"]
KILL_ALL = [HELPER, "killall"]
COMPILE_TIMEOUT_SEC = 120


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "tbhud"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def helper_dir() -> Path:
    """The host directory holding the built helper (blocking: run it in a thread)."""
    source = SOURCE.read_bytes()
    built = cache_dir() / f"helper-{hashlib.sha256(source).hexdigest()[:16]}"
    if (built / "helper").is_file():
        return built
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SandboxError("no C compiler to build tbhud's container helper (helper.c); "
                           "install one (e.g. `apt-get install gcc`)")
    # Built aside and renamed into place: concurrent builders each produce a whole binary.
    work = Path(tempfile.mkdtemp(prefix="helper-", dir=cache_dir()))
    try:
        out = subprocess.run([cc, "-static", "-Os", "-o", str(work / "helper"), str(SOURCE)],
                             capture_output=True, text=True, timeout=COMPILE_TIMEOUT_SEC)
        if out.returncode != 0:
            raise SandboxError(f"cannot build tbhud's container helper with {cc} -static "
                               f"(a static libc is needed, e.g. libc6-dev): "
                               f"{out.stderr.strip()[-500:]}")
        (work / "helper").chmod(0o755)
        work.chmod(0o755)  # readable by the container's users
        try:
            work.rename(built)
        except OSError:
            if not (built / "helper").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return built
