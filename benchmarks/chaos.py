"""Chaos during real runs: kill -9 each component of a `distrl train` mid-run, count what is lost.

    python benchmarks/chaos.py --json benchmarks/results/chaos.json
    python benchmarks/chaos.py --quick --faults shard+learner,drain     # ~1 minute a fault
    python benchmarks/chaos.py --launcher ray --json /tmp/chaos_ray.json  # actor, shard, learner on Ray

Each fault is one real run (2 replay shards, 2 actors, the learner, the parameter server, and the
coordinator inside the launcher) of SAC with small nets on `safe:point-goal`, replay checkpoints
every few seconds and a learner checkpoint every 250 updates, sized to take about a minute
(`--quick`: about 15 s). Once the run is well under way (a third of its env steps, a replay
checkpoint on every shard and a learner checkpoint), the harness finds the processes in
RUN_DIR/pids.json (the local launcher keeps it current) and injects the fault:

- actor, shard, learner, params: kill -9 of actor-0, replay-0, the learner or the parameter server;
  the launcher restarts it (a shard from its newest replay checkpoint, the learner from its newest
  checkpoint). shard+learner: replay-0 and the learner at once.
- coordinator: the coordinator lives in the launcher process (`distrl train`), so this is kill -9 of
  the launcher. Its children see it gone within a second and stop as on SIGTERM (final learner and
  replay checkpoints; the run cannot go on without it, by design); the harness waits for them to
  exit, then `distrl train --resume RUN_DIR` finishes the run.
- drain: SIGTERM to the launcher and every child at once (a node drain), then `--resume`.

With `--launcher ray` the same run is placed on a Ray instance the launcher starts on this machine
(`distrl train --launcher ray`; its session directory a short temporary path, removed afterwards), and
the faults are actor, shard, learner and shard+learner: kill -9 of the component's Ray worker process,
found in RUN_DIR/components.json (the Ray launcher keeps each component's pid and address there). Ray
restarts it (`ray.max_restarts`) by running its constructor again, which restores the same checkpoints
(what a restarted shard restored is read from its log, "listening on ADDR (restored PATH)"); the checks
below are the same, and results are named chaos/ray/<fault>/...

Checks, once the run has finished:

- completed: the last `distrl train` exited 0 having reached `train.total_env_steps`;
- counters: env steps in metrics.jsonl never go backwards; updates go backwards only right after a
  learner (re)start, and no lower than the checkpoint that learner restored; a killed learner resumed
  from the newest checkpoint it had written (more than 0 updates), and a killed shard restored its
  newest replay checkpoint (its Info's `last_checkpoint` after the restart);
- lost: transitions acknowledged as stored that replay no longer holds. Every replay writer keeps an
  ack ledger (`DISTRL_ACK_LEDGER_DIR`, `distrl.replay.ledger`): acked = the transitions of every acked
  batch; held = the shards' insert counters in their final checkpoints, less what a shard stored but
  never acked (the batches in flight when an actor died: the incarnation's sequences above its last
  ack, up to the last one the shard stored from it); lost = acked - held;
- lost_bound: the transitions a killed shard acked after the snapshot of the checkpoint it restored
  (the checkpoint's `snapshot_time`) and before it was restarted: all that replay may lose. 0 where no
  shard is killed, and then lost must be 0.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Result, parser, print_table, write_json

from distrl.learners.checkpoint import latest_checkpoint, load_checkpoint
from distrl.replay.checkpoint import list_checkpoints, read_checkpoint, snapshot_time
from distrl.replay.client import ReplayClient
from distrl.replay.ledger import LEDGER_ENV, read_ledger
from distrl.runtime.local import PIDS_FILE
from distrl.runtime.process import START_MARK

# The Ray launcher's RUN_DIR/components.json (distrl.runtime.ray.COMPONENTS_FILE; not imported, so that
# the local path needs no Ray).
COMPONENTS_FILE = "components.json"

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "sac_point.yaml"
FAULTS = ("actor", "shard", "learner", "params", "coordinator", "shard+learner", "drain")
# The faults a running launcher recovers from: the children killed with SIGKILL.
KILLED = {
    "actor": ["actor-0"],
    "shard": ["replay-0"],
    "learner": ["learner"],
    "params": ["params"],
    "shard+learner": ["replay-0", "learner"],
}
LAUNCHERS = ("local", "ray")
# On Ray: the faults the launcher recovers from without --resume (all of KILLED but the parameter
# server, whose restart at a new address re-creates the loops: tests/test_ray_launcher.py covers it).
RAY_FAULTS = ("actor", "shard", "learner", "shard+learner")
RAY_DEFAULT_FAULTS = ("actor", "shard", "learner")
NUM_SHARDS = 2
FULL_STEPS, QUICK_STEPS = 30_000, 12_000
# The learner's banner: a line of its own under the local launcher; under Ray, a log record
# ("2025-01-01 12:00:00,123 INFO distrl.runtime.ray: learner: ...").
_RESUMED = re.compile(
    r"^(?:\S+ \S+ \w+ distrl\.runtime\.ray: )?learner: .*?, (?:resumed from (\S+)|fresh), (\d+) updates$",
    re.MULTILINE,
)


def run_overrides(steps: int, quick: bool) -> list[str]:
    """The cheap run: point-goal steps at ~15k/s, so the learner (paced by the rate limiter) sets the
    run's speed, about 1,000 env steps/s on two shared cores."""
    return [
        "algo.hidden_sizes=[32, 32]",
        "algo.utd_ratio=1",
        "learner.batch_size=32",
        # 8 items sampled per item inserted: one update of 32 per 4 env steps.
        "replay.table.samples_per_insert=8",
        "replay.table.error_buffer=2000",
        "replay.table.min_size_to_sample=500",
        "actors.warmup_steps=500",
        "actors.num_actors=2",
        "actors.restart_backoff_s=0.5",
        f"replay.num_shards={NUM_SHARDS}",
        f"replay.checkpoint_every_s={2 if quick else 3}",
        "learner.checkpoint_every=250",
        "eval.enabled=false",
        "telemetry.report_every_s=0.5",
        f"train.total_env_steps={steps}",
    ]


