"""Ray runner: one actor per GPU (or per node, or per N CPUs) holding a loaded pipeline.

Units are handed out grouped by model and size (dispenser.py), so pipelines and compiled graphs are reused and
each model is loaded by few actors; two units per actor are in flight so none idles between images. An actor that
dies (its process killed, its node lost) is restarted by Ray, on another node if its own is gone, and the
units it held are run again (max_restarts, max_task_retries); a unit that kills its worker every time is
recorded as failed.
"""

from __future__ import annotations

import threading
from typing import Callable

from .dispenser import Dispenser
from .rows import Unit
from .worker import Worker

IN_FLIGHT = 2  # units queued per actor
RETRIES = 3  # runs of a unit on restarted actors before it counts as failed


def import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("--ray needs Ray: pip install 'sdkit-diffusion[ray]'") from None
    return ray


def run(units: list[Unit], out: str, on_result: Callable[[Unit, dict], None], stop: threading.Event, *,
        address: str = "auto", backend: str = "auto", dtype: str | None = None,
        cpus_per_worker: int | None = None) -> None:
    """address: "auto" (the cluster this machine belongs to, else a new local one) or HOST:PORT. A Ray
    session already open in this process is used as it is. When `stop` is set, the actors are killed (the
    units they were making are not recorded, so a rerun makes them)."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        _connect(ray, address)
    actors = []
    try:
        actors = _actors(ray, out, backend, dtype, cpus_per_worker)
        _schedule(ray, actors, Dispenser(units, len(actors)), on_result, stop)
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()


def _connect(ray, address: str) -> None:
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address != "auto":
        ray.init(address=address, **kwargs)
        return
    try:
        ray.init(address="auto", **kwargs)
    except ConnectionError:  # no cluster here: a local one for this batch
        ray.init(**kwargs)


def _actors(ray, out: str, backend: str, dtype: str | None, cpus_per_worker: int | None) -> list:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor = ray.remote(Worker)
    restarts = dict(max_restarts=-1, max_task_retries=RETRIES)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:  # Ray gives each actor its GPU as CUDA_VISIBLE_DEVICES, so the default device is it
        return [actor.options(num_gpus=1, num_cpus=1, **restarts).remote(out, backend, None, dtype)
                for _ in range(gpus)]
    actors = []
    for node in ray.nodes():
        cpus = int(node["Resources"].get("CPU", 0)) if node["Alive"] else 0
        per = cpus_per_worker or cpus  # without it, one worker using all the node's cores
        # soft: when the node is lost, the restarted actor may go elsewhere
        place = NodeAffinitySchedulingStrategy(node["NodeID"], soft=True)
        for _ in range(cpus // per if per else 0):
            options = dict(num_cpus=per, scheduling_strategy=place, **restarts)
            # device None: the CPU here (Ray hides the GPUs from actors that did not ask for one), Metal on Apple
            # silicon nodes with MLX (Ray does not count Apple GPUs)
            actors.append(actor.options(**options).remote(out, backend, None, dtype))
    if not actors:
        raise ValueError(f"the Ray cluster has no node with {cpus_per_worker or 1} free CPUs for a worker")
    return actors


def _schedule(ray, actors: list, todo: Dispenser, on_result, stop: threading.Event) -> None:
    from ray.exceptions import RayActorError

    flying: dict = {}  # ObjectRef -> (actor index, unit)

    def submit(i: int) -> None:
        unit = todo.next(i)
        if unit is not None:
            flying[actors[i].run.remote(unit)] = (i, unit)

    for _ in range(IN_FLIGHT):
        for i in range(len(actors)):
            submit(i)
    while flying and not stop.is_set():
        ready, _ = ray.wait(list(flying), num_returns=1, timeout=0.2)
        if not ready:
            continue
        i, unit = flying.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except RayActorError as e:  # the unit's worker died on every retry, or cannot start
            why = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            result = {"error": f"its worker died making it ({RETRIES + 1} tries): {why}"}
        on_result(unit, result)
        submit(i)
