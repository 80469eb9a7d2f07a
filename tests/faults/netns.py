"""Hosts for the across-hosts fault tests: network namespaces, veth links and a Postgres of
their own, all made by the test and all removed when it ends (even when it fails, even when an
earlier run was killed before it could clean up).

The layout: a *hub* namespace holds Postgres and a bridge with ``10.213.0.1/24``; every other
host is a namespace with one veth link to that bridge (``eth0``, ``10.213.0.N/24``). The
addresses exist only inside these namespaces: the root namespace gets no interface, no address
and no route, so runs in parallel (each with its own hub) cannot collide and nothing outside is
ever addressed. A *partition* takes the host's port on the bridge down: packets are silently
dropped both ways, as when a switch port or a cable dies, and TCP connections stay open and
hang instead of being reset. *Healing* brings the port back up.

The test process itself reaches Postgres through its Unix socket (a file: namespaces do not
isolate it) and each API replica through a Unix socket of its own, so partitions cut exactly the
links between hosts and never the test's view of them.

Names start with ``jkn<pid>-``; a run that finds namespaces of a process that no longer exists
(a run killed with SIGKILL) kills what is left in them and deletes them first.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .support import ROOT, WorkerProcess

# Debian's server binaries, the newest installed version
PG_BIN = max(
    Path("/usr/lib/postgresql").glob("*/bin"),
    key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    default=Path("/usr/lib/postgresql/15/bin"),
)
SUBNET = "10.213.0"  # a /24 that exists only inside the namespaces made here
HUB_ADDRESS = f"{SUBNET}.1"
PG_PORT = 5432  # inside the hub namespace: nothing else listens there
_PREFIX = "jkn"
_OWN = re.compile(rf"^{_PREFIX}(\d+)-")
_runs = itertools.count()


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(namespace: str) -> None:
    """SIGKILL every process in ``namespace`` and wait until none is left (a namespace with a
    process inside outlives ``ip netns delete``)."""
    end = time.monotonic() + 10
    while True:
        with contextlib.suppress(RuntimeError):
            pids = [int(p) for p in _ip("netns", "pids", namespace).split()]
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if time.monotonic() > end:
            raise RuntimeError(f"processes in {namespace} survive SIGKILL")
        time.sleep(0.05)


def _delete(namespace: str) -> None:
    _kill_inside(namespace)
    with contextlib.suppress(RuntimeError):
        _ip("netns", "delete", namespace)


def require_netns() -> None:
    """Fail (never skip) where namespaces cannot be made: CI runs as root on a kernel that has
    them, so their absence is a broken runner, not a reason to test less."""
    if os.geteuid() != 0:
        pytest.fail("the across-hosts tests need root (ip netns add); run them as root")
    if shutil.which("ip") is None:
        pytest.fail("the across-hosts tests need iproute2's `ip` (apt-get install iproute2)")
    if not (PG_BIN / "postgres").exists():
        pytest.fail(f"the across-hosts tests need Debian's postgresql server ({PG_BIN})")
    probe = f"{_PREFIX}{os.getpid()}-probe{next(_runs)}"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as exc:
        pytest.fail(f"cannot make a network namespace here: {exc}")
    _delete(probe)


def remove_stale() -> None:
    """Delete the namespaces (and data folders) of runs whose process is gone."""
    for line in _ip("netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        match = _OWN.match(name)
        if match and not _alive(int(match.group(1))):
            _delete(name)
    for folder in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*-pg*"):
        match = _OWN.match(folder.name)
        if match and not _alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Host:
    """One namespace linked to the hub: ``address`` on its ``eth0``; ``port`` is the other end,
    on the hub's bridge."""

    namespace: str
    address: str
    port: str

    def exec(self) -> list[str]:
        """The prefix of a command run on this host."""
        return ["ip", "netns", "exec", self.namespace]


@dataclass
class Network:
    """The hub and its hosts; ``close()`` removes all of it (also at exit, if a test's own
    cleanup never ran)."""

    name: str = field(default_factory=lambda: f"{_PREFIX}{os.getpid()}-{next(_runs)}")
    hosts: dict[str, Host] = field(default_factory=dict)
    numbers: Iterator[int] = field(default_factory=lambda: itertools.count(2))

    @property
    def hub(self) -> str:
        return f"{self.name}-hub"

    def open(self) -> Network:
        atexit.register(self.close)
        _ip("netns", "add", self.hub)
        _ip("-n", self.hub, "link", "set", "lo", "up")
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "addr", "add", f"{HUB_ADDRESS}/24", "dev", "br0")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        return self

    @property
    def hub_host(self) -> Host:
        """The hub itself, to run something next to Postgres (it has no port to cut)."""
        return Host(self.hub, HUB_ADDRESS, "")

    def attach(self, role: str) -> Host:
        """A new host named ``role`` (a few letters), linked to the hub."""
        # never reused: a deleted namespace's veth may outlive it for a moment
        number = next(self.numbers)
        host = Host(f"{self.name}-{role}", f"{SUBNET}.{number}", f"p{number}")
        self.hosts[role] = host
        _ip("netns", "add", host.namespace)
        _ip("-n", host.namespace, "link", "set", "lo", "up")
        # both ends are made inside their namespaces: the root namespace never sees them
        _ip(
            "link", "add", "name", "eth0", "netns", host.namespace, "type", "veth",
            "peer", "name", host.port, "netns", self.hub,
        )  # fmt: skip
        _ip("-n", self.hub, "link", "set", host.port, "master", "br0")
        _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.namespace, "link", "set", "eth0", "up")
        _ip("-n", self.hub, "link", "set", host.port, "up")
        return host

    def cut(self, host: Host) -> None:
        """Partition ``host`` from every other: its bridge port goes down, packets are dropped."""
        _ip("-n", self.hub, "link", "set", host.port, "down")

    def heal(self, host: Host) -> None:
        _ip("-n", self.hub, "link", "set", host.port, "up")

    def detach(self, host: Host) -> None:
        """Kill what runs on ``host`` and delete it (its veth link goes with it)."""
        _delete(host.namespace)
        self.hosts = {k: v for k, v in self.hosts.items() if v is not host}

    def close(self) -> None:
        for host in list(self.hosts.values()):
            self.detach(host)
        if self.hub in _ip("netns", "list"):
            _delete(self.hub)
        atexit.unregister(self.close)


