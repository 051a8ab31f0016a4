"""Docker as a sandbox provider: `DockerSandboxes` (images, containers, orphans) and
`DockerSandbox` (one container), plus the project's base image (`baseimage.py`)."""

from daemon.sandbox.docker.provider import DockerSandboxes, instance_name
from daemon.sandbox.docker.sandbox import DockerSandbox

__all__ = ["DockerSandbox", "DockerSandboxes", "instance_name"]
