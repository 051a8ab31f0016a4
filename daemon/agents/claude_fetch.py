"""Claude Code's native Linux builds, fetched from the npm registry and cached per version.

Anthropic publishes one executable per platform as an npm package
(`@anthropic-ai/claude-code-linux-x64`, `-linux-x64-musl`, `-linux-arm64`, `-linux-arm64-musl`,
each holding `package/claude`). We ask the registry the machine is configured for (npm's own
`registry` setting) for a version's `dist.tarball` and `dist.integrity`, download the tarball,
check its sha512 and unpack the one file:

    <data dir>/agents/claude/<version>/<platform>/claude

Each version is fetched once (a file lock makes concurrent callers, threads or processes,
wait for one download); the version directory is what task containers get, read-only.
Everything here blocks: callers run it in a worker thread.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import platform as host_platform
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import attrs

PACKAGE = "@anthropic-ai/claude-code"
PLATFORMS = ("linux-x64", "linux-x64-musl", "linux-arm64", "linux-arm64-musl")
DEFAULT_REGISTRY = "https://registry.npmjs.org/"
BINARY_IN_TARBALL = "package/claude"
META_TIMEOUT_SEC = 30
DOWNLOAD_TIMEOUT_SEC = 60  # between two chunks, not for the whole ~70 MB
CHUNK = 1 << 20
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")


class FetchError(RuntimeError):
    """The build could not be had; the text says what was tried and how to do without."""


@attrs.frozen
class Build:
    version: str
    platform: str
    path: Path  # the executable


def cache_root() -> Path:
    from daemon.paths import data_dir

    return data_dir() / "agents" / "claude"


def registry_url(environ: dict[str, str] | None = None) -> str:
    """The npm registry this machine uses: $npm_config_registry, else npm's own setting
    (`npm config get registry`, which reads the .npmrc files), else the public one."""
    env = os.environ if environ is None else environ
    url = env.get("npm_config_registry") or env.get("NPM_CONFIG_REGISTRY")
    if not url and shutil.which("npm"):
        try:
            done = subprocess.run(["npm", "config", "get", "registry"], capture_output=True,
                                  text=True, timeout=META_TIMEOUT_SEC, check=False)
            url = done.stdout.strip() if done.returncode == 0 else ""
        except (OSError, subprocess.TimeoutExpired):
            url = ""
    url = url or DEFAULT_REGISTRY
    return url if url.endswith("/") else url + "/"


def machine_arch(machine: str | None = None) -> str:
    """npm's name for a CPU (`uname -m` output): x64 or arm64."""
    machine = (machine or host_platform.machine()).lower()
    if machine in ("x86_64", "amd64"):
        return "x64"
    if machine in ("aarch64", "arm64"):
        return "arm64"
    raise FetchError(f"Claude Code has no Linux build for the CPU {machine!r} "
                     "(only x86_64 and aarch64)")


def platform_name(arch: str, musl: bool) -> str:
    return f"linux-{arch}" + ("-musl" if musl else "")


def package_name(platform: str) -> str:
    if platform not in PLATFORMS:
        raise FetchError(f"unknown platform {platform!r}; expected one of {', '.join(PLATFORMS)}")
    return f"{PACKAGE}-{platform}"


def metadata(registry: str, package: str, version: str) -> dict[str, object]:
    """The registry's document for one version (or dist-tag, e.g. "latest") of a package."""
    import requests  # here: a client-only install (no requests) still lists the agents

    url = f"{registry}{quote(package, safe='@')}/{quote(version)}"
    try:
        response = requests.get(url, timeout=META_TIMEOUT_SEC)
    except requests.RequestException as exc:
        raise FetchError(f"cannot reach the npm registry {registry} ({exc}); pass a Linux "
                         "build you have with --claude-binary PATH") from exc
    if response.status_code == 404:
        raise FetchError(f"{package}@{version} is not on the npm registry {registry}")
    if response.status_code != 200:
        raise FetchError(f"the npm registry {registry} answered {response.status_code} "
                         f"for {package}@{version}")
    try:
        doc = response.json()
    except ValueError as exc:
        raise FetchError(f"the npm registry {registry} sent no JSON for {url}") from exc
    if not isinstance(doc, dict):
        raise FetchError(f"the npm registry {registry} sent no package document for {url}")
    return doc