class Postgres:
    """A throwaway Postgres cluster on the hub (``initdb`` into a temporary folder, the
    ``postgres`` binary run directly): TCP on ``10.213.0.1:5432`` for the hosts, a Unix socket
    in its folder for the test process. Not a ``pg_createcluster`` cluster, so a run that dies
    leaves nothing registered system-wide: its folder and namespace are all there is."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.folder = Path(tempfile.mkdtemp(prefix=f"{network.name}-pg-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "postgres", *, port: int = PG_PORT) -> str:
        """How the hosts reach it: over the network (``port``: through a proxy on the hub)."""
        return f"postgresql://postgres@{HUB_ADDRESS}:{port}/{database}"

    def local_url(self, database: str = "postgres") -> str:
        """How the test process reaches it: its Unix socket, outside every partition."""
        return f"postgresql://postgres@/{database}?host={self.folder}&port={PG_PORT}"

    def _as_postgres(self, *command: str) -> list[str]:
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *command]

    def start(self) -> Postgres:
        atexit.register(self.stop)
        shutil.chown(self.folder, "postgres", "postgres")
        data = self.folder / "data"
        subprocess.run(
            self._as_postgres(
                str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                "--no-sync", "-E", "UTF8", "--locale=C.UTF-8",
            ),
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {SUBNET}.0/24 trust\n")
        log = (self.folder / "postgres.log").open("wb")
        self.proc = subprocess.Popen(
            [
                "ip", "netns", "exec", self.network.hub,
                *self._as_postgres(
                    str(PG_BIN / "postgres"), "-D", str(data),
                    "-c", f"listen_addresses={HUB_ADDRESS}", "-c", f"port={PG_PORT}",
                    "-c", f"unix_socket_directories={self.folder}",
                    "-c", "fsync=off", "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off", "-c", "max_connections=200",
                ),
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        end = time.monotonic() + 30
        socket = self.folder / f".s.PGSQL.{PG_PORT}"
        while not socket.exists():
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > end:
                pytest.fail(f"Postgres on {self.network.hub} did not start:\n{self.log()}")
            time.sleep(0.05)
        ready = [str(PG_BIN / "pg_isready"), "-h", str(self.folder), "-p", str(PG_PORT)]
        while subprocess.run(ready, capture_output=True, timeout=10).returncode != 0:
            if time.monotonic() > end:
                pytest.fail(f"Postgres on {self.network.hub} is not ready:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        path = self.folder / "postgres.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT ends every backend), then the folder goes."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        shutil.rmtree(self.folder, ignore_errors=True)
        atexit.unregister(self.stop)


async def start_on(host: Host, log: Path, *argv: str, **settings: str) -> WorkerProcess:
    """``python ARGV`` on ``host`` (cwd: the log's folder, so no stray ``.env`` is read), with
    ``JOBKEEPER_<SETTING>`` from ``settings`` and the repository on its path; output to ``log``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBKEEPER_")}
    env.update(
        PYTHONPATH=str(ROOT),
        **{f"JOBKEEPER_{name.upper()}": value for name, value in settings.items()},
    )
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        proc = await asyncio.create_subprocess_exec(
            *host.exec(), sys.executable, *argv,
            stdin=asyncio.subprocess.DEVNULL, stdout=fd, stderr=asyncio.subprocess.STDOUT,
            env=env, cwd=log.parent,
        )  # fmt: skip
    finally:
        os.close(fd)
    return WorkerProcess(proc, log)


async def start_replica(
    host: Host, database_url: str, folder: Path, **settings: str
) -> tuple[WorkerProcess, Path]:
    """An API replica (uvicorn on ``create_app``, auth disabled: tenant ``default``) on ``host``,
    its database ``database_url``, answering HTTP on a Unix socket in ``folder`` (returned)."""
    sock = folder / f"{host.namespace}.sock"
    replica = await start_on(
        host, folder / f"{host.namespace}.log",
        "-m", "uvicorn", "--factory", "jobkeeper.api.app:create_app",
        "--uds", str(sock), "--log-level", "warning",
        database_url=database_url, auth="disabled", **settings,
    )  # fmt: skip
    return replica, sock
