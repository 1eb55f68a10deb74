"""Algorithms: pure PyTorch, no I/O. System code reaches them only through this registry.

    spec = SpaceSpec(obs_dim=17, action_dim=6)
    fields = transition_fields("sac", spec, {})                            # what its transitions hold
    algo = make_algorithm("sac", spec, {"utd_ratio": 2}, device="auto")   # a learner's view
    policy = make_policy("sac", spec, {})                                  # an actor's view (CPU)
    policy.load_params("policy", algo.params("policy"))

Each algorithm registers a config model, its transition fields, a learner builder and a policy
builder under its name (`register_algorithm`); the contract is in `distrl.algos.base`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

from distrl.algos import dsrl, sac, sac_lag, safety, xqc
from distrl.algos.base import (
    DEMO_FLAG,
    POLICY_PARAMS,
    STEPS_FIELD,
    Algorithm,
    BasePolicy,
    BatchError,
    ParamSetSpec,
    Policy,
    PolicyStep,
    SpaceSpec,
    TransitionField,
    base_fields,
    check_batch,
    check_fields,
    demo_flag_field,
    resolve_device,
)

# The config entry any algorithm takes: a KBSE shield around its policy (see distrl.algos.safety).
SHIELD_KEY = "shield"


class AlgorithmConfigError(ValueError):
    """An algorithm name or config value that cannot be used; the message names the key."""


@dataclass(frozen=True)
class AlgorithmEntry:
    """What an algorithm registers: its config model, its transition fields, and how to build its
    learner and its policy. `transition_fields` defaults to `base_fields` (one env action per step)."""

    config_type: type[BaseModel]
    make_learner: Callable[[SpaceSpec, Any, torch.device], Algorithm]
    make_policy: Callable[[SpaceSpec, Any], Policy]
    transition_fields: Callable[[SpaceSpec, Any], Sequence[TransitionField]] | None = None


_REGISTRY: dict[str, AlgorithmEntry] = {}


def register_algorithm(name: str, entry: AlgorithmEntry) -> None:
    """Make `name` usable as `algo.name`; registering a taken name raises (see `unregister_algorithm`)."""
    if name in _REGISTRY:
        raise ValueError(f"algorithm {name!r} is already registered")
    _REGISTRY[name] = entry


def unregister_algorithm(name: str) -> None:
    """Forget a registered algorithm (tests and plugins that register their own)."""
    _REGISTRY.pop(name, None)


def available_algorithms() -> list[str]:
    return sorted(_REGISTRY)


def _entry(name: str) -> AlgorithmEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise AlgorithmConfigError(f"unknown algorithm {name!r}; known: {available_algorithms()}") from None


def _validate(model: type[BaseModel], raw: Mapping[str, Any], what: str, prefix: str = "") -> BaseModel:
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = prefix + (".".join(str(part) for part in error["loc"]) or "(config)")
            if error["type"] == "extra_forbidden":
                known = ", ".join(model.model_fields)
                problems.append(f"unknown key {key!r} (known keys: {known})")
            else:
                problems.append(f"{key}: {error['msg']} (got {error.get('input')!r})")
        raise AlgorithmConfigError(f"invalid {what} config: " + "; ".join(problems)) from None


def _split_shield(
    name: str, raw: Mapping[str, Any] | BaseModel | None
) -> tuple[Mapping[str, Any] | BaseModel | None, safety.ShieldConfig | None]:
    """The algorithm's own config and its `shield:` section (validated), which any algorithm takes."""
    if not isinstance(raw, Mapping) or SHIELD_KEY not in raw:
        return raw, None
    rest = {key: value for key, value in raw.items() if key != SHIELD_KEY}
    shield = raw[SHIELD_KEY]
    if shield is None or isinstance(shield, safety.ShieldConfig):
        return rest, shield
    if not isinstance(shield, Mapping):
        raise AlgorithmConfigError(f"{name} config: shield must be a mapping, got {type(shield).__name__}")
    return rest, _validate(safety.ShieldConfig, shield, f"{name} shield", prefix="shield.")


