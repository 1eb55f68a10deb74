"""A diffusion policy on disk: one safetensors file (weights, obs statistics and the spec), no pickle.

`distrl pretrain diffusion --out DIR` writes `DIR/policy.safetensors` (and `DIR/pretrain.json`,
what the run measured); `load_model(DIR)` or `load_model(DIR/policy.safetensors)` reads it back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from distrl.algos.diffusion.model import DiffusionModel, DiffusionModelError

MODEL_FILE = "policy.safetensors"
FORMAT = "distrl.diffusion_policy/1"


def model_file(path: str | Path) -> Path:
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() or not path.suffix else path


def save_model(model: DiffusionModel, path: str | Path, info: Mapping[str, Any] | None = None) -> Path:
    """Write the model atomically (a temporary file, then a rename); returns the file written."""
    target = model_file(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": FORMAT, "info": json.dumps(dict(info or {}))}
    tmp = target.with_suffix(".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in model.tensors().items()}, str(tmp), metadata=metadata)
    os.replace(tmp, target)
    return target


def load_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a saved model; a missing, corrupt or foreign file raises DiffusionModelError."""
    target = model_file(path)
    if not target.exists():
        raise DiffusionModelError(
            f"no diffusion policy at {path} (looked for {target}); make one with `distrl pretrain diffusion`"
        )
    try:
        from safetensors import safe_open

        with safe_open(str(target), framework="numpy") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(target))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DiffusionModelError(f"{target} is not a readable safetensors file: {exc}") from None
    if metadata.get("format") != FORMAT:
        raise DiffusionModelError(
            f"{target} is not a distrl diffusion policy (format {metadata.get('format')!r})"
        )
    return tensors


def load_model(path: str | Path) -> DiffusionModel:
    """A frozen (eval, no grad) model from `save_model`'s file or its directory."""
    return DiffusionModel.from_tensors(load_tensors(path), what=str(model_file(path)))
