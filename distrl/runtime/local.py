"""The local launcher: every component as a supervised subprocess on one machine.

`distrl train CONFIG` starts, in order: the coordinator (in this process; it
drives the console), K replay shards, the parameter server, the learner, N
actors and the evaluator, each on a free loopback port. Crashed actors and the
evaluator are restarted with exponential backoff; a crashed shard or parameter
server is restarted on its old port (shards restore their last checkpoint); a
crashed learner restarts from its newest checkpoint. A component that exits with the same error
`SAME_EARLY_EXITS` times in a row, each time within `EARLY_EXIT_S` of starting (a config it
cannot run), is not restarted again: the run fails with the end of its log. Ctrl-C or SIGTERM stops
everything in order (actors first, so nothing is lost in flight; then the
learner, which writes a final checkpoint; then the shards, which checkpoint
replay), and `distrl train --resume RUN_DIR` continues from there.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import yaml

from distrl.config import ExperimentConfig
from distrl.envs.render import headless_gl_backend
from distrl.experiment import replay_shard_config
from distrl.runtime import scaling
from distrl.runtime.process import ChildProcess, ComponentFailed, distrl_argv
from distrl.runtime.run import CONFIG_FILE, RunResult, coordinated_run, finished_reason, prepare_run_dir
from distrl.telemetry import Coordinator
from distrl.wire.retry import Backoff

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0
# A child that exits this soon after starting, this many times in a row with the same last log
# line, fails the run (restarting it would only repeat the error with a growing backoff).
EARLY_EXIT_S = 60.0
SAME_EARLY_EXITS = 3
LOG_TAIL_LINES = 15
# RUN_DIR/pids.json: the launcher's pid and each child's, rewritten whenever a child (re)starts.
PIDS_FILE = "pids.json"


def _token_env(config: ExperimentConfig) -> dict[str, str]:
    token = config.network.security.resolved_token()
    return {"DISTRL_TOKEN": token} if token else {}


def _security_flags(config: ExperimentConfig, server: bool) -> list[str]:
    sec = config.network.security
    flags: list[str] = []
    pairs = [("--tls-cert", sec.tls_cert), ("--tls-key", sec.tls_key)]
    pairs += [("--tls-client-ca", sec.tls_client_ca)] if server else []
    for flag, value in pairs:
        if value is not None:
            flags += [flag, str(value)]
    return flags


def _fails_on_start(child: ChildProcess, code: int | None) -> ComponentFailed:
    """The run's error when `child` keeps failing the same way as it starts: the end of its log."""
    tail = "\n".join(child.log_tail(LOG_TAIL_LINES))
    return ComponentFailed(
        f"{child.name} exited with code {code} {child.early_exits} times in a row, each within "
        f"{EARLY_EXIT_S:.0f}s of starting, with the same error: {child.early_error}\n"
        f"--- the end of {child.log_path} ---\n{tail}"
    )