def algorithm_config(name: str, raw: Mapping[str, Any] | BaseModel | None = None) -> BaseModel:
    """Validate a config for algorithm `name`; an unknown key or a bad value raises AlgorithmConfigError.

    A `shield:` entry is validated as a `ShieldConfig` and left out of the returned config."""
    entry = _entry(name)
    raw, _ = _split_shield(name, raw)
    if isinstance(raw, entry.config_type):
        return raw
    if isinstance(raw, BaseModel):
        raise AlgorithmConfigError(f"{name} needs a {entry.config_type.__name__}, got {type(raw).__name__}")
    if raw is not None and not isinstance(raw, Mapping):
        raise AlgorithmConfigError(f"{name} config must be a mapping, got {type(raw).__name__}")
    return _validate(entry.config_type, raw or {}, name)


def make_algorithm(
    name: str,
    spec: SpaceSpec,
    config: Mapping[str, Any] | BaseModel | None = None,
    device: str | torch.device = "auto",
) -> Algorithm:
    """The learner side of algorithm `name`; `device="auto"` picks CUDA when available, else the CPU.
    With a `shield:` entry, the learner also fits and publishes a KBSE barrier."""
    entry = _entry(name)
    raw, shield = _split_shield(name, config)
    learner = entry.make_learner(spec, algorithm_config(name, raw), resolve_device(device))
    if shield is None:
        return learner
    safety.check_shieldable(spec, _own_fields(name, spec, raw))
    return safety.ShieldedLearner(learner, spec, shield)


def make_policy(name: str, spec: SpaceSpec, config: Mapping[str, Any] | BaseModel | None = None) -> Policy:
    """The actor side of algorithm `name`: a CPU inference policy, parameters from `load_params`.
    With a `shield:` entry, its decisions pass the KBSE check before they are executed."""
    entry = _entry(name)
    raw, shield = _split_shield(name, config)
    policy = entry.make_policy(spec, algorithm_config(name, raw))
    if shield is None:
        return policy
    safety.check_shieldable(spec, _own_fields(name, spec, raw))
    return safety.ShieldedPolicy(policy, spec, shield)


def _own_fields(
    name: str, spec: SpaceSpec, raw: Mapping[str, Any] | BaseModel | None
) -> tuple[TransitionField, ...]:
    entry = _entry(name)
    if entry.transition_fields is None:
        return base_fields(spec)
    return check_fields(entry.transition_fields(spec, algorithm_config(name, raw)))


def transition_fields(
    name: str, spec: SpaceSpec, config: Mapping[str, Any] | BaseModel | None = None
) -> tuple[TransitionField, ...]:
    """The fields of algorithm `name`'s transitions for an env of `spec`: what actors send,
    replay stores, demo tables load and the learner moves to its device (with a shield's)."""
    raw, shield = _split_shield(name, config)
    fields = _own_fields(name, spec, raw)
    return fields if shield is None else safety.shield_fields(spec, fields)


register_algorithm(
    "sac",
    AlgorithmEntry(config_type=sac.SACConfig, make_learner=sac.make_learner, make_policy=sac.make_policy),
)
register_algorithm(
    "sac_lag",
    AlgorithmEntry(
        config_type=sac_lag.SACLagConfig,
        make_learner=sac_lag.make_learner,
        make_policy=sac_lag.make_policy,
        transition_fields=sac_lag.sac_lag_fields,
    ),
)
for _name, _config in (("xqc", xqc.XQCConfig), ("xqcfd", xqc.XQCfDConfig)):
    register_algorithm(
        _name,
        AlgorithmEntry(
            config_type=_config,
            make_learner=xqc.make_learner,
            make_policy=xqc.make_policy,
            transition_fields=xqc.xqc_fields,
        ),
    )
register_algorithm(
    "dsrl",
    AlgorithmEntry(
        config_type=dsrl.DSRLConfig,
        make_learner=dsrl.make_learner,
        make_policy=dsrl.make_policy,
        transition_fields=dsrl.dsrl_fields,
    ),
)

__all__ = [
    "DEMO_FLAG",
    "POLICY_PARAMS",
    "STEPS_FIELD",
    "Algorithm",
    "AlgorithmConfigError",
    "AlgorithmEntry",
    "BasePolicy",
    "BatchError",
    "ParamSetSpec",
    "Policy",
    "PolicyStep",
    "SpaceSpec",
    "TransitionField",
    "algorithm_config",
    "available_algorithms",
    "base_fields",
    "check_batch",
    "check_fields",
    "demo_flag_field",
    "make_algorithm",
    "make_policy",
    "register_algorithm",
    "resolve_device",
    "transition_fields",
    "unregister_algorithm",
]
