"""Parameter server: the latest policy weights, versioned, pushed to actors.

Learners `publish` a named set of tensors in < 4 MiB chunks; actors `subscribe`
and always hold the newest complete version. See `distrl.params.server` for the
protocol. Attributes load on first use so `distrl --help` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distrl.params.chunks import MAX_MESSAGE_BYTES, ChunkStreamError
    from distrl.params.client import (
        ParamsClient,
        ParamsInfo,
        ParamsSubscriptionError,
        ParamSubscription,
        ParamsVersion,
    )
    from distrl.params.server import ParamServer, RunningParamServer, start_params_server

_EXPORTS = {
    "MAX_MESSAGE_BYTES": "distrl.params.chunks",
    "ChunkStreamError": "distrl.params.chunks",
    "ParamsClient": "distrl.params.client",
    "ParamsInfo": "distrl.params.client",
    "ParamsSubscriptionError": "distrl.params.client",
    "ParamsVersion": "distrl.params.client",
    "ParamSubscription": "distrl.params.client",
    "ParamServer": "distrl.params.server",
    "RunningParamServer": "distrl.params.server",
    "start_params_server": "distrl.params.server",
}

__all__ = [
    "MAX_MESSAGE_BYTES",
    "ChunkStreamError",
    "ParamServer",
    "ParamSubscription",
    "ParamsClient",
    "ParamsInfo",
    "ParamsSubscriptionError",
    "ParamsVersion",
    "RunningParamServer",
    "start_params_server",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'distrl.params' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
