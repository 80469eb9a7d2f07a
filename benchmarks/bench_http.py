"""HTTP benchmark: ``GET /jobs/{id}`` (cache hit vs ``Cache-Control: no-cache``) and ``POST /jobs``
against ONE ``jobkeeper serve`` process (one uvicorn worker), loaded by ``wrk`` (or, without wrk,
this file's asyncio load generator) in its own process; then ABAB rounds of the cached read
against its peer, a bare Starlette route under the same uvicorn options (this file as
``--role bare``), with the same read's ``If-None-Match`` 304s in each round. Target: the cached
read at >= 0.7x the peer's rate, the 304s at least as fast as the 200s.

The server is ``JOBKEEPER_DATABASE_URL`` when set (its user must be allowed to ``CREATE DATABASE``),
else an embedded Postgres (pgserver). A fresh scratch database is created, migrated with
``jobkeeper.migrate.upgrade`` and dropped at the end, even on error. A real API key is made with
``jobkeeper keys create``; the API server and the load generator run as child processes on loopback
(127.0.0.1), each in its own process group, and every one of them is killed on the way out.

    .venv/bin/python benchmarks/bench_http.py            # print the markdown report
    .venv/bin/python benchmarks/bench_http.py --write    # ... and update docs/benchmarks.md
    .venv/bin/python benchmarks/bench_http.py --quick    # smoke run, short loads (~30 s)
    .venv/bin/python benchmarks/bench_http.py --loadgen python   # without wrk

Uses ``wrk`` when it is on the PATH (``apt-get install wrk``). Exits with status 1 when a request
failed (a non-2xx status, a socket error or a timeout), the cache-hit rows reached Postgres or a
target was missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from common import (
    arguments,
    load_average,
    machine,
    nearest_rank,
    postgres_server,
    proc_cpu,
    publish,
    scratch,
)
from plots import bars
from systems.jobkeeper import asyncpg_dsn, in_schema, serve_uvicorn

SCRIPT = str(Path(__file__).resolve())

HOST = "127.0.0.1"  # loopback only
TENANT = "bench"
GET_KIND = "bench.http.get"
POST_KIND = "bench.http.post"
CACHE_TTL = 3600  # seconds: nothing expires from the server's cache while it is measured
START_TIMEOUT_S = 30.0
WRK_TIMEOUT_S = 5  # a request slower than this counts as a timeout error
MS = "ms"

HIT = "`GET /jobs/{id}`, cache hit"
NOT_MODIFIED = "`GET /jobs/{id}`, cache hit, `If-None-Match` (304)"
BARE = "peer: bare Starlette route, Bearer key in a dict, pre-encoded JSON"
STRONG = "`GET /jobs/{id}`, `Cache-Control: no-cache` (reads Postgres)"
POST = "`POST /jobs` (one insert each)"
PEER_TARGET = 0.7  # a cached read's rate over the bare route's, at least


@dataclass(frozen=True, slots=True)
class Plan:
    jobs: int  # seeded jobs that the GET rows cycle through
    duration_s: int  # each measured load run
    warmup_s: int  # an untimed load run before each measured one
    connections: tuple[int, ...]
    rounds: int  # ABAB rounds of the cached read against the bare peer
    peer_connections: int  # the connections of those rounds


FULL = Plan(
    jobs=1_000, duration_s=10, warmup_s=2, connections=(1, 32), rounds=4, peer_connections=32
)
QUICK = Plan(jobs=100, duration_s=2, warmup_s=1, connections=(1, 16), rounds=2, peer_connections=16)


@dataclass(frozen=True, slots=True)
class Wrk:
    """What a load run reports (wrk's ``done()`` or the python generator; latencies in µs)."""

    requests: int
    duration_us: int
    errors: int  # non-2xx/3xx statuses + connect/read/write errors + timeouts
    timeouts: int
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float

    @staticmethod
    def parse(raw: Mapping[str, object]) -> Wrk:
        def num(key: str) -> float:
            value = raw[key]
            if not isinstance(value, int | float):
                raise RuntimeError(f"wrk reported {key}={value!r}")
            return float(value)

        errors = sum(int(num(k)) for k in ("connect", "read", "write", "status", "timeout"))
        return Wrk(
            requests=int(num("requests")),
            duration_us=int(num("duration_us")),
            errors=errors,
            timeouts=int(num("timeout")),
            p50_us=num("p50_us"),
            p90_us=num("p90_us"),
            p99_us=num("p99_us"),
            max_us=num("max_us"),
        )

    @property
    def rps(self) -> float:
        return self.requests * 1e6 / self.duration_us


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    connections: int
    run: Wrk
    server_cpu_s: float  # the server process's user + system CPU during the measured run
    cache: CacheCount | None  # the server's cache hits and misses during the measured run
    row_requests: int  # requests of the warm-up and the measured run

    @property
    def cpu_us_per_request(self) -> float:
        return self.server_cpu_s * 1e6 / max(1, self.run.requests)

    @property
    def cpu_share(self) -> float:
        """Server CPU over wall time: 1.0 is one core busy all the time."""
        return self.server_cpu_s * 1e6 / self.run.duration_us


# --- child processes ---------------------------------------------------------------------------


def _jobkeeper() -> list[str]:
    """The ``jobkeeper`` CLI of this interpreter's environment."""
    beside = Path(sys.executable).with_name("jobkeeper")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("jobkeeper")
    if found is None:
        raise SystemExit("the jobkeeper CLI is not installed (pip install -e .)")
    return [found]


def child_env(url: str, **settings: str) -> dict[str, str]:
    """This environment without any ``JOBKEEPER_*`` setting but ``url`` and ``settings``: the
    server runs with jobkeeper's defaults except what the method states."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBKEEPER_")}
    env["JOBKEEPER_DATABASE_URL"] = url
    env.update({f"JOBKEEPER_{k.upper()}": v for k, v in settings.items()})
    return env


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 10.0) -> None:
    """SIGTERM to the child's own process group, SIGKILL after ``grace`` seconds."""
    if proc.returncode is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), wait)
            return