class LocalLauncher:
    def __init__(self, config: ExperimentConfig, run_dir: Path, console: bool | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.console = config.telemetry.console if console is None else console
        self.children: dict[str, ChildProcess] = {}
        # Actors stopped by `distrl scale`: waited for at shutdown.
        self._retired: list[ChildProcess] = []
        self._common: list[str] = []
        self._stop = threading.Event()
        self._reason = "stopped"
        # The evaluator renders clips (eval.video): with MUJOCO_GL unset it gets a headless backend,
        # chosen before an env built here sets MUJOCO_GL=disable for this process and its children.
        backend = None if "MUJOCO_GL" in os.environ else headless_gl_backend()
        self._evaluator_gl = {"MUJOCO_GL": backend} if backend else {}

    # -- set-up ---------------------------------------------------------------------------------

    def _child(self, name: str, args: list[str], server: bool, restartable: bool) -> ChildProcess:
        child = ChildProcess(
            name=name,
            argv=distrl_argv(*args),
            log_path=self.run_dir / "logs" / f"{name}.log",
            server=server,
            restartable=restartable,
            env=_token_env(self.config),
            restart_backoff=Backoff(self.config.actors.restart_backoff_s, MAX_BACKOFF_S),
        )
        self.children[name] = child
        return child

    def _start_servers(self) -> tuple[list[str], str]:
        cfg = self.config
        host = cfg.network.host
        shards = []
        for k in range(cfg.replay.num_shards):
            shard_cfg = replay_shard_config(cfg, self.run_dir, k)
            path = self.run_dir / "replay" / f"shard-{k}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(shard_cfg.model_dump(mode="json"), sort_keys=False))
            args = ["serve", "replay", "--host", host, "--port", "0", "--config", str(path)]
            shards.append(self._child(f"replay-{k}", args + _security_flags(cfg, True), True, True))
        params = self._child(
            "params",
            ["serve", "params", "--host", host, "--port", "0", *_security_flags(cfg, True)],
            True,
            True,
        )
        for child in [*shards, params]:
            child.start()
            # A restarted server must come back where its clients look for it.
            child.argv[child.argv.index("--port") + 1] = child.address.rsplit(":", 1)[1]
        return [s.address for s in shards], params.address

    def _component_args(self, replay: list[str], params: str, telemetry: str) -> list[str]:
        return [
            "--config",
            str(self.run_dir / CONFIG_FILE),
            "--replay",
            ",".join(replay),
            "--params",
            params,
            "--telemetry",
            telemetry,
        ]

    # -- the run --------------------------------------------------------------------------------

    def run(self) -> RunResult:
        cfg = self.config
        resume_from = prepare_run_dir(cfg, self.run_dir)
        with coordinated_run(
            cfg, self.run_dir, resume_from, cfg.network.host, self.console, self.request_stop
        ) as coord:
            try:
                replay, params = self._start_servers()
                common = self._common = self._component_args(replay, params, coord.address)
                self._child(
                    "learner", ["serve", "learner", *common, "--run-dir", str(self.run_dir)], False, True
                )
                for i in range(cfg.actors.num_actors):
                    self._child(f"actor-{i}", ["serve", "actor", *common, "--index", str(i)], False, True)
                if cfg.eval.enabled:
                    evaluator = ["serve", "evaluator", *common, "--run-dir", str(self.run_dir)]
                    self._child("evaluator", evaluator, False, True).env.update(self._evaluator_gl)
                for child in self.children.values():
                    if child.proc is None:
                        child.start()
                self._write_pids()
                coord.start_display()
                self._supervise(coord.coordinator)
            finally:
                self._shutdown()
        snap = coord.coordinator.snapshot()
        return RunResult(self.run_dir, int(snap.env_steps), int(snap.updates), self._reason)

    def request_stop(self, reason: str = "interrupted") -> None:
        """Stop the run (what SIGINT and SIGTERM do)."""
        self._reason = reason
        self._stop.set()

    def _supervise(self, coordinator: Coordinator) -> None:
        cfg = self.config
        while not self._stop.wait(0.2):
            reason = finished_reason(cfg, coordinator.snapshot())
            if reason is not None:
                self._reason = reason
                return
            learner = self.children["learner"]
            if learner.returncode() == 0:
                self._reason = "learner finished"
                return
            self._poll_scale_request(coordinator)
            now = time.monotonic()
            for child in self.children.values():
                if child.alive():
                    continue
                if child.next_restart_at is None:
                    code = child.returncode()
                    if child.count_early_exit(now, EARLY_EXIT_S) >= SAME_EARLY_EXITS:
                        raise _fails_on_start(child, code)
                    if not child.restartable or child.restarts >= cfg.actors.max_restarts:
                        raise ComponentFailed(
                            f"{child.name} exited with code {code} and will not be restarted; "
                            f"see {child.log_path}"
                        )
                    delay = child.restart_backoff.delay(child.restarts + 1)
                    child.next_restart_at = now + delay
                    log.warning("%s exited with code %s; restarting in %.1fs", child.name, code, delay)
                    coordinator.note(f"{child.name} exited (code {code}); restart in {delay:.1f}s")
                elif now >= child.next_restart_at:
                    child.restarts += 1
                    child.next_restart_at = None
                    child.start()
                    self._write_pids()
                    coordinator.note(f"{child.name} restarted ({child.restarts})")

    def _poll_scale_request(self, coordinator: Coordinator) -> None:
        count = scaling.poll_scale_request(self.run_dir, self.config, coordinator.note)
        if count is None:
            return
        actors = sorted((n for n in self.children if n.startswith("actor-")), key=lambda n: int(n[6:]))
        for i in range(count):
            name = f"actor-{i}"
            if name not in self.children:
                self._child(name, ["serve", "actor", *self._common, "--index", str(i)], False, True).start()
        for name in actors[count:]:
            child = self.children.pop(name)
            child.terminate()  # it flushes what it holds and exits; waited for at shutdown
            self._retired.append(child)
        self._write_pids()
        self.config = scaling.record_actor_count(self.run_dir, self.config, count)
        log.warning("scaled actors %d -> %d", len(actors), count)
        coordinator.note(f"scaled actors {len(actors)} -> {count}")

    def _write_pids(self) -> None:
        """Where each process of the run is, for whoever must signal one (an operator, a chaos run):
        `{"launcher": pid, "children": {name: {"pid", "address"}}}`, replaced atomically."""
        children = {
            name: {"pid": child.proc.pid, "address": child.address}
            for name, child in self.children.items()
            if child.proc is not None
        }
        path = self.run_dir / PIDS_FILE
        tmp = path.with_name(f".{PIDS_FILE}.tmp")
        tmp.write_text(json.dumps({"launcher": os.getpid(), "children": children}, indent=1))
        os.replace(tmp, path)

    def _shutdown(self) -> None:
        order = [
            [*self._retired, *(c for n, c in self.children.items() if n.startswith(("actor-", "evaluator")))],
            [c for n, c in self.children.items() if n == "learner"],
            [c for n, c in self.children.items() if n.startswith("replay-") or n == "params"],
        ]
        for group in order:
            for child in group:
                child.terminate()
            for child in group:
                if not child.wait(60.0):
                    log.warning("%s did not stop in time; killing it", child.name)
                    child.kill()