def latest_version(registry: str | None = None) -> str:
    doc = metadata(registry or registry_url(), package_name("linux-x64"), "latest")
    version = doc.get("version")
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise FetchError(f"the npm registry named no usable latest version ({version!r})")
    return version


def cached_versions(root: Path | None = None) -> dict[str, list[str]]:
    """version -> the platforms cached for it, newest version first."""
    root = root or cache_root()
    found: dict[str, list[str]] = {}
    if root.is_dir():
        for version_dir in root.iterdir():
            platforms = sorted(p.name for p in version_dir.iterdir()
                               if (p / "claude").is_file()) if version_dir.is_dir() else []
            if platforms and VERSION_RE.match(version_dir.name):
                found[version_dir.name] = platforms
    return dict(sorted(found.items(), key=lambda kv: _version_key(kv[0]), reverse=True))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("-")[0])[:3])


def check_version(version: str) -> str:
    if not VERSION_RE.match(version):
        raise FetchError(f"Claude Code version {version!r}: expected a version such as 2.1.3")
    return version


def ensure(version: str, platform: str, *, root: Path | None = None,
           registry: str | None = None) -> Build:
    """The cached build of `version` for `platform`, downloaded and checked when missing."""
    root = root or cache_root()
    check_version(version)
    package = package_name(platform)
    target = root / version / platform / "claude"
    if target.is_file():
        return Build(version, platform, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Task containers see the version directory; its users need to read and run the file.
    for directory in (root / version, target.parent):
        directory.chmod(0o755)
    with _locked(root / f".{version}-{platform}.lock"):
        if not target.is_file():  # another caller may have fetched it while we waited
            _download(registry or registry_url(), package, version, target)
    return Build(version, platform, target)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _download(registry: str, package: str, version: str, target: Path) -> None:
    import requests  # see metadata()

    doc = metadata(registry, package, version)
    dist = doc.get("dist")
    if not isinstance(dist, dict) or not isinstance(dist.get("tarball"), str):
        raise FetchError(f"{package}@{version}: the registry's document has no dist.tarball")
    integrity = dist.get("integrity")
    if not isinstance(integrity, str) or not integrity.startswith("sha512-"):
        raise FetchError(f"{package}@{version}: the registry's document has no sha512 "
                         f"dist.integrity (got {integrity!r}); refusing an unchecked download")
    expected = base64.b64decode(integrity.removeprefix("sha512-"))
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        tarball = Path(tmp) / "package.tgz"
        digest = hashlib.sha512()
        try:
            with requests.get(dist["tarball"], stream=True,
                              timeout=DOWNLOAD_TIMEOUT_SEC) as response:
                if response.status_code != 200:
                    raise FetchError(f"downloading {dist['tarball']}: HTTP "
                                     f"{response.status_code}")
                with open(tarball, "wb") as out:
                    for chunk in response.iter_content(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
        except requests.RequestException as exc:
            raise FetchError(f"downloading {dist['tarball']}: {exc}") from exc
        if digest.digest() != expected:
            raise FetchError(f"{package}@{version}: the tarball's sha512 does not match the "
                             "registry's dist.integrity; nothing was cached")
        unpacked = Path(tmp) / "claude"
        try:
            with tarfile.open(tarball, "r:gz") as tar:
                member = tar.extractfile(BINARY_IN_TARBALL)
                if member is None:
                    raise KeyError(BINARY_IN_TARBALL)
                with member, open(unpacked, "wb") as out:
                    shutil.copyfileobj(member, out, CHUNK)
        except (KeyError, tarfile.TarError) as exc:
            raise FetchError(f"{package}@{version}: no {BINARY_IN_TARBALL} in its tarball "
                             f"({exc})") from exc
        unpacked.chmod(0o755)
        unpacked.replace(target)  # whole or not at all: readers never see half a file