async def create_key(url: str, workdir: Path) -> str:
    """An API key for ``TENANT``, made by ``jobkeeper keys create`` (printed on stdout)."""
    proc = await asyncio.create_subprocess_exec(
        *_jobkeeper(),
        "keys",
        "create",
        "--tenant",
        TENANT,
        "--label",
        "bench_http",
        cwd=workdir,
        env=child_env(url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await stop_process(proc, grace=1.0)
    lines = out.decode().split()
    if proc.returncode != 0 or not lines or not lines[-1].startswith("jk_"):
        raise RuntimeError(f"jobkeeper keys create failed: {err.decode().strip()}")
    return lines[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class ApiServer:
    proc: asyncio.subprocess.Process
    base: str
    log: Path


async def start_api(url: str, workdir: Path) -> ApiServer:
    """``jobkeeper serve`` on a free loopback port, ready when ``/readyz`` is 200."""
    port = free_port()
    argv = [*_jobkeeper(), "serve", "--host", HOST, "--port", str(port)]
    env = child_env(url, cache_ttl=str(CACHE_TTL))
    return await _start(argv, env, port, workdir / "serve.log", "/readyz", {})


async def start_bare(key: str, body: bytes, workdir: Path) -> ApiServer:
    """The peer: this file as ``--role bare`` (a bare Starlette route under uvicorn with
    ``jobkeeper serve``'s options) on a free loopback port, ready when it answers a GET."""
    port = free_port()
    body_file = workdir / "bare-body.json"
    body_file.write_bytes(body)
    argv = [
        sys.executable,
        SCRIPT,
        "--role",
        "bare",
        "--bare-args",
        json.dumps([HOST, port, key, TENANT, str(body_file)]),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBKEEPER_")}
    headers = {"Authorization": f"Bearer {key}"}
    return await _start(argv, env, port, workdir / "bare.log", "/jobs/ready", headers)


def _text(log: Path) -> str:
    return log.read_text(errors="replace")


async def _start(
    argv: Sequence[str],
    env: Mapping[str, str],
    port: int,
    log: Path,
    ready: str,
    headers: Mapping[str, str],
) -> ApiServer:
    """A uvicorn server as a child process, ready when uvicorn says it listens on ``port`` (so
    a port taken meanwhile by someone else cannot pass for ours) and ``ready`` is 200."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=log.parent,
            env=dict(env),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    server = ApiServer(proc, f"http://{HOST}:{port}", log)
    listening = f"Uvicorn running on http://{HOST}:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    async with httpx.AsyncClient(base_url=server.base, headers=dict(headers)) as client:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                break
            if listening in _text(log):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(ready)).status_code == 200:
                        return server
            await asyncio.sleep(0.1)
    await stop_process(proc)
    tail = _text(log)[-2000:]
    raise RuntimeError(f"{' '.join(argv[:3])} did not become ready:\n{tail}")


def bare_app(key: str, tenant: str, body: bytes) -> Any:
    """The peer of a cached ``GET /jobs/{id}``: a Starlette route that looks the Bearer key up
    in a dict and answers pre-encoded JSON (the bytes jobkeeper answered for a seeded job)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    tenants = {key: tenant}

    async def get_job(request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or tenants.get(token.strip()) is None:
            return Response(status_code=401)
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/jobs/{job_id}", get_job)])


def bare_main(args_json: str) -> int:
    """Serve ``bare_app`` as ``jobkeeper serve`` serves jobkeeper: the same uvicorn options
    (event loop, HTTP parser, access log) and the same logging, on one process."""
    import uvicorn

    host, port, key, tenant, body_file = json.loads(args_json)
    options, configure_logging = serve_uvicorn()
    configure_logging()
    uvicorn.run(
        bare_app(key, tenant, Path(body_file).read_bytes()), host=host, port=port, **options
    )
    return 0


# --- load ----------------------------------------------------------------------------------------

_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  local f = assert(io.open(os.getenv("BENCH_WRK_OUT"), "w"))
  f:write(string.format(
    '{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %.1f, "p90_us": %.1f, "p99_us": %.1f, ' ..
    '"max_us": %.1f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
  f:close()
end
"""


def _lua(text: str) -> str:
    return json.dumps(text)  # a JSON string of ASCII text is a valid Lua string literal


def get_script(
    key: str, ids: Sequence[str], *, strong: bool, etags: Sequence[str] | None = None
) -> str:
    """GET each seeded job in turn (one wrk thread, so one counter); with ``etags`` (one per
    job), each request sends its job's ``If-None-Match``."""
    paths = ",\n".join(_lua(f"/jobs/{i}") for i in ids)
    no_cache = 'wrk.headers["Cache-Control"] = "no-cache"\n' if strong else ""
    auth = _lua("Bearer " + key)
    if etags is None:
        per_request = "return wrk.format(nil, paths[k])"
        tags = ""
    else:
        per_request = (
            f'return wrk.format(nil, paths[k], {{["Authorization"] = {auth}, '
            '["If-None-Match"] = tags[k]})'
        )
        tags = "local tags = {\n" + ",\n".join(_lua(t) for t in etags) + "\n}\n"
    return (
        f"local paths = {{\n{paths}\n}}\n{tags}local n = #paths\nlocal i = 0\n"
        f'wrk.method = "GET"\nwrk.headers["Authorization"] = {auth}\n'
        f"{no_cache}"
        "request = function()\n  i = i + 1\n  local k = (i % n) + 1\n"
        f"  {per_request}\nend\n"
        f"{_DONE}"
    )


def post_script(key: str) -> str:
    """The same small submit every time (wrk builds the request once)."""
    body = json.dumps({"kind": POST_KIND, "payload": {"invoice": 1234, "pages": 3}})
    return (
        f'wrk.method = "POST"\nwrk.path = "/jobs"\nwrk.body = {_lua(body)}\n'
        f'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = {_lua("Bearer " + key)}\n{_DONE}'
    )


def get_raw(
    host: str, key: str, ids: Sequence[str], strong: bool, etags: Sequence[str] | None = None
) -> list[str]:
    """The GET requests as HTTP/1.1 text, one per seeded job (python loadgen)."""
    extra = "Cache-Control: no-cache\r\n" if strong else ""
    matches = [""] * len(ids) if etags is None else [f"If-None-Match: {t}\r\n" for t in etags]
    return [
        f"GET /jobs/{i} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"{extra}{match}\r\n"
        for i, match in zip(ids, matches, strict=True)
    ]


def post_raw(host: str, key: str) -> list[str]:
    body = json.dumps({"kind": POST_KIND, "payload": {"invoice": 1234, "pages": 3}})
    return [
        f"POST /jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ]


async def run_wrk(base: str, script: Path, connections: int, seconds: int, out: Path) -> Wrk:
    """One ``wrk`` run (one thread, ``connections`` keep-alive connections), bounded in time."""
    proc = await asyncio.create_subprocess_exec(
        "wrk",
        "--threads",
        "1",
        "--connections",
        str(connections),
        "--duration",
        f"{seconds}s",
        "--timeout",
        f"{WRK_TIMEOUT_S}s",
        "--script",
        str(script),
        base,
        env={**os.environ, "BENCH_WRK_OUT": str(out)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        printed, _ = await asyncio.wait_for(proc.communicate(), seconds + WRK_TIMEOUT_S + 30)
    finally:
        await stop_process(proc, grace=2.0)
    result = _take_result(out)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{printed.decode(errors='replace')}")
    return result


async def run_python_loadgen(
    base: str, raw: Path, connections: int, seconds: int, out: Path
) -> Wrk:
    """This file as ``--role loadgen``: the fallback when wrk is not installed."""
    host, _, port = base.removeprefix("http://").partition(":")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        SCRIPT,
        "--role",
        "loadgen",
        "--loadgen-args",
        json.dumps([host, int(port), str(raw), connections, seconds, str(out)]),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        printed, _ = await asyncio.wait_for(proc.communicate(), seconds + WRK_TIMEOUT_S + 30)
    finally:
        await stop_process(proc, grace=2.0)
    result = _take_result(out)
    if proc.returncode != 0 or result is None:
        text = printed.decode(errors="replace")
        raise RuntimeError(f"loadgen failed ({proc.returncode}):\n{text}")
    return result


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response with a Content-Length (or none); its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
        elif name.lower() == "transfer-encoding":
            raise ValueError("chunked responses are not supported")
    if length:
        await reader.readexactly(length)
    return status


async def loadgen(
    host: str, port: int, texts: Sequence[str], connections: int, seconds: float
) -> dict[str, float]:
    """``connections`` keep-alive connections, each sending its next request when the previous
    response arrived, for ``seconds``; the same numbers wrk's ``done()`` reports."""
    requests = [t.encode("latin-1") for t in texts]
    turn = iter(range(1 << 62))
    latencies: list[int] = []
    errors = dict.fromkeys(("connect", "read", "write", "status", "timeout"), 0)
    clock = time.perf_counter_ns
    start = clock()
    deadline = start + int(seconds * 1e9)

    async def connection() -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            errors["connect"] += 1
            return
        try:
            while clock() < deadline:
                sent = clock()
                try:
                    writer.write(requests[next(turn) % len(requests)])
                    await writer.drain()
                except OSError:
                    errors["write"] += 1
                    return
                try:
                    status = await asyncio.wait_for(_read_response(reader), WRK_TIMEOUT_S)
                except TimeoutError:
                    errors["timeout"] += 1
                    return
                except (OSError, ValueError, asyncio.IncompleteReadError):
                    errors["read"] += 1
                    return
                latencies.append(clock() - sent)
                if status > 399:
                    errors["status"] += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    duration = clock() - start
    latencies.sort()

    def pct(q: float) -> float:
        return nearest_rank(latencies, q) / 1000 if latencies else 0.0

    return {
        "requests": len(latencies),
        "duration_us": duration // 1000,
        **errors,
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "max_us": latencies[-1] / 1000 if latencies else 0.0,
    }


def loadgen_main(args_json: str) -> int:
    host, port, raw, connections, seconds, out = json.loads(args_json)
    texts = json.loads(Path(raw).read_text())
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(loadgen(host, int(port), texts, int(connections), float(seconds)))
    Path(out).write_text(json.dumps(result))
    return 0


def _take_result(out: Path) -> Wrk | None:
    """What ``done()`` wrote, removing the file (``None``: wrk wrote nothing)."""
    if not out.exists():
        return None
    result = Wrk.parse(json.loads(out.read_text()))
    out.unlink()
    return result


@dataclass(frozen=True, slots=True)
class CacheCount:
    hits: int
    misses: int

    def __sub__(self, other: CacheCount) -> CacheCount:
        return CacheCount(self.hits - other.hits, self.misses - other.misses)


_COUNTER = re.compile(r"^jobkeeper_cache_(hits|misses)(?:_total)? ([0-9.e+]+)$", re.MULTILINE)


async def cache_count(server: ApiServer) -> CacheCount | None:
    """The server's cache counters from its ``/metrics`` (``None`` if it has none)."""
    async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
        response = await client.get("/metrics")
    if response.status_code != 200:
        return None
    found = {name: int(float(value)) for name, value in _COUNTER.findall(response.text)}
    if set(found) != {"hits", "misses"}:
        return None
    return CacheCount(found["hits"], found["misses"])


@dataclass(frozen=True, slots=True)
class Load:
    """One kind of request, as a wrk Lua script and as raw HTTP/1.1 requests (python loadgen)."""

    name: str
    script: Path
    raw: Path  # JSON list of request texts, cycled in order


async def run_load(
    generator: str, base: str, load: Load, connections: int, seconds: int, out: Path
) -> Wrk:
    if generator == "wrk":
        return await run_wrk(base, load.script, connections, seconds, out)
    return await run_python_loadgen(base, load.raw, connections, seconds, out)


async def measure(
    server: ApiServer,
    generator: str,
    load: Load,
    connections: int,
    plan: Plan,
    workdir: Path,
    *,
    counters: bool = True,
) -> Row:
    """Warm-up run, then the measured run with the server's CPU time and (with ``counters``)
    cache counters read around it."""
    out = workdir / "load-result.json"
    warm = await run_load(generator, server.base, load, connections, plan.warmup_s, out)
    before = await cache_count(server) if counters else None
    cpu = proc_cpu(server.proc.pid)
    run = await run_load(generator, server.base, load, connections, plan.duration_s, out)
    cpu = proc_cpu(server.proc.pid) - cpu
    after = await cache_count(server) if counters else None
    counted = None if before is None or after is None else after - before
    row = Row(load.name, connections, run, cpu, counted, warm.requests + run.requests)
    sys.stderr.write(
        f"  {row.name}, {connections} conn: {run.rps:,.0f} req/s, p50 {run.p50_us / 1000:.2f} ms,"
        f" p99 {run.p99_us / 1000:.2f} ms, errors {run.errors}\n"
    )
    return row


@dataclass(frozen=True, slots=True)
class Seeded:
    ids: list[str]
    etags: list[str]  # each job's ETag, in the order of ids
    body: bytes  # what a cached GET of the first job answered


async def seed(base: str, key: str, count: int) -> Seeded:
    """``count`` jobs submitted over HTTP (so the server's cache holds them), 8 at a time."""
    ids: list[str] = []
    etags: dict[str, str] = {}
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:

        async def submit(i: int) -> str:
            body = {"kind": GET_KIND, "payload": {"seed": i}}
            response = await client.post("/jobs", json=body)
            if response.status_code != 201:
                raise RuntimeError(f"seeding: {response.status_code} {response.text}")
            job_id: str = response.json()["id"]
            etags[job_id] = response.headers["ETag"]
            return job_id

        for start in range(0, count, 8):
            ids += await asyncio.gather(*(submit(i) for i in range(start, min(count, start + 8))))
        # the ways a GET row reads must answer as expected before any load
        for extra, status in (
            ({}, 200),
            ({"Cache-Control": "no-cache"}, 200),
            ({"If-None-Match": etags[ids[0]]}, 304),
        ):
            response = await client.get(f"/jobs/{ids[0]}", headers=extra)
            if response.status_code != status:
                raise RuntimeError(f"GET check: {response.status_code} {response.text}")
        body = (await client.get(f"/jobs/{ids[0]}")).content
    return Seeded(ids, [etags[i] for i in ids], body)


@dataclass(frozen=True, slots=True)
class Results:
    rows: list[Row]
    rounds: list[list[Row]]  # ABAB rounds: the cached read, its 304 and the bare peer, each
    postgres: str
    load: tuple[tuple[float, float, float], tuple[float, float, float]]
    posted_jobs: int  # jobs of POST_KIND in the table at the end
    posted_requests: int  # 2xx POST responses the load generator counted (warm-up + measured)
    generator: str  # "wrk" or "python"


async def run(server_url: str, plan: Plan, generator: str) -> Results:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_http_") as tmp:
        workdir = Path(tmp)
        async with scratch(server_url, "http") as url:
            admin = await asyncpg.connect(asyncpg_dsn(server_url))
            try:
                key = await create_key(url, workdir)
                server = await start_api(url, workdir)
                bare: ApiServer | None = None
                try:
                    sys.stderr.write(f"seeding {plan.jobs} jobs over HTTP, then measuring:\n")
                    seeded = await seed(server.base, key, plan.jobs)
                    ids, etags = seeded.ids, seeded.etags
                    bare = await start_bare(key, seeded.body, workdir)
                    host = server.base.removeprefix("http://")
                    forms = {
                        HIT: (get_script(key, ids, strong=False), get_raw(host, key, ids, False)),
                        NOT_MODIFIED: (
                            get_script(key, ids, strong=False, etags=etags),
                            get_raw(host, key, ids, False, etags),
                        ),
                        STRONG: (get_script(key, ids, strong=True), get_raw(host, key, ids, True)),
                        POST: (post_script(key), post_raw(host, key)),
                    }
                    loads = {}
                    for n, (name, (lua, raw)) in enumerate(forms.items()):
                        script, requests = workdir / f"load{n}.lua", workdir / f"load{n}.json"
                        script.write_text(lua)
                        requests.write_text(json.dumps(raw))
                        loads[name] = Load(name, script, requests)
                    rows = [
                        await measure(server, generator, loads[name], c, plan, workdir)
                        for name in (HIT, STRONG, POST)
                        for c in plan.connections
                    ]
                    # the bare peer reads the same paths with the same key (host: its own)
                    peer = Load(BARE, loads[HIT].script, loads[HIT].raw)
                    c = plan.peer_connections
                    rounds = []
                    for n in range(plan.rounds):
                        sys.stderr.write(f"ABAB round {n + 1} of {plan.rounds}:\n")
                        rounds.append(
                            [
                                await measure(server, generator, loads[HIT], c, plan, workdir),
                                await measure(
                                    bare, generator, peer, c, plan, workdir, counters=False
                                ),
                                await measure(
                                    server, generator, loads[NOT_MODIFIED], c, plan, workdir
                                ),
                            ]
                        )
                finally:
                    await stop_process(server.proc)
                    if bare is not None:
                        await stop_process(bare.proc)
                postgres = str(await admin.fetchval("SELECT version()"))
                target = await asyncpg.connect(asyncpg_dsn(url))
                try:
                    posted = int(
                        await target.fetchval(
                            in_schema("SELECT count(*) FROM jobs WHERE kind = $1"), POST_KIND
                        )
                    )
                finally:
                    await target.close()
            finally:
                await admin.close()
    posted_requests = sum(r.row_requests for r in rows if r.name == POST)
    return Results(
        rows, rounds, postgres, (load_before, os.getloadavg()), posted, posted_requests, generator
    )


# --- the report ----------------------------------------------------------------------------------


def _version(name: str) -> str:
    try:
        return package_version(name)
    except PackageNotFoundError:
        return "not installed"


def _wrk_version() -> str:
    try:
        done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
        first = (done.stdout or done.stderr).splitlines()[0]
        return first.split(" Copyright")[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "wrk (version unknown)"


def _generator(results: Results) -> str:
    if results.generator == "wrk":
        return _wrk_version()
    loop = "uvloop" if _version("uvloop") != "not installed" else "asyncio"
    return f"`bench_http.py --role loadgen` (asyncio streams on {loop}; wrk not installed)"


def machine_lines(results: Results, server: str) -> list[str]:
    options, _ = serve_uvicorn()
    loop, parser = options["loop"], options["http"]
    return [
        *machine(server, results.postgres),
        f"HTTP: uvicorn {_version('uvicorn')} (`jobkeeper serve` sets `loop={loop}`: "
        f"{loop} {_version(loop) if loop == 'uvloop' else ''}, `http={parser}`: "
        f"{parser} {_version(parser)}), "
        f"FastAPI {_version('fastapi')}, Starlette {_version('starlette')}, "
        f"sse-starlette {_version('sse-starlette')}; load generator: {_generator(results)}",
        f"{load_average(*results.load)} (other work may share the machine)",
    ]


def method_lines(plan: Plan, results: Results) -> list[str]:
    generator = (
        "`wrk`, 1 thread"
        if results.generator == "wrk"
        else "this file's asyncio load generator, one process"
    )
    tool = "`wrk`" if results.generator == "wrk" else "load generator"
    conns = " and ".join(str(c) for c in plan.connections)
    return [
        "- Processes: `jobkeeper serve --host 127.0.0.1 --port <free port>` (ONE uvicorn worker "
        "process: one event loop, one cache, one pool of 10 connections) and the load "
        f"generator ({generator}), each a child process in its own process group, both on "
        "loopback; the parent seeds, reads the server's counters between runs and kills every "
        "child on the way out. They share the machine's CPUs with Postgres.",
        "- Server settings: jobkeeper's defaults (every other `JOBKEEPER_*` variable removed "
        f"from its environment) except `JOBKEEPER_CACHE_TTL={CACHE_TTL}`, so no entry expires "
        "during the run; notify-mode change feed; `JOBKEEPER_AUTH=keys` with a real key from "
        "`jobkeeper keys create --tenant bench`, sent as `Authorization: Bearer` on every "
        "request (verified keys are trusted for 10 s, then checked again).",
        f"- Data: a fresh database migrated to head; {plan.jobs:,} jobs submitted with "
        "`POST /jobs` (8 at a time) before any load, so the server's cache holds every one; the "
        "GET rows cycle through them in order (the 304 rows send each job's `ETag` from its "
        "submit as `If-None-Match`). Checked before the load: a cached and a `no-cache` GET "
        "answer 200, an `If-None-Match` one 304.",
        f"- Load: for each row an untimed {plan.warmup_s} s {tool} run, then a measured "
        f"{plan.duration_s} s run, with {conns} keep-alive HTTP/1.1 connections (closed loop: each "
        "connection sends its next request when the previous response arrived, so latency at "
        "high concurrency is mostly queueing in the server). req/s = completed responses / "
        "the run's duration; p50/p90/p99/max are the generator's latency percentiles (request "
        "written to "
        "response read). Errors = non-2xx statuses + socket errors + timeouts "
        f"(> {WRK_TIMEOUT_S} s). POST sends the same small body each time, without "
        "`Idempotency-Key`: each request "
        "inserts one job (and its event) in one statement.",
        "- Server CPU: user + system time of the server process (`/proc/<pid>/stat`) over the "
        "measured run; per request and as a share of one core (1.00 = one core busy).",
        "- Cache hits / misses: the server's own `jobkeeper_cache_hits_total` and "
        "`jobkeeper_cache_misses_total` from `GET /metrics`, read just before and after the "
        "measured run. A strong read (`Cache-Control: no-cache`) does not consult the cache, so "
        "it counts neither; a submit stores the new job without a lookup.",
        f"- The peer, measured in the same run: {plan.rounds} rounds at "
        f"{plan.peer_connections} connections, each round one {tool} run (warm-up, then "
        "measured, as above) of: the cached `GET /jobs/{id}` (A), the bare peer (B), the same "
        "GET with each job's `If-None-Match` (304), so A and B alternate (ABAB) and machine noise "
        "falls on both. The bare peer is a second process started by this script: a Starlette "
        "route `/jobs/{job_id}` that looks the Bearer key up in a dict and answers the bytes "
        "jobkeeper answered for a seeded job (same size), served by `uvicorn.run` with "
        "`jobkeeper serve`'s options (event loop, HTTP parser, `log_config=None`) after "
        "`configure_logging()`, so it writes the same access log line. The ratio of a round is "
        "A's req/s over B's; the verdict takes the median round.",
    ]


def _row(r: Row) -> str:
    run = r.run
    cache = "n/a" if r.cache is None else f"{r.cache.hits:,} / {r.cache.misses:,}"
    return (
        f"| {r.name} | {r.connections} | {run.requests:,} | {run.rps:,.0f} "
        f"| {run.p50_us / 1000:.2f} | {run.p90_us / 1000:.2f} | {run.p99_us / 1000:.2f} "
        f"| {run.max_us / 1000:.1f} | {r.cpu_us_per_request:,.0f} | {r.cpu_share:.2f} "
        f"| {cache} | {run.errors} |"
    )


def _ratio(a: Row, b: Row) -> float:
    return a.run.rps / b.run.rps if b.run.rps else 0.0


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def peer_lines(results: Results) -> tuple[list[str], bool]:
    """The ABAB rounds as a table and the two verdicts: the cached read at least
    ``PEER_TARGET`` of the bare route, and its 304 at least as fast as its 200."""
    if not results.rounds:
        return [], True
    lines = [
        "| Round | cached GET req/s | bare peer req/s | cached GET / peer | 304 req/s "
        "| 304 / 200 | cached GET CPU µs/req | peer CPU µs/req | 304 CPU µs/req |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for n, (hit, bare, same) in enumerate(results.rounds, 1):
        lines.append(
            f"| {n} | {hit.run.rps:,.0f} | {bare.run.rps:,.0f} | {_ratio(hit, bare):.2f} "
            f"| {same.run.rps:,.0f} | {_ratio(same, hit):.2f} | {hit.cpu_us_per_request:,.0f} "
            f"| {bare.cpu_us_per_request:,.0f} | {same.cpu_us_per_request:,.0f} |"
        )
    peer = _median([_ratio(hit, bare) for hit, bare, _ in results.rounds])
    cpu = _median(
        [bare.cpu_us_per_request / hit.cpu_us_per_request for hit, bare, _ in results.rounds]
    )
    not_modified = _median([_ratio(same, hit) for hit, _, same in results.rounds])
    peer_ok, not_modified_ok = peer >= PEER_TARGET, not_modified >= 1.0
    lines += [
        "",
        f"- Cached `GET /jobs/{{id}}` over the bare peer, median of the rounds: **{peer:.2f}x** "
        f"(target >= {PEER_TARGET}x): {'**PASS**' if peer_ok else '**MISSED**'}.",
        f"- Server CPU per request, the peer's over the cached read's, median of the rounds: "
        f"{cpu:.2f}x (what the ratio of rates would be with each server alone on a core).",
        f"- `If-None-Match` (304) over the 200 of the same round, median: **{not_modified:.2f}x** "
        f"(target >= 1.0x): {'**PASS**' if not_modified_ok else '**MISSED**'}.",
    ]
    return lines, peer_ok and not_modified_ok


def checks(results: Results) -> tuple[list[str], bool]:
    rows = [*results.rows, *(r for round_ in results.rounds for r in round_)]
    errors = sum(r.run.errors for r in rows)
    lines = [f"- Failed requests (non-2xx, socket errors, timeouts): {errors} (expected 0)."]
    ok = errors == 0
    counted = [r for r in rows if r.cache is not None and r.name in (HIT, NOT_MODIFIED, STRONG)]
    if counted:
        # a cache hit never reaches Postgres; in-flight requests at a run's edges may add a few
        hit_ok = all(
            r.cache is not None
            and (
                (
                    r.name in (HIT, NOT_MODIFIED)
                    and r.cache.misses == 0
                    and r.cache.hits >= r.run.requests
                )
                or (r.name == STRONG and r.cache.hits == 0)
            )
            for r in counted
        )
        ok = ok and hit_ok
        lines.append(
            "- Cache-hit rows: every request a hit, no miss; `no-cache` rows: no hit "
            f"(server counters): {'**PASS**' if hit_ok else '**FAIL**'}."
        )
    else:
        lines.append("- Cache counters: not available (the server has no `/metrics`).")
    lines.append(
        f"- Jobs of kind `{POST_KIND}` in the table: {results.posted_jobs:,}; 201 responses "
        f"counted by the load generator: {results.posted_requests:,} (a request in flight when "
        "a run stops is processed but not counted, so the table may hold up to one per "
        "connection per run more)."
    )
    return lines, ok


def report(plan: Plan, results: Results, server: str, quick: bool) -> tuple[str, bool]:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = " (`--quick` smoke run: short loads, not for comparison)" if quick else ""
    check_lines, ok = checks(results)
    peer, peer_ok = peer_lines(results)
    lines = [
        "### HTTP API: one `jobkeeper serve` process under load (`benchmarks/bench_http.py`)",
        "",
        f"Run: {when}{mode}.",
        "",
        "**Machine**",
        "",
        *(f"- {line}" for line in machine_lines(results, server)),
        "",
        "**Method**",
        "",
        *method_lines(plan, results),
        "",
        f"| Request | Connections | Requests | req/s | p50 {MS} | p90 {MS} | p99 {MS} | max {MS} "
        "| Server CPU µs/req | Server CPU (cores) | Cache hits / misses | Errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        *(_row(r) for r in results.rows),
        "",
        "**Against the bare peer** (ABAB rounds, same run)",
        "",
        *peer,
        "",
        *check_lines,
    ]
    return "\n".join(lines) + "\n", ok and peer_ok


def figure(results: Results) -> Path:
    """The ABAB rounds as ``docs/img/bench-http.png``: the median req/s of the cached read, the
    bare peer and the 304, with the target (``PEER_TARGET`` of the peer's) as a line."""
    medians = {
        name: _median([r[column].run.rps for r in results.rounds])
        for name, column in (("cached GET (200)", 0), ("bare Starlette peer", 1), ("304", 2))
    }
    connections = results.rounds[0][0].connections
    return bars(
        "http",
        f"GET /jobs/{{id}}, {connections} connections, median of {len(results.rounds)} ABAB rounds",
        medians,
        ylabel="requests/s",
        target=(f"target: {PEER_TARGET}x the peer", PEER_TARGET * medians["bare Starlette peer"]),
    )


# --- entry point ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = arguments(__doc__, "short loads: a ~30 s smoke run")
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk, this file's asyncio one, or wrk when installed (default)",
    )
    parser.add_argument(
        "--role", choices=("main", "loadgen", "bare"), default="main", help=argparse.SUPPRESS
    )
    parser.add_argument("--loadgen-args", help=argparse.SUPPRESS)
    parser.add_argument("--bare-args", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "loadgen":
        return loadgen_main(args.loadgen_args)
    if args.role == "bare":
        return bare_main(args.bare_args)
    generator = args.loadgen
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "python"
    elif generator == "wrk" and shutil.which("wrk") is None:
        sys.stderr.write("wrk is not installed (apt-get install wrk), or use --loadgen python\n")
        return 2
    plan = QUICK if args.quick else FULL
    with postgres_server() as server:
        results = asyncio.run(run(server.url, plan, generator))
    section, ok = report(plan, results, server.description, args.quick)
    publish("bench_http", section, write=args.write)
    if args.write and results.rounds:
        sys.stderr.write(f"drew {figure(results)}\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
