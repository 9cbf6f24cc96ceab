"""`ringback serve --workers N`: N worker processes behind one HTTP address.

Each worker is a whole `ringback serve` on 127.0.0.1 (its own event loop, peers, UDP ports
and engines) whose session ids start with its prefix `w<index>.`. This front process only
routes HTTP:

- a new call (`POST /offer` without `resume`, `POST /whip`) goes to the least-loaded worker
  (calls in progress from its /healthz, plus offers still on their way to it);
- a session's resources (`/session/{id}`, `/whip/{id}…`, `/sessions/{id}`, and an offer whose
  body says `"resume": {"session_id": …}`) go to the worker named by the id's prefix;
- `/healthz`, `/metrics` and `/sessions` combine every worker's (metrics get a `worker` label,
  so `sum without (worker)` adds them up);
- anything else (the page, static files) goes to any live worker.

Media never passes through here: the answer's ICE candidates are the worker's own. A worker
that exits is started again under the same prefix; only its calls end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from signaling.agent_check import serve_agent_check
from signaling.config import ServerConfig
from signaling.guard import BODY_TIMEOUT_S, json_error, mask_secrets

log = logging.getLogger(__name__)

WORKER_RE = re.compile(r"^w(\d+)\.")
OWNED_PATH_RE = re.compile(r"^/(?:session|sessions|whip)/([^/]+)")
HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
     "host", "upgrade", "te", "trailer", "proxy-authorization", "proxy-connection")
)  # fmt: skip
START_TIMEOUT_S = 180.0
POLL_S = 0.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prefix(index: int, base: str = "") -> str:
    """Worker `index`'s session id prefix, after the server's own (`--session-id-prefix`)."""
    return f"{base}w{index}."


def owner_of(session_id: str, base: str = "") -> int | None:
    """The index of the worker whose prefix `session_id` carries."""
    if not session_id.startswith(base):
        return None
    match = WORKER_RE.match(session_id[len(base) :])
    return int(match.group(1)) if match else None


@dataclass(eq=False)
class Worker:
    index: int
    port: int = 0
    proc: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    sessions: int = 0
    max_sessions: int = 1
    calls_started: int = 0
    inflight: int = 0  # offers sent to it and not answered yet
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def load(self) -> float:
        return (self.sessions + self.inflight) / max(1, self.max_sessions)


class Supervisor:
    """Starts, watches and restarts the workers; routes requests to them."""

    def __init__(
        self,
        serve_argv: Sequence[str],
        count: int,
        trust_forwarded: bool,
        stop_s: float,
        base_prefix: str = "",
        asr_processes: int = 1,
    ) -> None:
        self.serve_argv = list(serve_argv)
        self.asr_processes = asr_processes  # each worker's pocketsphinx processes
        self.base_prefix = base_prefix
        self.workers = [Worker(i) for i in range(count)]
        self.trust_forwarded = trust_forwarded
        self.stop_s = stop_s
        self.http: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._keep_running(w), name=f"worker-{w.index}") for w in self.workers
        ]
        self._tasks.append(loop.create_task(self._poll(), name="worker-poll"))
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                ready = asyncio.gather(*(w.ready.wait() for w in self.workers))
                # A worker that cannot start (a bad flag, a broken install) fails the server.
                waiters: list[asyncio.Future[Any]] = [ready]
                waiters += [t for t in self._tasks if t.get_name().startswith("worker-")]
                done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if ready not in done:
                    ready.cancel()
                    await asyncio.gather(ready, return_exceptions=True)
                    raise RuntimeError("a worker exited before it was ready (see its log above)")
        except BaseException:
            await self.stop()
            raise
        log.info("%d workers ready", len(self.workers))

    async def stop(self) -> None:
        self._stopping = True
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                w.proc.terminate()  # each worker drains its own calls (graceful shutdown)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.stop_s):
                await asyncio.gather(
                    *(w.proc.wait() for w in self.workers if w.proc is not None),
                    return_exceptions=True,
                )
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                w.proc.kill()
                await w.proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.http is not None:
            await self.http.close()

    async def _keep_running(self, w: Worker) -> None:
        """Run worker `w`; start it again whenever it exits (until the server stops). Returns
        if it exits before it was ever ready: start() then fails."""
        ever_ready = False
        while not self._stopping:
            w.port = free_port()
            w.ready.clear()
            w.sessions = w.inflight = 0
            # Later flags win: the worker listens on loopback only, behind this process.
            argv = [*self.serve_argv, "--workers", "1", "--host", "127.0.0.1",
                    "--port", str(w.port), "--session-id-prefix",
                    prefix(w.index, self.base_prefix), "--agent-check-port", "0",
                    "--trust-forwarded",
                    "--asr-workers", str(self.asr_processes)]  # fmt: skip
            w.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "signaling", "serve", *argv
            )
            log.info("worker %d: pid %d on port %d", w.index, w.proc.pid, w.port)
            waiting = asyncio.get_running_loop().create_task(self._wait_ready(w))
            code = await w.proc.wait()
            ever_ready = ever_ready or w.ready.is_set()
            w.ready.clear()
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
            if self._stopping or not ever_ready:
                return
            w.restarts += 1
            log.warning("worker %d (pid %d) exited with %s: starting it again",
                        w.index, w.proc.pid, code)  # fmt: skip
            await asyncio.sleep(0.5)

    async def _wait_ready(self, w: Worker) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                if await self._health(w):
                    w.ready.set()
                    return
            await asyncio.sleep(0.2)

    async def _health(self, w: Worker) -> bool:
        assert self.http is not None
        async with self.http.get(w.url + "/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r:
            if r.status != 200:
                return False
            data = await r.json()
        w.sessions = int(data.get("sessions", 0))
        w.max_sessions = int(data.get("max_sessions", 1))
        w.calls_started = int(data.get("calls_started", 0))
        return True

    async def _poll(self) -> None:
        while True:
            for w in self.workers:
                if w.ready.is_set():
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                        await self._health(w)
            await asyncio.sleep(POLL_S)

    # --- routing ----------------------------------------------------------------------------

    def load(self) -> float:
        """Calls in progress over the capacity of the live workers (1.0 when none is live)."""
        live = self.live()
        capacity = sum(w.max_sessions for w in live)
        return sum(w.sessions for w in live) / capacity if capacity else 1.0

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.ready.is_set()]

    def least_loaded(self) -> Worker | None:
        live = self.live()
        return min(live, key=lambda w: (w.load, w.index)) if live else None

    def owner(self, session_id: str) -> Worker | None:
        index = owner_of(session_id, self.base_prefix)
        if index is None or index >= len(self.workers):
            return None
        w = self.workers[index]
        return w if w.ready.is_set() else None

    def route(self, request: web.Request, body: bytes) -> tuple[Worker | None, bool]:
        """(the worker for this request, whether it starts a new call)."""
        owned = OWNED_PATH_RE.match(request.path)
        if owned:
            return self.owner(owned.group(1)), False
        if request.method == "POST" and request.path == "/offer":
            resume = _resume_id(body)
            owner = self.owner(resume) if resume is not None else None
            if owner is not None:
                return owner, False
            # A new call, or a resume whose worker is gone (it then starts a fresh call).
            return self.least_loaded(), True
        if request.method == "POST" and request.path == "/whip":
            return self.least_loaded(), True
        live = self.live()
        return (live[0] if live else None), False

    async def forward(self, request: web.Request) -> web.StreamResponse:
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                body = await request.read()
        except TimeoutError:
            return json_error(408, f"the body did not arrive within {BODY_TIMEOUT_S:.0f} s")
        worker, new_call = self.route(request, body)
        if worker is None:
            return json_error(404 if OWNED_PATH_RE.match(request.path) else 503,
                              "no such session or no worker available",
                              headers={"Retry-After": "2"})  # fmt: skip
        headers = CIMultiDict(
            (k, v)
            for k, v in request.headers.items()
            if k.lower() not in HOP_BY_HOP and k.lower() != "x-forwarded-for"
        )
        # The worker counts offers per client by the last X-Forwarded-For hop: the client as
        # this front saw it, or — behind a trusted proxy — the hop that proxy appended. A
        # client's own X-Forwarded-For (in any spelling) never reaches the worker otherwise.
        chain = ", ".join(request.headers.getall("X-Forwarded-For", []))
        headers["X-Forwarded-For"] = (
            chain if self.trust_forwarded and chain else request.remote or "unknown"
        )
        if new_call:
            worker.inflight += 1
        assert self.http is not None
        try:
            async with self.http.request(
                request.method, worker.url + request.path_qs, data=body, headers=headers,
                allow_redirects=False,
            ) as resp:  # fmt: skip
                payload = await resp.read()
                out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("worker %d did not answer %s %s: %s", worker.index, request.method,
                        mask_secrets(request.path), exc)  # fmt: skip
            return json_error(502, "worker unavailable")
        finally:
            if new_call:
                worker.inflight -= 1
        if new_call and status in (200, 201):
            worker.sessions += 1  # until the next poll says otherwise
        return web.Response(status=status, body=payload, headers=out)

    # --- combined views ---------------------------------------------------------------------

    async def _fetch_all(self, path: str, request: web.Request) -> list[tuple[Worker, bytes]]:
        """GET `path` from every live worker with the caller's credentials; the bodies of those
        that answered 200. A worker refusing the credentials refuses the whole request."""
        assert self.http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}

        async def one(w: Worker) -> tuple[Worker, int, bytes]:
            assert self.http is not None
            try:
                async with self.http.get(w.url + path, headers=headers) as r:
                    return w, r.status, await r.read()
            except (aiohttp.ClientError, TimeoutError):
                return w, 502, b""

        answers = await asyncio.gather(*(one(w) for w in self.live()))
        for _, status, body in answers:
            if status in (401, 403):
                raise Refused(status, body)
        return [(w, body) for w, status, body in answers if status == 200]

    async def healthz(self, request: web.Request) -> web.Response:
        live = self.live()
        sessions = sum(w.sessions for w in live)
        capacity = sum(w.max_sessions for w in live)
        body: dict[str, object] = {
            "status": "ok" if live else "starting",
            "sessions": sessions,
            "max_sessions": capacity,
            "calls_started": sum(w.calls_started for w in live),
            "load": self.load(),
            "workers": [
                {"index": w.index, "pid": w.proc.pid if w.proc else None, "port": w.port,
                 "ready": w.ready.is_set(), "sessions": w.sessions, "restarts": w.restarts}
                for w in self.workers
            ],
        }  # fmt: skip
        return web.json_response(body, status=200 if live else 503)

    async def sessions(self, request: web.Request) -> web.Response:
        try:
            answers = await self._fetch_all("/sessions", request)
        except Refused as exc:
            return exc.response()
        merged: list[object] = []
        for w, body in answers:
            with contextlib.suppress(ValueError):
                data = json.loads(body)
                for s in data.get("sessions", []) if isinstance(data, dict) else []:
                    merged.append({**s, "worker": w.index})
        return web.json_response({"sessions": merged})

    async def metrics(self, request: web.Request) -> web.Response:
        try:
            answers = await self._fetch_all("/metrics", request)
        except Refused as exc:
            return exc.response()
        pages = [(w.index, body.decode()) for w, body in answers]
        registry = CollectorRegistry()
        registry.register(_Combined(pages, self.workers))
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})  # fmt: skip


class Refused(Exception):
    """A worker refused the caller's credentials: its answer is the answer."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body

    def response(self) -> web.Response:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        return web.Response(status=self.status, body=self.body, headers=headers,
                            content_type="application/json")  # fmt: skip


