"""Datasets in Zarr: demonstrations and replay checkpoints share one layout.

    with DemoWriter("demos.zarr", DatasetInfo(env=EnvConfig(id="gym:Hopper-v5"))) as writer:
        writer.append_episode({"obs": ..., "action": ..., "reward": ..., "terminated": ..., "truncated": ...})
    ds = open_dataset("demos.zarr")  # validated; ds.episode(i), ds.sample(256, rng), ds.as_transitions()

Importers (`distrl.data.importers.*`) convert robomimic/MimicGen, D4RL, Minari and LeRobot
datasets; `distrl demos import|inspect` is the command line. Names below resolve on first use
(PEP 562), so importing `distrl.data.layout` (the replay checkpoints do) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distrl.data.format import Dataset, DatasetError, DatasetInfo, DatasetSource, DemoWriter, open_dataset

__all__ = ["Dataset", "DatasetError", "DatasetInfo", "DatasetSource", "DemoWriter", "open_dataset"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("distrl.data.format"), name)
    raise AttributeError(f"module 'distrl.data' has no attribute {name!r}")
