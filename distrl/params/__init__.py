"""Parameter server: named parameter sets, each versioned, pushed to actors.

Learners `publish` versions of named sets of tensors ("policy", a frozen "base",
a shield's "barrier"; DEFAULT_PARAM_SET when none is named) in < 4 MiB chunks;
actors `subscribe` to the sets they need and always hold the newest complete
version of each. See `distrl.params.server` for the protocol. Attributes load on
first use so `distrl --help` stays fast.
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
    from distrl.params.names import DEFAULT_PARAM_SET, UPDATES_KEY
    from distrl.params.server import ParamServer, RunningParamServer, start_params_server

_EXPORTS = {
    "MAX_MESSAGE_BYTES": "distrl.params.chunks",
    "ChunkStreamError": "distrl.params.chunks",
    "DEFAULT_PARAM_SET": "distrl.params.names",
    "UPDATES_KEY": "distrl.params.names",
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
    "DEFAULT_PARAM_SET",
    "MAX_MESSAGE_BYTES",
    "UPDATES_KEY",
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