class _Combined(Collector):
    """Every worker's metrics, each sample labelled with its worker, plus the workers' own."""

    def __init__(self, pages: Iterable[tuple[int, str]], workers: Sequence[Worker]) -> None:
        self.pages = list(pages)
        self.workers = workers

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for index, text in self.pages:
            for fam in text_string_to_metric_families(text):
                into = families.setdefault(fam.name, Metric(fam.name, fam.documentation, fam.type))
                for s in fam.samples:
                    into.add_sample(s.name, {**s.labels, "worker": str(index)}, s.value)
        up = Metric("ringback_workers_ready", "Worker processes ready for calls.", "gauge")
        up.add_sample("ringback_workers_ready", {}, sum(w.ready.is_set() for w in self.workers))
        restarts = Metric("ringback_worker_restarts", "Workers started again after exiting.",
                          "counter")  # fmt: skip
        for w in self.workers:
            restarts.add_sample("ringback_worker_restarts_total", {"worker": str(w.index)},
                                w.restarts)  # fmt: skip
        return [*families.values(), up, restarts]


def _resume_id(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    resume = data.get("resume") if isinstance(data, dict) else None
    sid = resume.get("session_id") if isinstance(resume, dict) else None
    return sid if isinstance(sid, str) else None


def create_front_app(serve_argv: Sequence[str], config: ServerConfig) -> web.Application:
    """The front process's app: starts the workers with the app and stops them with it."""
    supervisor = Supervisor(
        serve_argv,
        config.workers,
        config.trust_forwarded,
        config.shutdown_deadline_s - 1.5,
        config.session_id_prefix,
        config.agent.asr_pool.processes,
    )
    app = web.Application(client_max_size=config.max_body_bytes)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await supervisor.start()
        agent = None
        if config.agent_check_port:
            agent = await serve_agent_check(config.host, config.agent_check_port, supervisor.load)
        try:
            yield
        finally:
            if agent is not None:
                agent.close()
            await supervisor.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/healthz", supervisor.healthz)
    app.router.add_get("/metrics", supervisor.metrics)
    app.router.add_get("/sessions", supervisor.sessions)
    app.router.add_route("*", "/{tail:.*}", supervisor.forward)
    return app
