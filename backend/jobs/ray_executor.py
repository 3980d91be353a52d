"""Where a job's parts run: in the job's own process (the default), or on a Ray cluster.

A job that can be split hands :func:`run_shards` a :class:`ShardSpec` (how to build a worker, once per
process or Ray actor) and its work as shards, each a list of *pieces* (lists of item indices). A worker
turns a piece into results, yielding them part by part; ``on_result`` receives each part in the job's
process, where the job writes it through its usual services (the job row and the database stay the only
record of what is done, so a resumed job re-runs only what is missing).

- Without Ray (``REBALANCE_RAY_ADDRESS`` unset) the shards run one after another in this process, with
  the job's own hooks: exactly the serial loop the job always had.
- With Ray, each shard runs on an actor (one GPU per actor when the cluster has GPUs): the actor builds
  its worker once and reuses it for every piece of every shard it is given; a piece's results come back
  through the object store. An actor whose process dies is restarted by Ray and its unfinished pieces are
  retried (pieces are pure functions of their indices, and the job writes each index once). A stop kills
  the actors at once; after a finished job they stay idle for ``IDLE_RELEASE_S``, so the next job of the
  same kind from this worker finds its model loaded.

:func:`run_units` runs independent units (a benchmark's (variant, seed) runs) as Ray tasks with a GPU
fraction each (without Ray, the job keeps its own serial loop).

Ray is imported lazily, only on the Ray path: a deployment without it never loads it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.core.allocator import keep_freed_memory
from backend.core.hooks import NO_HOOKS, Hooks, Stopped

log = logging.getLogger("rebalance.ray")

LOCAL = "local"  # REBALANCE_RAY_ADDRESS=local: start a Ray instance inside this process
IN_FLIGHT_PER_ACTOR = 2  # a second piece queued on each actor, so it never waits for the job's process
ACTOR_RESTARTS = 3  # a shard actor whose process dies is restarted this often before the job fails
POLL_S = 0.2  # how often the job's process looks at its stop flag while parts are in flight
IDLE_RELEASE_S = 60.0  # an idle shard actor (and the device and model it holds) is released after this

# The `shards` param of every shardable job kind (one definition, so forms and docs agree).
SHARDS_DEFAULT = None
SHARDS_HELP = (
    "parts run in parallel on the Ray cluster (--ray); default: one per free GPU of the cluster, "
    "1 without Ray. Image i is the same whatever the sharding"
)

# A worker turns one piece (item indices) into results, one yielded list per part.
Worker = Callable[[list[int]], Iterator[list[Any]]]
# factory(config, hooks, device) -> Worker: called once per process (local) or per actor (Ray).
Factory = Callable[[Any, Hooks, str], Worker]


@dataclass(frozen=True)
class ShardSpec:
    """How to build a shard worker. ``factory`` and ``encode`` must be module-level functions (or
    ``functools.partial`` of them): Ray pickles them by reference into its actors."""

    factory: Factory
    config: Any  # picklable: everything a worker needs (params, vocabulary, small arrays)
    encode: Callable[[list[Any]], list[Any]] | None = None  # applied on the actor (e.g. arrays -> PNG bytes)
    gpu: bool = True  # one GPU per actor when the cluster has GPUs (else a CPU each)


# ------------------------------------------------------------------------------------------- connecting

_lock = threading.Lock()


def _ray() -> Any:
    import ray

    return ray


CONNECT_TIMEOUT_S = 30.0  # joining a cluster that does not answer gives up after this (Ray itself retries for minutes)
_PROBE_TIMEOUT_S = 5.0


def _probe(address: str) -> None:
    """Fail fast, naming the reason, when ``host:port`` cannot be a Ray cluster: a host that does not resolve
    or a port where nothing listens. ``auto``, ``local`` and ``ray://`` addresses are Ray's to check."""
    if address in ("auto", LOCAL) or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConnectionError(f"{address!r} is not host:port (or auto, local, ray://host:port)")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConnectionError(f"cannot resolve host {host!r} ({exc})") from None
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.settimeout(_PROBE_TIMEOUT_S)
        try:
            sock.connect(sockaddr)
        except OSError as exc:
            raise ConnectionError(f"nothing answers at {address} ({exc.strerror or exc})") from None


