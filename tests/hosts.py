"""Worker "hosts" on one machine: Linux network namespaces joined to this one by veth pairs.

Each host is a network namespace with one point-to-point veth link to the root
namespace. The root end of every link holds the same *cluster address* (where
Redis listens, with its own ``--bind``), the namespace end holds the host's own
address, and nothing else is routed: a host reaches the cluster address and
nothing beyond it, and traffic never leaves the machine. Cutting a host's
network is setting its link down (:meth:`Host.cut`); the other links keep the
cluster address, so the other hosts carry on. :meth:`Host.freeze` stops every
process on a host instead (a host that hangs, then comes back late), and
:meth:`Host.shape` puts a ``tbf`` rate limit on both directions of a link.

Addresses come from a /24 of 10.0.0.0/8 picked at random per :class:`Network`
and checked unused on this machine; names carry a random suffix, so runs in
parallel do not clash. :meth:`Network.remove` (also ``with Network() as net``)
deletes every link and namespace, whatever happened before.

Needs root and a working ``ip netns`` (:func:`unavailable` says why not).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import random
import secrets
import shutil
import signal
import subprocess
from types import TracebackType


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str | None:
    """Why namespace hosts cannot run here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return f"network namespaces need root; the test process runs as uid {os.geteuid()}"
    for tool in ("ip", "taskset"):
        if shutil.which(tool) is None:
            return f"no `{tool}` command on this machine"
    probe = f"srcluster-probe-{secrets.token_hex(4)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` does not work here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 address and route of this machine's root namespace, as networks."""
    listing = (
        _ip("-4", "-o", "addr", "show").stdout + _ip("-4", "route", "show", "table", "all").stdout
    )
    used = []
    for word in listing.split():
        if "." not in word:  # a name or a number: ip_network("3") would read it as 0.0.0.3
            continue
        with contextlib.suppress(ValueError):
            used.append(ipaddress.IPv4Network(word, strict=False))
    return used


def _no_ipv6(namespace: str | None, device: str) -> None:
    ns = ["ip", "netns", "exec", namespace] if namespace else []
    subprocess.run(
        [*ns, "sysctl", "-q", "-w", f"net.ipv6.conf.{device}.disable_ipv6=1"],
        capture_output=True,
        check=False,  # a kernel without IPv6 has nothing to disable
        timeout=30,
    )


class Host:
    """One worker host: a network namespace, its veth link, and a core to pin processes to."""

    def __init__(self, network: Network, index: int, core: int | None):
        self.network = network
        self.index = index
        self.core = core
        self.namespace = f"srcluster-{network.suffix}-{index}"
        # interface names are at most 15 characters
        self.outside = f"sr{network.suffix}{index}o"
        self.inside = f"sr{network.suffix}{index}i"
        self.address = str(network.subnet.network_address + 1 + index)

    def create(self) -> Host:
        cluster = self.network.address
        _ip("netns", "add", self.namespace)
        self.network.hosts.append(self)  # removed with the network from here on
        _ip("link", "add", self.outside, "type", "veth", "peer", "name", self.inside)
        _ip("link", "set", self.inside, "netns", self.namespace)
        # IPv4 only: no link-local IPv6 addresses appear on either end
        _no_ipv6(None, self.outside)
        _no_ipv6(self.namespace, self.inside)
        _ip("addr", "add", f"{cluster}/32", "peer", f"{self.address}/32", "dev", self.outside)
        _ip("link", "set", self.outside, "up")
        ns = ("-n", self.namespace)
        _ip(*ns, "addr", "add", f"{self.address}/32", "peer", f"{cluster}/32", "dev", self.inside)
        _ip(*ns, "link", "set", self.inside, "up")
        _ip(*ns, "link", "set", "lo", "up")
        return self

    def prefix(self) -> list[str]:
        """What runs a command on this host: in its namespace, pinned to its core (each
        execs the next, so the process started is the command itself)."""
        pinned = ["taskset", "-c", str(self.core)] if self.core is not None else []
        return ["ip", "netns", "exec", self.namespace, *pinned]

    def cut(self) -> None:
        """Take the host off the network: its link goes down, packets are dropped both ways."""
        _ip("link", "set", self.outside, "down")

    def restore(self) -> None:
        """Bring the link back up (connections that survived carry on where they were)."""
        _ip("link", "set", self.outside, "up")

    def pids(self) -> list[int]:
        """The processes running on this host (in its namespace)."""
        listing = _ip("netns", "pids", self.namespace, check=False).stdout
        return [int(p) for p in listing.split()]

    def freeze(self) -> None:
        """Stop every process on the host (SIGSTOP), as a host that hangs or is paused."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Let the host's processes run again (SIGCONT); their connections carry on."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def shape(self, rate: str = "1gbit", burst: str = "256kb", latency: str = "50ms") -> None:
        """Limit both directions of the link with a token bucket (``tc ... tbf``)."""
        for namespace, device in ((None, self.outside), (self.namespace, self.inside)):
            ns = ["ip", "netns", "exec", namespace] if namespace else []
            subprocess.run(
                [*ns, "tc", "qdisc", "replace", "dev", device, "root", "tbf",
                 "rate", rate, "burst", burst, "latency", latency],
                capture_output=True, text=True, check=True, timeout=30,
            )  # fmt: skip

    def remove(self) -> None:
        """Delete the host's link and namespace (stop its processes first)."""
        _ip("link", "del", self.outside, check=False)  # takes the peer with it
        _ip("netns", "del", self.namespace, check=False)


class Network:
    """A private /24 for one test run: the cluster address is ``.1``, hosts ``.2`` onwards
    (never reused within the run, up to 253 of them).

    Where this process may use two cores or more, host ``i`` is pinned to the
    ``i``-th of them (one core per host; a host beyond the core count shares,
    round robin); on one core nothing is pinned.
    """

    def __init__(self) -> None:
        self.suffix = secrets.token_hex(3)
        used = _networks_in_use()
        while True:
            self.subnet = ipaddress.IPv4Network(
                f"10.{random.randint(64, 254)}.{random.randint(0, 255)}.0/24"
            )
            if not any(self.subnet.overlaps(net) for net in used):
                break
        self.address = str(self.subnet.network_address + 1)
        self.cores = sorted(os.sched_getaffinity(0))
        self.pin = len(self.cores) >= 2
        self.hosts: list[Host] = []
        self._numbers = itertools.count(1)

    def add_host(self) -> Host:
        """A new host with the next address (and the next core, when pinning)."""
        index = next(self._numbers)
        core = self.cores[(index - 1) % len(self.cores)] if self.pin else None
        return Host(self, index, core).create()

    def remove_host(self, host: Host) -> None:
        """Delete one host (its processes stopped first)."""
        host.remove()
        self.hosts.remove(host)

    def remove(self) -> None:
        """Delete every host (their processes stopped first)."""
        for host in reversed(self.hosts):
            host.remove()
        self.hosts.clear()

    def __enter__(self) -> Network:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.remove()