def ray_overrides(temp_dir: Path) -> list[str]:
    """The local Ray instance of a `--launcher ray` run: its session directory (short: Ray's unix sockets
    live under it), a small object store (nothing large goes through it), logical CPUs for every
    component (2 shards, params 0.5, the learner, 2 actors: 5.5)."""
    return [
        f"ray.local.temp_dir={temp_dir}",
        "ray.local.object_store_mb=100",
        "ray.local.num_cpus=8",
    ]


# A Ray replay shard's log line once it serves.
_LISTENING = re.compile(r"listening on \S+ \((?:restored (.+)|fresh)\)$", re.MULTILINE)


# -- reading a run ----------------------------------------------------------------------------------


def metrics_rows(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's complete rows in order (a launcher killed mid-write leaves a partial last line)."""
    path = run_dir / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def read_pids(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / PIDS_FILE).read_text())


def read_components(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The Ray launcher's components.json by name ({} while it is missing or being replaced)."""
    try:
        data = json.loads((run_dir / COMPONENTS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {c["name"]: c for c in data["components"]}


def component(run_dir: Path, name: str, launcher: str = "local") -> dict[str, Any] | None:
    """Where a component runs now ("pid", "address" for a server): pids.json's entry under the local
    launcher, components.json's under Ray; None when unknown."""
    try:
        if launcher == "local":
            entry = read_pids(run_dir)["children"][name]
        else:
            entry = read_components(run_dir)[name]
    except (OSError, KeyError, ValueError):
        return None
    return entry if entry.get("pid") is not None else None


def child_pid(run_dir: Path, name: str, launcher: str = "local") -> int | None:
    entry = component(run_dir, name, launcher)
    try:
        return int(entry["pid"]) if entry is not None else None
    except (TypeError, ValueError):
        return None


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped has stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Incarnation:
    """One start of a component, from its log: when (to the second, rounded down) and, for the learner,
    the update count it started at and the checkpoint it restored (None: fresh)."""

    started: float
    text: str
    updates: int | None = None
    resumed_from: str | None = None


def incarnations(log_path: Path) -> list[Incarnation]:
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    out = []
    for part in text.split(START_MARK)[1:]:
        stamp = part[:19]
        started = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))
        inc = Incarnation(started, part)
        if match := _RESUMED.search(part):
            inc.resumed_from, inc.updates = match.group(1), int(match.group(2))
        out.append(inc)
    return out


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


# -- what was lost --------------------------------------------------------------------------------


@dataclass
class ShardKill:
    index: int
    killed_at: float  # time.time()
    checkpoint: str | None  # the newest complete replay checkpoint at the kill: what a restart restores
    snapshot_time: float | None
    restored_from: str | None = None  # the restarted shard's Info.last_checkpoint
    restarted_at: float | None = None  # its log's start mark + 1 s (the mark is rounded down)


@dataclass
class Losses:
    acked: int  # transitions in batches acked as stored (or as a resend the shard already held)
    stored: int  # the shards' insert counters in their final checkpoints
    stored_unacked: int  # of those, stored but never acked (in flight when an actor died)
    lost: int  # acked - (stored - stored_unacked)
    lost_bound: int  # acked by a killed shard after its restored checkpoint's snapshot


def count_losses(run_dir: Path, ledger_dir: Path, kills: list[ShardKill]) -> Losses:
    """Compare the writers' ledger with the shards' final checkpoints (see the module docstring)."""
    entries = read_ledger(ledger_dir)
    sizes = {(e.incarnation, e.sequence): e.transitions for e in entries if e.kind == "sent"}
    acks = {(e.incarnation, e.sequence): e for e in entries if e.kind == "ack"}
    acked = sum(sizes.get(key, e.transitions) for key, e in acks.items())
    last_ack: dict[str, int] = {}
    for inc, seq in acks:
        last_ack[inc] = max(seq, last_ack.get(inc, seq))
    sent_by_inc: dict[str, list[int]] = {}
    for inc, seq in sorted(sizes):
        sent_by_inc.setdefault(inc, []).append(seq)
    stored = stored_unacked = 0
    for k in range(NUM_SHARDS):
        checkpoints = list_checkpoints(run_dir / "replay" / f"shard-{k}")
        if not checkpoints:
            continue
        for table in read_checkpoint(checkpoints[-1]).values():
            stored += table.counters.inserts
            for writer in table.incarnation_sequences:
                inc = writer.incarnation.hex()
                seqs = sent_by_inc.get(inc, [])
                # Unacked batches are the newest: above the last ack, up to what this shard holds.
                lo = bisect_right(seqs, last_ack.get(inc, -1))
                hi = bisect_right(seqs, writer.sequence)
                stored_unacked += sum(sizes[(inc, q)] for q in seqs[lo:hi])
    bound = 0
    for kill in kills:
        start = kill.snapshot_time if kill.snapshot_time is not None else float("-inf")
        end = kill.restarted_at if kill.restarted_at is not None else kill.killed_at + 1.0
        bound += sum(
            sizes.get(key, e.transitions)
            for key, e in acks.items()
            if e.shard == kill.index and start < e.time < end
        )
    return Losses(acked, stored, stored_unacked, acked - (stored - stored_unacked), bound)


# -- counters -------------------------------------------------------------------------------------


def check_counters(run_dir: Path) -> list[str]:
    """Problems with metrics.jsonl's counters: env steps going back; updates going back other than once
    after a learner restart, to no lower than the checkpoint that learner restored."""
    problems = []
    rows = metrics_rows(run_dir)
    learners = incarnations(run_dir / "logs" / "learner.log")
    used: set[int] = set()
    for i in range(1, len(rows)):
        prev, row = rows[i - 1], rows[i]
        if row["env_steps"] < prev["env_steps"]:
            problems.append(f"row {i}: env steps went back from {prev['env_steps']} to {row['env_steps']}")
        if row["updates"] >= prev["updates"]:
            continue
        # The newest learner start before this row (start marks are rounded down to the second).
        before = [j for j, inc in enumerate(learners) if inc.started <= row["time"]]
        j = before[-1] if before else None
        if j is None or j == 0 or j in used:
            problems.append(
                f"row {i}: updates went back from {prev['updates']} to {row['updates']} "
                "with no learner restart"
            )
        else:
            used.add(j)
            if learners[j].updates is None or row["updates"] < learners[j].updates:
                problems.append(
                    f"row {i}: updates went back to {row['updates']}, below the restarted learner's "
                    f"checkpoint ({learners[j].updates} updates)"
                )
    if not rows:
        problems.append("no metrics rows")
    return problems


# -- one fault -------------------------------------------------------------------------------------


@dataclass
class FaultOutcome:
    fault: str
    completed: bool
    losses: Losses
    problems: list[str] = field(default_factory=list)
    env_steps: int = 0
    updates: int = 0
    wall_s: float = 0.0
    injected_at_env_steps: int = 0
    shard_kills: list[ShardKill] = field(default_factory=list)
    learner_checkpoint_at_kill: int | None = None
    learner_resumed_at: list[int | None] = field(default_factory=list)  # updates at each learner start
    losses_at_stop: Losses | None = None  # coordinator, drain: before the resume
    launcher: str = "local"
    # Ray: each component's Ray actor name at the end ("NAME@G": re-created G times by the launcher, as
    # when a server came back at a new address) and its restarts by Ray, from components.json.
    ray_components: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _train(args: list[str], env: dict[str, str], out: Path) -> subprocess.Popen:
    with open(out, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "distrl.cli", "train", *args, "--no-console"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _under_way(run_dir: Path, steps: int, proc: subprocess.Popen, launcher: str = "local") -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"the run exited ({proc.returncode}) before the fault; see {run_dir / 'logs'}")
    rows = metrics_rows(run_dir)
    if launcher == "local":
        placed = (run_dir / PIDS_FILE).exists()
    else:
        found = read_components(run_dir)
        placed = bool(found) and all(c["state"] == "running" and c["pid"] for c in found.values())
    return (
        bool(rows)
        and rows[-1]["env_steps"] >= steps // 3
        and all(list_checkpoints(run_dir / "replay" / f"shard-{k}") for k in range(NUM_SHARDS))
        and latest_checkpoint(run_dir / "checkpoints") is not None
        and placed
    )


def _restored_from(address: str) -> tuple[str, float] | None:
    """A restarted shard's Info: (last_checkpoint, uptime_s), or None while it does not answer."""
    with ReplayClient([address], rpc_timeout_s=2.0) as client:
        info = client.info()[0]
    return (info.last_checkpoint, info.uptime_s) if info.up else None


def _restored_from_log(run_dir: Path, kill: ShardKill) -> str | None:
    """What a shard restarted by Ray restored, from its first start after the kill ("fresh": nothing);
    None until it has said (`ReplayShardComponent`: "listening on ADDR (restored PATH)")."""
    for inc in incarnations(run_dir / "logs" / f"replay-{kill.index}.log"):
        if inc.started >= int(kill.killed_at) and (match := _LISTENING.search(inc.text)):
            return match.group(1) or "fresh"
    return None


def _kill_children(
    run_dir: Path, names: list[str], outcome: FaultOutcome, timeout: float, launcher: str = "local"
) -> None:
    """kill -9 `names` at once; note what a recovery must restore; wait for the launcher's (or Ray's)
    restarts."""
    pids = {name: child_pid(run_dir, name, launcher) for name in names}
    killed_at = time.time()
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    for name, pid in pids.items():
        wait_for(lambda p=pid: not alive(p), 30, f"{name} ({pid}) to die")
    for name in names:
        if name.startswith("replay-"):
            k = int(name.split("-")[1])
            newest = list_checkpoints(run_dir / "replay" / f"shard-{k}")[-1:]
            outcome.shard_kills.append(
                ShardKill(
                    k,
                    killed_at,
                    str(newest[0]) if newest else None,
                    snapshot_time(newest[0]) if newest else None,
                )
            )
        elif name == "learner":
            newest = latest_checkpoint(run_dir / "checkpoints")
            outcome.learner_checkpoint_at_kill = int(load_checkpoint(newest)["updates"]) if newest else None
    for name, pid in pids.items():
        wait_for(
            lambda n=name, p=pid: child_pid(run_dir, n, launcher) not in (None, p),
            timeout,
            f"{name} restarted",
        )
    for kill in outcome.shard_kills:
        if launcher == "local":
            address = read_pids(run_dir)["children"][f"replay-{kill.index}"]["address"]
            path, uptime = wait_for(lambda a=address: _restored_from(a), 60, f"replay-{kill.index}'s Info")
            # After its first periodic checkpoint, Info names that one instead of the restored one.
            unseen = f"(not seen: Info after {uptime:.1f}s names {path})"
            kill.restored_from = path if uptime < 2.0 else unseen
        else:
            # Ray's components.json names the new process only once it answers a ping, by when the
            # shard may have written its first periodic checkpoint: its log says what it restored.
            kill.restored_from = wait_for(
                lambda k=kill: _restored_from_log(run_dir, k), 60, f"replay-{kill.index}'s restore"
            )
        starts = incarnations(run_dir / "logs" / f"replay-{kill.index}.log")
        later = [s.started for s in starts if s.started >= int(kill.killed_at)]
        kill.restarted_at = later[0] + 1.0 if later else None


def _stop_all(run_dir: Path, proc: subprocess.Popen, sig: int, everyone: bool, timeout: float) -> None:
    """Signal the launcher (and, with `everyone`, every child at once); wait until all have exited."""
    pids = read_pids(run_dir)
    children = [int(c["pid"]) for c in pids["children"].values()]
    targets = [int(pids["launcher"]), *(children if everyone else [])]
    for pid in targets:
        os.kill(pid, sig)
    proc.wait(timeout)
    wait_for(lambda: not any(alive(p) for p in children), timeout, "every component to exit")


def _ray_leftovers(temp_dir: Path) -> list[int]:
    """Processes of the Ray instance in `temp_dir` still running: those whose command line names it or
    that hold a file open in it (Ray's agents rename themselves, so the open files find them)."""
    text = str(temp_dir)
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if text in (proc / "cmdline").read_bytes().decode(errors="replace") or any(
                os.readlink(fd).startswith(text) for fd in (proc / "fd").iterdir()
            ):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _remove_ray_instance(temp_dir: Path) -> None:
    """The launcher shuts down the Ray instance it started; after a launcher killed on a timeout, kill
    -9 what that instance left behind (only processes using its own session directory), then remove it."""
    try:
        wait_for(lambda: not _ray_leftovers(temp_dir), 30, "Ray's processes to exit")
    except TimeoutError:
        for pid in _ray_leftovers(temp_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    shutil.rmtree(temp_dir, ignore_errors=True)


def run_fault(
    fault: str, root: Path, quick: bool = False, timeout: float | None = None, launcher: str = "local"
) -> FaultOutcome:
    """One run of `distrl train` with `fault` injected once it is under way; the run's directory is
    ROOT/<fault> (ROOT/ray-<fault> on Ray), the output of each `distrl train` goes to ROOT/<that>.out."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher {launcher!r} (launchers: {', '.join(LAUNCHERS)})")
    allowed = FAULTS if launcher == "local" else RAY_FAULTS
    if fault not in allowed:
        raise ValueError(f"unknown fault {fault!r} on the {launcher} launcher (faults: {', '.join(allowed)})")
    steps = QUICK_STEPS if quick else FULL_STEPS
    on_ray = launcher == "ray"
    # On Ray: starting the instance, and Ray's restart of a component, take a while longer.
    timeout = timeout or (240.0 if quick else 420.0) + (120.0 if on_ray else 0.0)
    run_dir = root / f"{'ray-' if on_ray else ''}{fault.replace('+', '-')}"
    if on_ray:
        run_dir = run_dir.resolve()  # as the Ray launcher has it, so the checkpoint paths compare equal
    ledger = run_dir / "ledger"
    out = root / f"{run_dir.name}.out"
    env = {**os.environ, "MUJOCO_GL": "disable", LEDGER_ENV: str(ledger)}
    args = [str(CONFIG), "--run-dir", str(run_dir), *run_overrides(steps, quick)]
    ray_temp = None
    if on_ray:
        # The Ray workers inherit this environment (the ledger's directory) from the instance the
        # launcher starts; no token in ~/.ray, no usage report attempts.
        env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
        ray_temp = Path(tempfile.mkdtemp(prefix="chaos-rt-", dir="/tmp"))
        args = [*args, "--launcher", "ray", *ray_overrides(ray_temp)]
    start = time.monotonic()
    deadline = start + timeout
    proc = _train(args, env, out)
    outcome = FaultOutcome(fault, False, Losses(0, 0, 0, 0, 0), launcher=launcher)
    try:
        wait_for(lambda: _under_way(run_dir, steps, proc, launcher), timeout / 2, "the run to be under way")
        outcome.injected_at_env_steps = metrics_rows(run_dir)[-1]["env_steps"]
        if fault in KILLED:
            _kill_children(run_dir, KILLED[fault], outcome, timeout=120 if on_ray else 60, launcher=launcher)
        else:
            everyone = fault == "drain"
            _stop_all(run_dir, proc, signal.SIGTERM if everyone else signal.SIGKILL, everyone, timeout=120)
            outcome.losses_at_stop = count_losses(run_dir, ledger, [])
            proc = _train(["--resume", str(run_dir)], env, out)
        proc.wait(max(1.0, deadline - time.monotonic()))
    except (subprocess.TimeoutExpired, TimeoutError, RuntimeError) as exc:
        outcome.problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        if proc.poll() is None:  # timed out: stop it in order, so the counts below are of a stopped run
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if ray_temp is not None:
            _remove_ray_instance(ray_temp)
    outcome.wall_s = time.monotonic() - start
    if on_ray:
        outcome.ray_components = {
            name: {"ray_name": c["ray_name"], "restarts": c["restarts"]}
            for name, c in read_components(run_dir).items()
        }
    rows = metrics_rows(run_dir)
    outcome.env_steps = rows[-1]["env_steps"] if rows else 0
    outcome.updates = rows[-1]["updates"] if rows else 0
    last_train = out.read_text(errors="replace").rsplit("run directory:", 1)[-1]
    reached = f"stopped (reached {steps} env steps)" in last_train
    outcome.completed = proc.returncode == 0 and reached and outcome.env_steps >= steps
    if not outcome.completed:
        outcome.problems.append(f"not completed: exit code {proc.returncode}, {outcome.env_steps} env steps")
    outcome.problems += check_counters(run_dir)
    learners = incarnations(run_dir / "logs" / "learner.log")
    outcome.learner_resumed_at = [inc.updates for inc in learners]
    if outcome.learner_checkpoint_at_kill is not None:
        restarted = learners[1] if len(learners) > 1 else None
        expected = outcome.learner_checkpoint_at_kill
        if restarted is None or not restarted.updates or restarted.updates != expected:
            outcome.problems.append(
                f"the restarted learner did not resume from its newest checkpoint "
                f"({outcome.learner_checkpoint_at_kill} updates): started at "
                f"{restarted.updates if restarted else None}"
            )
    for kill in outcome.shard_kills:
        if kill.checkpoint is not None and kill.restored_from != kill.checkpoint:
            outcome.problems.append(
                f"replay-{kill.index} restored {kill.restored_from}, "
                f"not its newest checkpoint {kill.checkpoint}"
            )
    outcome.losses = count_losses(run_dir, ledger, outcome.shard_kills)
    if outcome.losses.lost > outcome.losses.lost_bound:
        outcome.problems.append(
            f"lost {outcome.losses.lost} transitions, more than the bound {outcome.losses.lost_bound}"
        )
    return outcome


def results_of(outcomes: list[FaultOutcome]) -> list[Result]:
    results = []
    for o in outcomes:
        name = f"chaos/{o.fault}" if o.launcher == "local" else f"chaos/{o.launcher}/{o.fault}"
        results += [
            Result(f"{name}/completed", float(o.completed), "1 = reached total_env_steps"),
            Result(f"{name}/lost", float(o.losses.lost), "transitions"),
            Result(f"{name}/lost_bound", float(o.losses.lost_bound), "transitions"),
        ]
    return results


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="local",
        help="local: subprocesses (pids.json); ray: Ray actors on a Ray instance started here",
    )
    p.add_argument(
        "--faults",
        help=f"comma-separated; local: from {list(FAULTS)} (default: all); "
        f"ray: from {list(RAY_FAULTS)} (default: {','.join(RAY_DEFAULT_FAULTS)})",
    )
    p.add_argument("--run-root", type=Path, help="keep the runs here (default: a temporary directory)")
    args = p.parse_args(argv)
    allowed = FAULTS if args.launcher == "local" else RAY_FAULTS
    default = FAULTS if args.launcher == "local" else RAY_DEFAULT_FAULTS
    faults = args.faults.split(",") if args.faults else list(default)
    unknown = [f for f in faults if f not in allowed]
    if unknown:
        p.error(f"unknown faults {unknown} for the {args.launcher} launcher (faults: {', '.join(allowed)})")
    steps = QUICK_STEPS if args.quick else FULL_STEPS
    config: dict[str, Any] = {
        "config": str(CONFIG.relative_to(ROOT)),
        "overrides": run_overrides(steps, args.quick),
        "quick": args.quick,
        "runs": {},
    }
    if args.launcher == "ray":
        config["launcher"] = "ray"
        config["ray_overrides"] = ray_overrides(Path("/tmp/chaos-rt-XXXX"))
    outcomes: list[FaultOutcome] = []
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        root = args.run_root or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for fault in faults:  # one at a time: each run takes the machine
            print(f"{fault}: {steps} env steps ...", flush=True)
            outcome = run_fault(fault, root, args.quick, launcher=args.launcher)
            outcomes.append(outcome)
            config["runs"][fault] = outcome.as_json()
            losses = outcome.losses
            print(
                f"  completed {outcome.completed} at {outcome.env_steps} env steps in {outcome.wall_s:.0f}s; "
                f"acked {losses.acked}, stored {losses.stored} ({losses.stored_unacked} never acked), "
                f"lost {losses.lost} (bound {losses.lost_bound})",
                flush=True,
            )
            for problem in outcome.problems:
                print(f"  PROBLEM: {problem}", flush=True)
            write_json(args.json, "chaos", config, results_of(outcomes))
    where = "" if args.launcher == "local" else " on Ray"
    print_table(
        results_of(outcomes), f"chaos: kill -9 during real runs{where} (lost: acked transitions replay lost)"
    )
    return 1 if any(o.problems for o in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