def _init_within(ray: Any, timeout_s: float, **kwargs: Any) -> None:
    """``ray.init`` that gives up after ``timeout_s``: on an address that accepts TCP but is no Ray GCS (a
    Redis or database port) Ray retries for many minutes. The attempt runs in a daemon thread; on timeout
    the caller gets a ``TimeoutError`` (the server then exits, taking the stuck thread with it)."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            ray.init(**kwargs)
            outcome.append(None)
        except BaseException as exc:  # handed to the caller below
            outcome.append(exc)

    thread = threading.Thread(target=attempt, name="ray-connect", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        raise TimeoutError(
            f"no Ray cluster answered at {kwargs.get('address')} within {timeout_s:.0f} s; check the address "
            "(`ray status --address HOST:PORT` on that machine prints the one to use)"
        )
    if outcome[0] is not None:
        raise outcome[0]


def connect(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> Any:
    """Join the Ray cluster at ``address`` (``auto``, ``host:port``, ``ray://host:port``) or start one in
    this process (``local``); a no-op when this process already joined one. Returns the ``ray`` module.
    Gives up within ``timeout_s`` (``ConnectionError`` or ``TimeoutError`` naming the address and why)."""
    ray = _ray()
    with _lock:
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
            if address == LOCAL:
                ray.init(**kwargs)
            else:
                _probe(address)
                # Workers on other hosts get our code from the driver, so they need no shared checkout.
                package = str(Path(__file__).resolve().parents[1])
                _init_within(ray, timeout_s, address=address, runtime_env={"py_modules": [package]}, **kwargs)
            log.info("joined Ray at %s: %s", address, ray.cluster_resources())
    return ray


def own_address() -> str | None:
    """The address of the Ray instance this process joined (what processes it spawns should join)."""
    ray = _ray()
    if not ray.is_initialized():
        return None
    return ray.get_runtime_context().gcs_address


def describe(address: str | None) -> dict[str, Any]:
    """For GET /api/health: the executor and, with Ray, the cluster's CPUs, GPUs and nodes."""
    if not address:
        return {"executor": "local"}
    info: dict[str, Any] = {"executor": "ray", "address": address}
    try:
        ray = connect(address)
        total, free = ray.cluster_resources(), ray.available_resources()
        info |= {
            "ok": True,
            "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
            "cpus": total.get("CPU", 0.0),
            "gpus": total.get("GPU", 0.0),
            "free_cpus": free.get("CPU", 0.0),
            "free_gpus": free.get("GPU", 0.0),
        }
    except Exception as exc:  # health must answer even when the cluster does not
        info |= {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return info


# ---------------------------------------------------------------------------------------------- sharding


def split(pieces: list[list[int]], n: int) -> list[list[list[int]]]:
    """``pieces`` in ``n`` contiguous shards of nearly equal length (no empty shard)."""
    n = max(1, min(n, len(pieces)))
    size, extra = divmod(len(pieces), n)
    shards, start = [], 0
    for k in range(n):
        end = start + size + (1 if k < extra else 0)
        shards.append(pieces[start:end])
        start = end
    return [s for s in shards if s]


def default_shards(address: str | None) -> int:
    """One shard per free GPU of the cluster (at least 1); 1 without Ray."""
    if not address:
        return 1
    free = connect(address).available_resources()
    return max(1, int(free.get("GPU", 0.0)))


def run_shards(
    spec: ShardSpec,
    shards: list[list[list[int]]],
    *,
    on_result: Callable[[list[Any]], None],
    should_stop: Callable[[], bool],
    on_piece: Callable[[list[int]], None] | None = None,
    address: str | None = None,
    hooks: Hooks = NO_HOOKS,
    device: str = "cpu",
) -> None:
    """Run every piece of every shard; ``on_result(part)`` for each part as it arrives and
    ``on_piece(piece)`` when a piece is complete, both in this thread. Raises ``Stopped`` when
    ``should_stop()`` (the Ray work is killed first). Without ``address`` the shards run here, in order,
    with ``hooks`` and ``device``."""
    if not address:
        _run_here(spec, shards, on_result, on_piece, hooks, device)
    else:
        _run_on_ray(connect(address), spec, shards, on_result, on_piece, should_stop)


def _run_here(spec, shards, on_result, on_piece, hooks: Hooks, device: str) -> None:
    worker = spec.factory(spec.config, hooks, device)
    for shard in shards:
        for piece in shard:
            for part in worker(piece):
                on_result(part)
            if on_piece is not None:
                on_piece(piece)


def _print_log(message: str, level: str = "info") -> None:
    print(f"[{level}] {message}", flush=True)  # Ray forwards an actor's stdout to the job's log output


class ShardActor:
    """A Ray actor (wrapped by ``ray.remote`` at run time) that runs pieces of any job of one kind.

    Each call names its job's spec by reference; the actor builds a worker when the spec changes (a new
    job, or after Ray restarted the actor) and reuses it for every piece of that job. Factories cache what
    they load per process (the SD pipeline), so an actor kept between jobs keeps its model loaded.
    """

    def __init__(self) -> None:
        keep_freed_memory()  # an actor is a process of its own: the malloc settings every worker runs with
        self.spec_ref: Any = None
        self.spec: ShardSpec | None = None
        self.worker: Worker | None = None

    def run(self, spec_box: list[Any], piece: list[int]) -> list[Any]:
        import ray

        # The ref comes boxed so Ray does not fetch the spec for every piece, only on a change.
        if self.worker is None or spec_box[0] != self.spec_ref:
            self.spec_ref, self.worker = None, None
            self.spec = ray.get(spec_box[0])
            device = "cuda" if ray.get_gpu_ids() else "cpu"  # Ray set CUDA_VISIBLE_DEVICES to this actor's GPU
            self.worker = self.spec.factory(self.spec.config, Hooks(log=_print_log), device)
            self.spec_ref = spec_box[0]
        items = [item for part in self.worker(piece) for item in part]
        return self.spec.encode(items) if self.spec.encode is not None else items


def _capacity(ray: Any, resource: str, freed: int, wait_s: float = 5.0) -> int:
    """How many more one-``resource`` actors the cluster holds now, once the ``freed`` ones we just killed
    gave theirs back (a kill is asynchronous; counting them before it lands would start an actor that
    waits forever for a device our own job holds)."""
    expected = ray.available_resources().get(resource, 0.0) + freed
    deadline = time.monotonic() + wait_s
    while freed and ray.available_resources().get(resource, 0.0) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(ray.available_resources().get(resource, 0.0))


def _unwrap(ray: Any, exc: Exception) -> Exception:
    """A task's own exception (a JobError, a ValueError naming a field), not Ray's wrapper of it."""
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, Exception):
        return exc.cause
    return exc


# Actors of finished jobs, kept a while so the next job of the same kind finds its model loaded:
# {(factory, resources): [(actor, idle since)]}. One kind at a time holds devices: a job of another
# kind releases them first.
_idle: dict[tuple, list[tuple[Any, float]]] = {}
_reaper: threading.Thread | None = None


def release_actors(older_than_s: float = 0.0, keep: tuple | None = None) -> list[tuple]:
    """Kill the idle actors of every kind but ``keep`` idle for at least ``older_than_s`` seconds; returns
    the keys of the actors killed, one per actor."""
    now = time.monotonic()
    with _lock:
        doomed = []
        for key in list(_idle):
            if key == keep:
                continue
            stay = [(a, t) for a, t in _idle[key] if now - t < older_than_s]
            doomed += [(key, a) for a, t in _idle[key] if now - t >= older_than_s]
            if stay:
                _idle[key] = stay
            else:
                del _idle[key]
    if doomed:
        ray = _ray()
        for _, actor in doomed:
            ray.kill(actor, no_restart=True)
    return [key for key, _ in doomed]


def _reap_forever() -> None:
    while True:
        time.sleep(IDLE_RELEASE_S / 4)
        try:
            release_actors(IDLE_RELEASE_S)
        except Exception:  # the cluster went away: its actors went with it
            log.exception("releasing idle shard actors failed")


def _actors(ray: Any, key: tuple, resources: dict[str, float], n: int) -> list[Any]:
    """``n`` actors for a job (fewer when the cluster is full, never none): idle ones first."""
    global _reaper
    resource = "GPU" if resources["num_gpus"] else "CPU"
    freed = release_actors(keep=key)  # other kinds' idle actors give their devices to this job
    capacity = _capacity(ray, resource, sum(1 for k in freed if resource == "CPU" or dict(k[2])["num_gpus"]))
    with _lock:
        idle = [a for a, _ in _idle.pop(key, [])]
        if _reaper is None:
            _reaper = threading.Thread(target=_reap_forever, name="ray-actor-reaper", daemon=True)
            _reaper.start()
    take, rest = idle[:n], idle[n:]
    if rest:
        _park(key, rest)
    actor_class = ray.remote(max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS, **resources)(ShardActor)
    more = max(0, min(n - len(take), capacity)) if take else max(1, min(n, capacity))
    return take + [actor_class.remote() for _ in range(more)]


def _park(key: tuple, actors: list[Any]) -> None:
    with _lock:
        _idle.setdefault(key, []).extend((a, time.monotonic()) for a in actors)


def _run_on_ray(ray, spec, shards, on_result, on_piece, should_stop) -> None:
    gpu = spec.gpu and ray.cluster_resources().get("GPU", 0.0) > 0
    resources = {"num_gpus": 1 if gpu else 0, "num_cpus": 1}
    key = (spec.factory.__module__, spec.factory.__qualname__, tuple(sorted(resources.items())))
    actors = _actors(ray, key, resources, len(shards))
    spec_box = [ray.put(spec)]  # shipped to each actor once, not with every piece
    waiting = deque(shards)
    queues: list[deque[list[int]]] = [deque() for _ in actors]
    inflight: dict[Any, tuple[int, list[int]]] = {}

    def feed(a: int) -> None:
        """Keep actor ``a`` busy: its shard's next pieces, then the next shard nobody took."""
        while sum(1 for b, _ in inflight.values() if b == a) < IN_FLIGHT_PER_ACTOR:
            if not queues[a] and waiting:
                queues[a].extend(waiting.popleft())
            if not queues[a]:
                return
            piece = queues[a].popleft()
            inflight[actors[a].run.remote(spec_box, piece)] = (a, piece)

    finished = False
    try:
        # Every actor gets its own shard before any takes a second one: feeding actor 0 first would let
        # it queue the next shard's piece (IN_FLIGHT_PER_ACTOR) and leave the last actors idle -- and
        # cold for the next job -- whenever shards have one piece each.
        for a in range(len(actors)):
            if waiting:
                queues[a].extend(waiting.popleft())
        for a in range(len(actors)):
            feed(a)
        while inflight:
            if should_stop():
                raise Stopped("stopped while shards were running")
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=POLL_S)
            for ref in ready:
                a, piece = inflight.pop(ref)
                try:
                    part = ray.get(ref)
                except Exception as exc:
                    raise _unwrap(ray, exc) from None
                on_result(part)
                if on_piece is not None:
                    on_piece(piece)
                feed(a)
        finished = True
    finally:
        if finished:
            _park(key, actors)  # the next job of this kind reuses them (and their loaded model)
        else:  # a stop or an error: kill now, so no piece of this job runs on (and the devices are free)
            for actor in actors:
                ray.kill(actor, no_restart=True)


