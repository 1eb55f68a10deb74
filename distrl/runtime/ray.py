"""The Ray launcher: every component a Ray actor, placed and restarted by Ray.

`distrl train CONFIG --launcher ray [--address ADDR]` joins a Ray cluster (ADDR,
or RAY_ADDRESS as set by `ray job submit`; without either it starts a Ray
instance on this machine) and creates, in order: K replay shards and the
parameter server (CPU actors, optionally on labelled nodes or nodes with a custom
resource), the learner (`num_gpus = ray.learner_gpus`), N actors (SPREAD over the
nodes) and the evaluator. Ray only places and supervises them: they still talk
gRPC to each other, and the coordinator runs here, in the driver, as under the
local launcher.

Supervision: the launcher pings every component each tick. Ray restarts a dead
component (`ray.max_restarts`) by re-running its constructor (see
`ray_components`): a shard restores its checkpoint, the learner its checkpoint,
and a server comes back on its old port when it lands on the same node. When a
server comes back at a new address (another node, port taken), the components
that talk to it (learner, actors, evaluator) are stopped cleanly and created
again with the new addresses: their constructor arguments are fixed when Ray
creates them, so a fresh actor is the one way a later Ray restart also gets the
new address. A component that Ray gave up on fails the run.

`distrl scale RUN_DIR --actors N` (see `scaling`) adds or removes actors while the
run goes on; nothing else restarts. RUN_DIR/components.json lists where each
component runs (address, node, pid, restarts).

RUN_DIR must be on a filesystem every node sees (NFS, EFS, a ReadWriteMany
volume): checkpoints and replay snapshots are written there by whichever node
runs the learner and shards, and read back by whichever node runs them after a
restart. Components warn when they do not see it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from distrl.config import ExperimentConfig, RayConfig
from distrl.experiment import replay_shard_config
from distrl.runtime import scaling
from distrl.runtime.process import ComponentFailed
from distrl.runtime.ray_components import (
    ActorComponent,
    ComponentAddresses,
    ComponentStatus,
    EvaluatorComponent,
    LearnerComponent,
    ParamServerComponent,
    ReplayShardComponent,
)
from distrl.runtime.ray_plan import PlacementError, plan_placement
from distrl.runtime.run import RunResult, coordinated_run, finished_reason, prepare_run_dir
from distrl.telemetry import Coordinator

log = logging.getLogger(__name__)

COMPONENTS_FILE = "components.json"
TICK_S = 0.5
# How long servers may take to come up (a shard restoring a large checkpoint takes a while).
SERVER_START_TIMEOUT_S = 600.0
SHUTDOWN_TIMEOUT_S = 60.0
# A component that has not answered a ping for this long is reported (not enough resources, a hung node).
SILENT_WARN_S = 60.0

SERVER_KINDS = ("replay", "params")


@dataclass
class RayComponent:
    """One component as the launcher tracks it: its Ray actor and what it last said."""

    name: str
    kind: str  # replay | params | learner | actor | evaluator
    handle: Any
    generation: int = 0
    status: ComponentStatus | None = None
    restarts: int = 0
    ping_ref: Any = None
    last_answer: float = field(default_factory=time.monotonic)
    answered: bool = False  # has this component's process ever answered a ping
    reported_unplaced: bool = False
    reported_silent: bool = False
    reported_unavailable: bool = False
    reported_unshared: bool = False


def _ray_name(name: str, generation: int) -> str:
    return name if generation == 0 else f"{name}@{generation}"


def placement_options(ray_config: RayConfig, kind: str) -> dict[str, Any]:
    """The Ray actor options of one kind of component (replay, params, learner, actor, evaluator)."""
    r = ray_config
    opts: dict[str, Any] = {
        "max_restarts": r.max_restarts,
        # A call cut short by a crash fails at once; the next ping waits for the restarted actor.
        "max_task_retries": 0,
        # Pings are answered while a long stop() (final checkpoint) is in progress.
        "max_concurrency": 4,
    }
    if kind in SERVER_KINDS:
        opts["num_cpus"] = r.replay_cpus if kind == "replay" else r.params_cpus
        if r.replay_resources:
            opts["resources"] = dict(r.replay_resources)
        if r.replay_labels:
            opts["label_selector"] = dict(r.replay_labels)
    elif kind == "learner":
        opts["num_cpus"] = r.learner_cpus
        opts["num_gpus"] = r.learner_gpus
    elif kind == "actor":
        opts["num_cpus"] = r.actor_cpus
        opts["scheduling_strategy"] = r.actor_strategy
    elif kind == "evaluator":
        opts["num_cpus"] = r.evaluator_cpus
    else:
        raise ValueError(f"unknown component kind {kind!r}")
    return opts


def _free_resources(wait_s: float = 10.0) -> dict[str, float]:
    """The cluster's free resources; a Ray instance just started may take a moment to list its CPUs."""
    deadline = time.monotonic() + wait_s
    while True:
        free = ray.available_resources()
        if free.get("CPU") or time.monotonic() > deadline:
            return free
        time.sleep(0.2)


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast on a HOST:PORT nothing listens on (Ray itself retries for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local": Ray resolves these itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ComponentFailed(f"cannot reach the Ray cluster at {address}: {exc}") from None


class RayLauncher:
    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: Path,
        address: str | None = None,
        console: bool | None = None,
    ) -> None:
        self.config = config
        # Components on other nodes resolve paths on their own: give them an absolute one.
        self.run_dir = Path(run_dir).resolve()
        self.address = address
        self.console = config.telemetry.console if console is None else console
        self.components: dict[str, RayComponent] = {}
        self._retiring: list[tuple[RayComponent, Any, float]] = []
        self._stop = threading.Event()
        self._reason = "stopped"
        self._coordinator: Coordinator | None = None
        self._telemetry: str | None = None
        self._classes: dict[str, Any] = {}
        self._status_written: str | None = None

    # -- Ray --------------------------------------------------------------------------------------

    def _connect(self) -> bool:
        """Join the cluster (or start a local instance); True when this call initialised Ray."""
        if ray.is_initialized():
            return False
        address = self.address or os.environ.get("RAY_ADDRESS")
        if address:
            if address.startswith("ray://"):
                # Ray Client: this process stays outside the cluster, and the coordinator in it
                # must be reachable from every node. `ray job submit` runs the driver on the head.
                log.warning(
                    "connecting through Ray Client (%s): the components report to the coordinator on "
                    "this machine, which the cluster's nodes must be able to reach; `ray job submit` "
                    "runs the launcher on the cluster instead",
                    address,
                )
            _check_reachable(address)
            # A cluster has its own resources: the `ray.local` settings are only for an instance we start.
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ComponentFailed(f"cannot join the Ray cluster at {address}: {exc}") from None
            return True
        local = self.config.ray.local
        kwargs: dict[str, Any] = {
            "address": "local",
            "num_cpus": local.num_cpus or max(os.cpu_count() or 1, math.ceil(self._cpus_needed())),
            "include_dashboard": local.dashboard,
            "log_to_driver": False,
        }
        if local.num_gpus is not None:
            kwargs["num_gpus"] = local.num_gpus
        if local.object_store_mb is not None:
            kwargs["object_store_memory"] = local.object_store_mb * 1024 * 1024
        if local.temp_dir is not None:
            kwargs["_temp_dir"] = local.temp_dir
        ray.init(**kwargs)
        return True

    def _cpus_needed(self) -> float:
        cfg = self.config
        r = cfg.ray
        return (
            cfg.replay.num_shards * r.replay_cpus
            + r.params_cpus
            + r.learner_cpus
            + cfg.actors.num_actors * r.actor_cpus
            + (r.evaluator_cpus if cfg.eval.enabled else 0.0)
        )

    def _actor_class(self, cls: type) -> Any:
        if cls.__name__ not in self._classes:
            self._classes[cls.__name__] = ray.remote(cls)
        return self._classes[cls.__name__]

    # -- creating components ----------------------------------------------------------------------

    def _config_data(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    def _create(self, kind: str, name: str, generation: int = 0, **kwargs: Any) -> RayComponent:
        cls = {
            "replay": ReplayShardComponent,
            "params": ParamServerComponent,
            "learner": LearnerComponent,
            "actor": ActorComponent,
            "evaluator": EvaluatorComponent,
        }[kind]
        handle = (
            self._actor_class(cls)
            .options(name=_ray_name(name, generation), **placement_options(self.config.ray, kind))
            .remote(name, self._config_data(), str(self.run_dir), **kwargs)
        )
        component = RayComponent(name, kind, handle, generation=generation)
        self.components[name] = component
        return component

    def _shard_data(self, k: int) -> dict[str, Any]:
        return replay_shard_config(self.config, self.run_dir, k).model_dump(mode="json")

    def _start_servers(self) -> None:
        for k in range(self.config.replay.num_shards):
            self._create("replay", f"replay-{k}", shard_data=self._shard_data(k))
        self._create("params", "params")
        servers = [c for c in self.components.values() if c.kind in SERVER_KINDS]
        refs = [c.handle.ping.remote() for c in servers]
        try:
            statuses = ray.get(refs, timeout=SERVER_START_TIMEOUT_S)
        except RayActorError as exc:
            raise ComponentFailed(f"a server did not start: {exc}") from None
        except ray.exceptions.GetTimeoutError:
            raise ComponentFailed(
                f"the replay shards and parameter server did not start within {SERVER_START_TIMEOUT_S:.0f}s "
                "(does the cluster have the CPUs, resources and labels of the `ray` config section?)"
            ) from None
        for component, status in zip(servers, statuses, strict=True):
            self._accept(component, status)

    def _addresses(self) -> ComponentAddresses:
        shards = [c for c in self.components.values() if c.kind == "replay"]
        shards.sort(key=lambda c: int(c.name.split("-")[1]))
        params = self.components["params"]
        assert params.status is not None and all(c.status is not None for c in shards)
        return ComponentAddresses(
            replay=[c.status.address for c in shards],  # type: ignore[union-attr]
            params=params.status.address,  # type: ignore[arg-type]
            telemetry=self._telemetry,
        )

    def _create_loop(self, name: str, generation: int = 0) -> RayComponent:
        addresses = self._addresses()
        if name == "learner":
            return self._create("learner", name, generation, addresses=addresses)
        if name == "evaluator":
            return self._create("evaluator", name, generation, addresses=addresses)
        index = int(name.split("-")[1])
        return self._create("actor", name, generation, addresses=addresses, index=index)

    def _actor_names(self) -> list[str]:
        names = [n for n, c in self.components.items() if c.kind == "actor"]
        return sorted(names, key=lambda n: int(n.split("-")[1]))

    # -- the run ----------------------------------------------------------------------------------

    def run(self) -> RunResult:
        cfg = self.config
        resume_from = prepare_run_dir(cfg, self.run_dir)
        started_ray = self._connect()
        try:
            try:
                free = _free_resources()
                plan = plan_placement(cfg, free.get("CPU", 0.0), free.get("GPU", 0.0))
            except PlacementError as exc:
                raise ComponentFailed(str(exc)) from None
            if plan.note:
                log.warning("%s", plan.note)
            # Components on other nodes report here: listen on this node's cluster address.
            host = ray.util.get_node_ip_address()
            with coordinated_run(
                cfg, self.run_dir, resume_from, host, self.console, self._on_signal
            ) as coord:
                coordinator = self._coordinator = coord.coordinator
                self._telemetry = coord.address
                try:
                    self._start_servers()
                    self._create_loop("learner")
                    if plan.note:
                        coordinator.note(plan.note)
                    for i in range(plan.num_actors):
                        self._create_loop(f"actor-{i}")
                    if cfg.eval.enabled:
                        self._create_loop("evaluator")
                    coordinator.note(f"{len(self.components)} components placed on the Ray cluster")
                    coord.start_display()
                    self._supervise(coordinator)
                finally:
                    self._shutdown()
        finally:
            if started_ray:
                ray.shutdown()
        snap = coordinator.snapshot()
        return RunResult(self.run_dir, int(snap.env_steps), int(snap.updates), self._reason)

    def request_stop(self, reason: str = "stopped") -> None:
        """Stop the run from another thread (what SIGTERM does)."""
        self._reason = reason
        self._stop.set()

    def _on_signal(self) -> None:
        self.request_stop("interrupted")

    def _finished(self, coordinator: Coordinator) -> str | None:
        cfg = self.config
        reason = finished_reason(cfg, coordinator.snapshot())
        if reason is not None:
            return reason
        learner = self.components.get("learner")
        if learner is not None and learner.status is not None and learner.status.state == "finished":
            return "learner finished"
        return None

    def _supervise(self, coordinator: Coordinator) -> None:
        while not self._stop.wait(TICK_S):
            reason = self._finished(coordinator)
            if reason is not None:
                self._reason = reason
                return
            self._poll_scale_request(coordinator)
            self._ping_all(coordinator)
            self._reap_retired()
            self._write_components()

    # -- supervision ------------------------------------------------------------------------------

    def _ping_all(self, coordinator: Coordinator) -> None:
        for component in self.components.values():
            if component.ping_ref is None:
                component.ping_ref = component.handle.ping.remote()
        by_ref = {c.ping_ref: c for c in self.components.values()}
        ready, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=TICK_S)
        now = time.monotonic()
        changed_servers: list[RayComponent] = []
        for ref in ready:
            component = by_ref[ref]
            component.ping_ref = None
            try:
                status = ray.get(ref)
            except ActorUnavailableError:
                # Ray is restarting it; the next ping waits for the new process.
                if not component.reported_unavailable:
                    component.reported_unavailable = True
                    log.warning("%s died; Ray is restarting it", component.name)
                    coordinator.note(f"{component.name} died; Ray is restarting it")
                continue
            except ActorDiedError as exc:
                raise ComponentFailed(
                    f"{component.name} died and Ray will not restart it "
                    f"(ray.max_restarts={self.config.ray.max_restarts}): {exc}"
                ) from None
            except RayActorError as exc:  # e.g. its node went away; the next ping tells whether it returns
                log.warning("%s: %s", component.name, exc)
                continue
            component.last_answer = now
            component.answered = True
            component.reported_silent = component.reported_unavailable = False
            if self._accept(component, status):
                changed_servers.append(component)
        for component in self.components.values():
            silent_s = now - component.last_answer
            if not component.answered and silent_s > self.config.ray.start_timeout_s:
                running = [c for c in self.components.values() if c.kind == "actor" and c.answered]
                if component.kind != "actor" or not running:
                    raise ComponentFailed(
                        f"{component.name} has not started after {silent_s:.0f}s "
                        f"(ray.start_timeout_s): {self._pending_reason(component)}"
                    )
                if not component.reported_unplaced:
                    # Other actors run (e.g. after `distrl scale` past the cluster): go on without it.
                    component.reported_unplaced = True
                    coordinator.note(
                        f"{component.name} has not started after {silent_s:.0f}s; the run goes on with "
                        f"{len(running)} actors: {self._pending_reason(component)}"
                    )
            if not component.reported_silent and silent_s > SILENT_WARN_S:
                component.reported_silent = True
                why = (
                    "a node in trouble, or a hung process"
                    if component.answered
                    else self._pending_reason(component)
                )
                coordinator.note(f"{component.name} has not answered for {SILENT_WARN_S:.0f}s: {why}")
        if changed_servers:
            self._rewire(changed_servers, coordinator)

    def _pending_reason(self, component: RayComponent) -> str:
        """What a component that never started asks for, and what the cluster has free."""
        opts = placement_options(self.config.ray, component.kind)
        asks = [f"{opts.get('num_cpus', 0):g} CPU"]
        if opts.get("num_gpus"):
            asks.append(f"{opts['num_gpus']:g} GPU")
        asks += [f"{v:g} {k}" for k, v in opts.get("resources", {}).items()]
        if opts.get("label_selector"):
            asks.append(f"a node labelled {opts['label_selector']}")
        try:
            free = ray.available_resources()
            have = f"{free.get('CPU', 0.0):g} CPU, {free.get('GPU', 0.0):g} GPU free"
        except Exception:  # the cluster's state is only for the message
            have = "the cluster's free resources unknown"
        return f"Ray has not placed it; it asks for {', '.join(asks)} ({have})"

    def _accept(self, component: RayComponent, status: ComponentStatus) -> bool:
        """Record a ping answer; True when a server came back at a different address."""
        before = component.status
        component.status = status
        if not status.sees_run_dir and not component.reported_unshared:
            component.reported_unshared = True
            message = (
                f"{component.name} on {status.node_ip} does not see {self.run_dir}: put the run directory on "
                "a filesystem every node mounts, or checkpoints and replay snapshots are lost on restart"
            )
            log.warning("%s", message)
            if self._coordinator is not None:
                self._coordinator.note(message)
        if before is None or (before.pid, before.started_unix_s) == (status.pid, status.started_unix_s):
            return False
        component.restarts += 1
        where = f" at {status.address}" if status.address else ""
        log.warning("%s was restarted by Ray (%d)%s", component.name, component.restarts, where)
        if self._coordinator is not None:
            self._coordinator.note(f"{component.name} restarted by Ray ({component.restarts}){where}")
        return component.kind in SERVER_KINDS and before.address != status.address

    def _rewire(self, servers: list[RayComponent], coordinator: Coordinator) -> None:
        """Recreate the learner, actors and evaluator with the new server addresses."""
        names = ", ".join(f"{s.name} -> {s.status.address}" for s in servers if s.status)
        dependants = [c for c in self.components.values() if c.kind not in SERVER_KINDS]
        message = f"new server address ({names}): restarting {len(dependants)} components"
        log.warning("%s", message)
        coordinator.note(message)
        # Actors first, so nothing is lost in flight; the learner writes a checkpoint and resumes from it.
        order = sorted(dependants, key=lambda c: c.kind == "learner")
        self._stop_group([c for c in order if c.kind != "learner"])
        self._stop_group([c for c in order if c.kind == "learner"])
        for old in order:
            self._create_loop(old.name, old.generation + 1)

    def _stop_group(self, group: list[RayComponent]) -> None:
        refs = {c.name: c.handle.stop.remote() for c in group}
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
        for component in group:
            try:
                ray.get(refs[component.name], timeout=max(0.0, deadline - time.monotonic()))
            except (RayActorError, ray.exceptions.GetTimeoutError) as exc:
                log.warning("%s did not stop cleanly: %s", component.name, exc.__class__.__name__)
            ray.kill(component.handle, no_restart=True)

    # -- scaling ----------------------------------------------------------------------------------

    def _poll_scale_request(self, coordinator: Coordinator) -> None:
        count = scaling.poll_scale_request(self.run_dir, self.config, coordinator.note)
        if count is None:
            return
        self.scale_actors(count)

    def scale_actors(self, count: int) -> None:
        """Run `count` actors: start the missing indices, stop the highest ones; nothing else restarts."""
        names = self._actor_names()
        before = len(names)
        if count == before:
            return
        for i in range(count):
            if f"actor-{i}" not in self.components:
                self._create_loop(f"actor-{i}")
        for name in names[count:]:
            component = self.components.pop(name)
            # Let it flush what it holds, without holding up supervision; killed in _reap_retired.
            self._retiring.append((component, component.handle.stop.remote(), time.monotonic()))
        self.config = scaling.record_actor_count(self.run_dir, self.config, count)
        log.warning("scaled actors %d -> %d", before, count)
        if self._coordinator is not None:
            self._coordinator.note(f"scaled actors {before} -> {count}")

    def _reap_retired(self, wait_s: float = 0.0) -> None:
        deadline = time.monotonic() + wait_s
        keep = []
        for component, ref, since in self._retiring:
            left = max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait([ref], timeout=left)
            if ready or time.monotonic() - since > SHUTDOWN_TIMEOUT_S:
                ray.kill(component.handle, no_restart=True)
            else:
                keep.append((component, ref, since))
        self._retiring = keep

    # -- status file and shutdown -----------------------------------------------------------------

    def _write_components(self) -> None:
        entries = []
        for c in self.components.values():
            status = asdict(c.status) if c.status is not None else {}
            entries.append(
                {
                    "name": c.name,
                    "kind": c.kind,
                    "ray_name": _ray_name(c.name, c.generation),
                    "address": status.get("address"),
                    "node_ip": status.get("node_ip"),
                    "pid": status.get("pid"),
                    "state": status.get("state", "starting"),
                    "restarts": c.restarts,
                }
            )
        text = json.dumps({"launcher": "ray", "components": entries}, indent=2)
        if text != self._status_written:
            path = self.run_dir / COMPONENTS_FILE
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
            self._status_written = text

    def _shutdown(self) -> None:
        self._reap_retired(wait_s=SHUTDOWN_TIMEOUT_S)
        components = list(self.components.values())
        # As the local launcher: actors first (nothing lost in flight), then the learner (final
        # checkpoint), then the servers (shards checkpoint replay).
        order = [
            [c for c in components if c.kind in ("actor", "evaluator")],
            [c for c in components if c.kind == "learner"],
            [c for c in components if c.kind in SERVER_KINDS],
        ]
        for group in order:
            self._stop_group(group)
        for c in components:
            if c.status is not None:
                c.status = ComponentStatus(**{**asdict(c.status), "state": "stopped"})
        try:
            self._write_components()
        except OSError:
            pass
