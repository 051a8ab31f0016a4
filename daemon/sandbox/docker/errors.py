"""What the docker SDK raises, as SandboxErrors that say what we were doing."""

from __future__ import annotations

import docker.errors
import requests
import urllib3.exceptions

from daemon.sandbox.base import EngineLost, SandboxError

# What the docker SDK raises when the engine refuses or cannot be reached.
# A stream cut mid-read surfaces as urllib3's ProtocolError, under requests.
DOCKER_FAILURES = (docker.errors.DockerException, requests.exceptions.RequestException,
                   urllib3.exceptions.HTTPError)


def failure(what: str, exc: BaseException) -> SandboxError:
    """The SandboxError for a docker SDK failure: EngineLost when the engine cannot be
    reached any more (retryable), the engine's own words otherwise."""
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                        urllib3.exceptions.ProtocolError, OSError)):
        return EngineLost(f"Docker engine lost: {what}: {reason(exc)}")
    return SandboxError(f"{what}: {reason(exc)}", retryable=server_side(exc))


def server_side(exc: BaseException) -> bool:
    """A failure of the engine's own (5xx): worth another try, where a 4xx (no such image, a
    conflict) would fail again."""
    status = getattr(exc, "status_code", None)
    return isinstance(exc, docker.errors.APIError) and status is not None and status >= 500


def reason(exc: BaseException) -> str:
    """What the engine or the registry said, without the SDK's HTTP preamble."""
    explanation = getattr(exc, "explanation", None)
    return str(explanation) if explanation else str(exc)
