"""Session workers as Ray actors: ``live serve --cluster ADDRESS|auto``.

Each worker of the pool (``live.serve.workers``) is then an async Ray actor
hosting the same ``WorkerHost`` a worker process runs, placed by Ray anywhere
in the cluster with the resources it declares; the control server talks to
it through actor calls instead of a socket, and learns of its death from
``RayActorError``. The browser's peer connection ends at the actor, so its
node must be reachable from the browser (host ICE candidates, no TURN).

With the sam2 engine, SAM 2 itself runs as a Ray Serve deployment
(live.serve.sam2_serve), deployed when the server joins the cluster and
deleted when it leaves: the actors keep only the selfie model and send their
frames there.

Ray is optional (``pip install 'live[cluster]'``); nothing imports it unless
``--cluster`` is given.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from live.config import LOOPBACK_HOSTS, Settings, SettingsError
from live.serve.workers import WorkerBase, WorkerError, unwrap

if TYPE_CHECKING:
    from live.serve.sam2_serve import Deployed

#: The cluster's CPUs a session worker reserves (its decode, pipeline and encode;
#: no GPU: SAM 2 runs on the deployment's replicas).
ACTOR_CPUS = 1.0
EVENTS_TIMEOUT_S = 1.0

_on_leave: list[Callable[[], None]] = []  # what joining the cluster started, undone at shutdown
_sam2_cpus = 0.0  # the CPUs our SAM 2 replicas reserve: not for session workers


class SessionWorkerActor:
    """The Ray actor: a ``WorkerHost`` on the actor's own event loop."""

    def __init__(self, sam2: "Deployed | None" = None, threads: int | None = None) -> None:
        from live.serve.worker_main import WorkerHost

        if sam2 is not None:  # its sam2 engines run on the deployment
            from live.serve.sam2_serve import use_deployment

            use_deployment(sam2)
        self.host = WorkerHost(threads)

    async def handle(self, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        return await self.host.handle(op, fields)

    async def next_events(self, timeout: float) -> list[dict[str, Any]]:
        return await self.host.next_events(timeout)

    async def shutdown(self) -> None:
        await self.host.shutdown()

    def pid(self) -> int:
        return os.getpid()


class RayWorker(WorkerBase):
    """The control server's side of one actor; the same surface as ``ProcessWorker``."""

    def __init__(self, name: str, actor: Any):
        super().__init__(name)
        self.actor = actor
        self.pid: int | None = None
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.pid = await self.actor.pid.remote()
        self.alive = True
        self.name = f"{self.name} (ray actor, pid {self.pid})"
        self._poller = asyncio.create_task(self._poll(), name=f"poll {self.name}")

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        from ray.exceptions import RayActorError

        if not self.alive:
            raise WorkerError(f"worker {self.name} is not running")
        try:
            reply = await self.actor.handle.remote(op, fields)
        except RayActorError as exc:
            self.died()
            raise WorkerError(f"worker {self.name} ended: {exc}") from None
        return unwrap(reply)

    async def _poll(self) -> None:
        """Session ends and stats, by long polling (an actor cannot call the server)."""
        from ray.exceptions import RayActorError

        try:
            while True:
                for event in await self.actor.next_events.remote(EVENTS_TIMEOUT_S):
                    self.event(event)
        except RayActorError:
            pass
        finally:
            self.died()

    async def stop(self) -> None:
        import ray

        self._stopping = True
        try:
            await asyncio.wait_for(self.actor.shutdown.remote(), 10)
        except Exception:  # already dead, or stuck: killed below either way
            pass
        ray.kill(self.actor)
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)


def ray_worker_starter(settings: Settings) -> Callable[[str], Awaitable[RayWorker]]:
    """Connect to the cluster now (a wrong address fails at start, not at the first
    peer) and return how the pool starts one actor."""
    address = settings.server.cluster
    if address == "local" or address.partition(":")[0] in LOOPBACK_HOSTS:
        # Ray swaps a loopback head address for this machine's interface address
        # (which a loopback-only head does not listen on) unless told, before import
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise SettingsError("--cluster needs Ray: pip install 'live[cluster]' (or "
                            "'ray[serve]==2.60.*')") from None
    if not ray.is_initialized():
        try:
            join(address)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SettingsError(f"cannot join the Ray cluster at {settings.server.cluster!r}: "
                                f"{exc}") from None
    sam2 = _deploy_sam2(settings)
    actor_class = ray.remote(num_cpus=ACTOR_CPUS, max_restarts=0)(SessionWorkerActor)

    async def start(name: str) -> RayWorker:
        worker = RayWorker(name, actor_class.remote(sam2, settings.server.worker_threads))
        await worker.start()
        return worker

    return start


def join(address: str) -> None:
    """Connect this process to the Ray cluster at ``address`` as a driver: our code
    travels with it (``_runtime_env``), no dashboard, Ray's logs kept off ours."""
    import ray

    ray.init(address=address, runtime_env=_runtime_env(), include_dashboard=False,
             logging_level="WARNING", log_to_driver=False)


def _deploy_sam2(settings: Settings) -> "Deployed | None":
    """The SAM 2 deployment, when the server runs the sam2 engine (else None)."""
    from live.segment import resolve_engine_name

    if resolve_engine_name(settings.engine) != "sam2":
        return None
    from live.serve import sam2_serve

    global _sam2_cpus
    deployed = sam2_serve.deploy(settings)
    _sam2_cpus = deployed.cpus
    _on_leave.append(lambda: sam2_serve.undeploy(deployed))
    return deployed


def cpus() -> int:
    """How many session workers the cluster holds: its CPUs (less our SAM 2 replicas')
    over what each reserves."""
    import ray

    return max(1, int((ray.cluster_resources().get("CPU", 1) - _sam2_cpus) // ACTOR_CPUS))


def _runtime_env() -> dict[str, Any]:
    """Actors import this very ``live`` (a checkout, not only an installed copy) and
    see the operator's LIVE_* settings (model and data folders)."""
    root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if k.startswith("LIVE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {"env_vars": env}


def shutdown() -> None:
    """Leave the cluster (the head and its nodes keep running: they are not ours)."""
    import ray

    global _sam2_cpus
    while _on_leave:
        _on_leave.pop()()
    _sam2_cpus = 0.0
    if ray.is_initialized():
        ray.shutdown()