# ------------------------------------------------------------------------------------------------- units


def _with_device(fn: Callable[..., Any], *args: Any) -> Any:
    """A unit as a Ray task: ``fn(*args, device=...)`` on the GPU Ray gave the task, else the CPU."""
    import ray

    keep_freed_memory()  # once per task worker process (later calls return at once)
    return fn(*args, device="cuda" if ray.get_gpu_ids() else "cpu")


def run_units(
    fn: Callable[..., Any],
    units: Iterable[tuple[Any, tuple[Any, ...]]],
    *,
    on_result: Callable[[Any, Any], None],
    should_stop: Callable[[], bool],
    address: str,
    gpu_fraction: float = 1.0,
) -> None:
    """Run ``fn(*args, device=...)`` for every ``(key, args)`` of ``units`` as a Ray task, with
    ``gpu_fraction`` of a GPU when the cluster has GPUs (one CPU otherwise). ``units`` is consumed lazily:
    only as many units as the cluster can run at once (plus one) are built and in flight, so a long list
    of large units never sits in memory. ``on_result(key, value)`` runs in this thread as each finishes;
    Ray retries a unit whose worker died; a stop cancels the tasks and raises ``Stopped``."""
    ray = connect(address)
    release_actors()  # this process's idle shard actors would hold the devices the units need
    total = ray.cluster_resources()
    gpus = total.get("GPU", 0.0) > 0
    slots = int(total["GPU"] / gpu_fraction) if gpus else int(total.get("CPU", 1.0))
    remote = ray.remote(num_gpus=gpu_fraction if gpus else 0, num_cpus=1, max_retries=ACTOR_RESTARTS)(_with_device)
    fn_ref = ray.put(fn)
    pending = iter(units)
    inflight: dict[Any, Any] = {}

    def submit() -> None:
        while len(inflight) < max(1, slots) + 1:
            unit = next(pending, None)
            if unit is None:
                return
            key, args = unit
            inflight[remote.remote(fn_ref, *args)] = key  # top-level: Ray resolves refs among them

    try:
        submit()
        while inflight:
            if should_stop():
                raise Stopped("stopped while units were running")
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=POLL_S)
            for ref in ready:
                key = inflight.pop(ref)
                try:
                    value = ray.get(ref)
                except Exception as exc:
                    raise _unwrap(ray, exc) from None
                on_result(key, value)
            submit()
    finally:
        for ref in inflight:  # force: a training loop has no stop point Ray could reach
            ray.cancel(ref, force=True)
