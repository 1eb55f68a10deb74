"""Fuzzing every server's decode path, the long run of tests/test_fuzz.py.

    python benchmarks/fuzz.py --json benchmarks/results/fuzz.json        # 2000 examples a target
    python benchmarks/fuzz.py --examples 500 --targets insert,publish --seed 7
    python benchmarks/fuzz.py --quick                                    # 100 examples a target

The same servers (tests/fuzz_servers.py: a replay shard, a params server and a coordinator in
a process of their own, real gRPC on loopback), strategies (tests/fuzz_strategies.py) and
properties (tests/fuzz_targets.py) as the test, with more examples and a new seed on every run
(printed, and saved in the JSON; `--seed` repeats a run). Half of each target's examples are
random messages, half mutated valid ones. Every property is judged on every example, but a
broken one does not stop the run: it is counted and its first examples are printed and saved.

Reported per target (fuzz/<target>/...): examples run, accepted, refused by status code,
crashes (the server process died; it is restarted), property violations (must be 0), and the
server process's RSS at the target's start and end and its peak so far (VmHWM). The run exits
1 when any example broke a property.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
os.environ.setdefault("MUJOCO_GL", "disable")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from common import Result, parser, print_table, write_json  # noqa: E402
from fuzz_servers import FuzzServers  # noqa: E402
from fuzz_strategies import MUTATED, RANDOM  # noqa: E402
from fuzz_targets import RSS_BOUND_BYTES, FuzzRun, Outcome, ServersDied, Tally, fuzz  # noqa: E402

TARGETS = ("insert", "priorities", "publish", "report")
_PROGRESS_EVERY = 100
_KEPT_PROBLEMS = 20
MIB = 1024 * 1024


class Progress:
    """A line every `_PROGRESS_EVERY` examples: where the run is and what it has seen."""

    def __init__(self, target: str, kind: str, total: int, tally: Tally, servers: FuzzServers) -> None:
        self.target, self.kind, self.total, self.tally, self.servers = target, kind, total, tally, servers
        self.start = time.perf_counter()
        self.done = 0

    def __call__(self, outcome: Outcome) -> None:
        self.done += 1
        if self.done % _PROGRESS_EVERY and self.done != self.total:
            return
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        rss = self.servers.memory().rss // MIB if self.servers.alive() else 0
        tally = self.tally
        print(
            f"  {self.target:<10} {self.kind:<7} {self.done:>6}/{self.total}  (target so far: accepted "
            f"{tally.accepted}, refused {sum(tally.refused.values())}, problems {len(tally.problems)})  "
            f"server RSS {rss} MiB  {rate:.0f} examples/s",
            flush=True,
        )


def fuzz_target(
    target: str, examples: int, seed: int, servers: FuzzServers
) -> tuple[Tally, int, FuzzServers]:
    """Half random, half mutated examples; returns the tally, the crashes and the (maybe new) servers."""
    tally = Tally()
    crashes = 0
    for kind, strategies in (("random", RANDOM), ("mutated", MUTATED)):
        count = examples // 2 if kind == "random" else examples - examples // 2
        while count > 0:
            run = FuzzRun(servers)
            before = tally.examples
            try:
                progress = Progress(target, kind, count, tally, servers)
                fuzz(
                    run, target, strategies[target](), count, tally,
                    seed=seed + crashes, fail_fast=False, on_example=progress,
                )  # fmt: skip
                count = 0
            except ServersDied as exc:  # counted in the tally's problems; go on with fresh servers
                crashes += 1
                print(f"  {target} {kind}: the server process died: {str(exc)[-500:]}", flush=True)
                count -= tally.examples - before
                servers.stop()
                servers = FuzzServers()
            finally:
                run.close()
    return tally, crashes, servers


def results_of(target: str, tally: Tally, crashes: int, start: int, end: int, peak: int) -> list[Result]:
    name = f"fuzz/{target}"
    out = [
        Result(f"{name}/examples", tally.examples, "examples"),
        Result(f"{name}/accepted", tally.accepted, "examples"),
        *(Result(f"{name}/refused/{code}", n, "examples") for code, n in sorted(tally.refused.items())),
        Result(f"{name}/crashes", crashes, "server process deaths"),
        Result(f"{name}/violations", len(tally.problems), "examples that broke a property"),
        Result(f"{name}/rss_start", start / MIB, "MiB"),
        Result(f"{name}/rss_end", end / MIB, "MiB"),
        Result(f"{name}/rss_max", peak / MIB, "MiB (VmHWM so far)"),
    ]
    return out


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--examples", type=int, default=2000, help="examples per target (half random, half mutated)"
    )
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    p.add_argument("--seed", type=int, help="hypothesis seed (default: a new one, printed)")
    args = p.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        p.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
    examples = 100 if args.quick else args.examples
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"fuzzing {', '.join(targets)}: {examples} examples each, seed {seed}", flush=True)

    servers = FuzzServers()
    results: list[Result] = []
    problems: dict[str, list[str]] = {}
    started = time.perf_counter()
    try:
        for target in targets:
            start = servers.memory().rss
            tally, crashes, servers = fuzz_target(target, examples, seed, servers)
            memory = servers.memory()
            results += results_of(target, tally, crashes, start, memory.rss, memory.peak)
            problems[target] = tally.problems[:_KEPT_PROBLEMS]
    finally:
        servers.stop()
    elapsed = time.perf_counter() - started

    print_table(results, title=f"fuzz: {examples} examples a target, seed {seed}, {elapsed:.0f} s")
    for target, found in problems.items():
        for problem in found:
            print(f"  {target}: {problem[:500]}")
    config = {
        "examples_per_target": examples,
        "targets": targets,
        "seed": seed,
        "rss_bound_mib": RSS_BOUND_BYTES // MIB,
        "seconds": round(elapsed, 1),
    }
    doc = write_json(None, "fuzz", config, results)
    if args.json is not None:
        doc["problems"] = problems
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    if any(problems.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
