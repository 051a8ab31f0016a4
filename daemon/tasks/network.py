"""task.toml's network policy per phase, as Harbor's network-policy documentation defines it.

`[environment]` sets the baseline (`network_mode`, or the older `allow_internet`); `[agent]`
and `[verifier]` override it for their phase, and `[verifier.environment]` is the baseline
of the verifier's environment. Each is `network_mode` = public | no-network | allowlist, with
`allowed_hosts` for an allowlist (none listed: no egress at all). What cannot be enforced is
refused at load time with the key named, never run with a weaker policy.
"""

from __future__ import annotations

import re

from daemon.tasks.model import LoadError, NetworkMode, NetworkPolicy

# A host name (labels of letters, digits and hyphens), optionally "*." for its sub-domains, or
# an IPv4 address. URLs, ports, paths and CIDR ranges are not hosts: the proxy matches the
# host a request names, so anything else would be a rule that silently never matches.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*\.?", re.IGNORECASE)


def phase_policy(mode: NetworkMode | None, hosts: list[str], *, section: str,
                 fallback: NetworkPolicy, file: str) -> NetworkPolicy:
    """The policy `[section]` sets, or `fallback` when it sets no `network_mode`."""
    if mode is None:
        if hosts:
            raise LoadError(file, f"{section}.allowed_hosts",
                            'needs network_mode = "allowlist" in the same section')
        return fallback
    if mode != "allowlist":
        if hosts:
            raise LoadError(file, f"{section}.allowed_hosts",
                            f'applies only to network_mode = "allowlist", not {mode!r}')
        return NetworkPolicy(mode, key=f"{section}.network_mode")
    for i, host in enumerate(hosts):
        if not _HOST.fullmatch(host):
            raise LoadError(file, f"{section}.allowed_hosts[{i}]",
                            f"expected a host name (e.g. 'pypi.org' or '*.example.com'), "
                            f"got {host!r}")
    # Host names are case-blind and may end in a dot; one spelling each, in the given order.
    unique = dict.fromkeys(h.lower().rstrip(".") for h in hosts)
    return NetworkPolicy("allowlist", tuple(unique), key=f"{section}.network_mode")


def baseline(mode: NetworkMode | None, allow_internet: bool, hosts: list[str], *,
             file: str, section: str = "environment") -> NetworkPolicy:
    """`[environment]`'s policy (or `[section]`'s, an environment table of the verifier's):
    `network_mode` wins over the older `allow_internet`."""
    legacy = NetworkPolicy("public" if allow_internet else "no-network",
                           key=f"{section}.allow_internet")
    return phase_policy(mode, hosts, section=section, fallback=legacy, file=file)
