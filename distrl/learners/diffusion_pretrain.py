"""`distrl pretrain diffusion`: behaviour cloning of a diffusion policy on a Zarr demo store.

Reads the store's episodes as action chunks (`distrl.data.chunks`), normalises observations with
the store's statistics, trains with a progress bar and periodic checkpoints, then measures what
the result costs per decision and how often the plain policy (w ~ N(0, I)) succeeds on the
store's env. Writes `OUT/policy.safetensors` and `OUT/pretrain.json`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from pydantic import ValidationError

from distrl.algos import resolve_device
from distrl.algos.diffusion import (
    MODEL_FILE,
    DiffusionModel,
    DiffusionPolicy,
    DiffusionSpec,
    DiffusionTrainer,
    TrainConfig,
    save_model,
)
from distrl.data import DatasetError, open_dataset
from distrl.data.chunks import chunk_episodes

log = logging.getLogger(__name__)
SUMMARY_FILE = "pretrain.json"
_SIZED_BY_STORE = ("obs_dim", "action_dim")


class PretrainConfigError(ValueError):
    """An override that names no setting or has a bad value; the message lists the known keys."""


@dataclass
class PretrainResult:
    out: str
    demos: str
    episodes: int
    chunks: int
    steps: int
    seconds: float
    final_loss: float
    spec: dict[str, Any]
    train: dict[str, Any]
    device: str
    decision_ms: float
    denoiser_ms: float
    eval_env: str | None = None
    eval_episodes: int = 0
    eval_success_rate: float | None = None
    eval_return_mean: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)


def parse_overrides(items: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`key=value` strings -> (spec overrides, training overrides); values parse as YAML."""
    spec_keys = set(DiffusionSpec.model_fields) - set(_SIZED_BY_STORE)
    train_keys = set(TrainConfig.model_fields)
    spec, train = {}, {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise PretrainConfigError(f"override {item!r} is not key=value")
        value = yaml.safe_load(raw)
        if key in spec_keys:
            spec[key] = tuple(value) if isinstance(value, list) else value
        elif key in train_keys:
            train[key] = value
        else:
            raise PretrainConfigError(
                f"unknown setting {key!r}; model: {', '.join(sorted(spec_keys))}; "
                f"training: {', '.join(sorted(train_keys))}"
            )
    return spec, train


def decision_cost(model: DiffusionModel, repeats: int = 50) -> tuple[float, float]:
    """(ms per decision for one observation, ms per denoiser call) on the model's device."""
    spec = model.spec
    device = model.obs_mean.device
    obs = torch.zeros(1, spec.obs_dim, device=device)
    w = torch.zeros(1, spec.chunk, spec.action_dim, device=device)
    with torch.inference_mode():
        for _ in range(3):
            model.denoise(obs, w)
        start = time.perf_counter()
        for _ in range(repeats):
            model.denoise(obs, w)
        if device.type == "cuda":
            torch.cuda.synchronize()
        decision = (time.perf_counter() - start) / repeats
        start = time.perf_counter()
        for _ in range(repeats):
            model.denoiser(w, 0, obs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        call = (time.perf_counter() - start) / repeats
    return decision * 1e3, call * 1e3


def pretrain_diffusion(
    demos: Path,
    out: Path,
    overrides: Mapping[str, Any] | None = None,
    train_overrides: Mapping[str, Any] | None = None,
    eval_episodes: int = 10,
    device: str = "auto",
    checkpoint_every: int = 1000,
    progress: bool = True,
    seed: int = 0,
) -> PretrainResult:
    dataset = open_dataset(demos)
    try:
        spec_values = {"chunk": 4, **dict(overrides or {})}
        chunks = chunk_episodes(dataset, int(spec_values["chunk"]))
        obs, actions = chunks["obs"].astype(np.float32), chunks["action"].astype(np.float32)
        spec = DiffusionSpec(obs_dim=obs.shape[1], action_dim=actions.shape[2], **spec_values)
        train = TrainConfig(**{"seed": seed, **dict(train_overrides or {})})
    except ValidationError as exc:
        raise PretrainConfigError(f"invalid pretraining settings: {exc}") from None
    if not np.isfinite(obs).all() or not np.isfinite(actions).all():
        raise DatasetError(f"{demos}: the demos hold NaN or infinite observations or actions")
    outside = float(np.mean(np.abs(actions) > 1.0 + 1e-6))
    if outside > 0:
        log.warning("%.1f%% of demo actions lie outside [-1, 1]; they are clipped", 100 * outside)
        actions = np.clip(actions, -1.0, 1.0)

    torch.manual_seed(seed)
    resolved = resolve_device(device)
    trainer = DiffusionTrainer(DiffusionModel(spec), train, resolved)
    trainer.fit_stats(obs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"demos": str(demos), "env": dataset.info.env_id, "spec": spec.model_dump(mode="json")}
    losses: list[tuple[int, float]] = []
    start = time.perf_counter()
    bar = _Bar(f"pretrain diffusion ({len(obs):,} chunks)", train.steps, progress)
    recent: list[float] = []
    try:
        for step in range(1, train.steps + 1):
            recent.append(trainer.step(obs, actions))
            if step % 100 == 0 or step == train.steps:
                mean = float(np.mean(recent))
                losses.append((step, mean))
                recent.clear()
                bar.update(step, mean)
            if checkpoint_every and step % checkpoint_every == 0 and step < train.steps:
                save_model(trainer.result(), out, {**info, "steps": step})
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    model = trainer.result()
    save_model(model, out, {**info, "steps": train.steps})
    decision_ms, denoiser_ms = decision_cost(model)
    result = PretrainResult(
        out=str(out / MODEL_FILE),
        demos=str(demos),
        episodes=dataset.episodes,
        chunks=len(obs),
        steps=train.steps,
        seconds=seconds,
        final_loss=losses[-1][1] if losses else float("nan"),
        spec=spec.model_dump(mode="json"),
        train=train.model_dump(mode="json"),
        device=str(resolved),
        decision_ms=decision_ms,
        denoiser_ms=denoiser_ms,
        losses=losses,
    )
    env = dataset.info.env
    if eval_episodes > 0 and env is None:
        log.warning("%s records no env: skipping the evaluation", demos)
    elif eval_episodes > 0:
        from distrl.actors.evaluator import evaluate

        evaluation = evaluate(DiffusionPolicy(model, seed=seed), env, eval_episodes, seed=seed)
        result.eval_env = env.id
        result.eval_episodes = evaluation.episodes
        result.eval_success_rate = evaluation.success_rate
        result.eval_return_mean = evaluation.return_mean
    (out / SUMMARY_FILE).write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


class _Bar:
    """A rich progress bar on stderr with the running loss (nothing when off)."""

    def __init__(self, title: str, total: int, enabled: bool) -> None:
        self._bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = self._bar.add_task(title, total=total, loss="-")
        self._bar.start()

    def update(self, step: int, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=f"{loss:.4f}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
