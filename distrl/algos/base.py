"""The algorithm contract: what an algorithm declares, what a learner holds, what an actor holds.

System code (actors, replay, learners, evaluation, demo collection) reaches every algorithm
through these declarations and protocols and never branches on an algorithm's name:

- *its transitions* (`TransitionField`s, from `transition_fields` of the registry): the columns
  actors send, replay tables store, demo tables load and the learner moves to its device;
- *its policy* (`Policy`, runs on actors on the CPU): one `PolicyStep` per decision (an env
  action, or a chunk of k executed open loop, plus named extras stored with the transition),
  `reset(mask)` at episode ends, its own warm-up step, and the parameter sets it loads;
- *its learner* (`Algorithm`): `update`, batches per update, optional pretraining on demos,
  priorities, the parameter sets it publishes, `state_dict()` for checkpoints.

Everything here is pure PyTorch/numpy: no I/O.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

# The parameter set every policy loads: the weights the learner keeps training.
POLICY_PARAMS = "policy"
# Marks demonstration items in a batch or a replay table (1 = from a demo store).
DEMO_FLAG = "is_demo"
# Env steps a chunked decision executed (1..k); present only for chunked policies.
STEPS_FIELD = "env_steps"

_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class BatchError(ValueError):
    """A training batch with a missing key or a shape that does not match the algorithm's fields."""


@dataclass(frozen=True)
class SpaceSpec:
    """What an algorithm builds from: the env's sizes and side signals. Actions live in [-1, 1].

    `signals` names the per-step scalars the env reports in `info` (e.g. "cost"); each becomes a
    float32 transition field. `max_episode_steps` is the env's time limit, when it has one.
    """

    obs_dim: int
    action_dim: int
    signals: tuple[str, ...] = ()
    max_episode_steps: int | None = None

    def __post_init__(self) -> None:
        for name in ("obs_dim", "action_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"SpaceSpec.{name} must be a positive integer, got {value!r}")
        object.__setattr__(self, "signals", tuple(self.signals))
        for name in self.signals:
            if not isinstance(name, str) or not _FIELD_NAME.match(name):
                raise ValueError(f"SpaceSpec.signals: {name!r} is not a valid field name")


@dataclass(frozen=True)
class TransitionField:
    """One column of an algorithm's transitions: per-item dtype and shape (batch dim excluded).

    `fill` is the value written where nothing produces the field: actors fill columns that no
    env, rollout or policy produces (the demo flag of online items), and stores written before
    the field existed load with it. Without a fill value a missing field is an error.
    """

    name: str
    dtype: str
    shape: tuple[int, ...] = ()
    fill: float | None = None

    def __post_init__(self) -> None:
        if not _FIELD_NAME.match(self.name):
            raise ValueError(f"transition field name {self.name!r} is not a valid identifier")
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def empty(self, n: int) -> np.ndarray:
        """n items of this field set to `fill` (zeros without one)."""
        return np.full((n, *self.shape), 0 if self.fill is None else self.fill, dtype=self.dtype)

    def describe(self) -> str:
        return f"{self.name}: {self.dtype}{list(self.shape)}"


def base_fields(
    space: SpaceSpec, action_shape: Sequence[int] | None = None, chunk: int = 1
) -> tuple[TransitionField, ...]:
    """The fields every transition has: obs, action, reward, next_obs, terminated, truncated,
    one float32 field per env signal, and the executed step count of a chunked policy.

    `action_shape` is what the policy stores as its action (default: one env action); with
    `chunk` > 1 the reward and signals are sums over the executed steps and `env_steps` counts them.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    fields = [
        TransitionField("obs", "float32", (space.obs_dim,)),
        TransitionField("action", "float32", tuple(action_shape or (space.action_dim,))),
        TransitionField("reward", "float32"),
        TransitionField("next_obs", "float32", (space.obs_dim,)),
        TransitionField("terminated", "bool"),
        TransitionField("truncated", "bool"),
        *(TransitionField(name, "float32") for name in space.signals),
    ]
    if chunk > 1:
        fields.append(TransitionField(STEPS_FIELD, "int32", fill=1))
    return tuple(fields)


def demo_flag_field() -> TransitionField:
    """`is_demo`: 1 on items from a demo store, 0 (the fill) on the actors' own."""
    return TransitionField(DEMO_FLAG, "bool", fill=0)


def check_fields(fields: Sequence[TransitionField]) -> tuple[TransitionField, ...]:
    """Unique names, and the base fields present; returns the fields as a tuple."""
    names = [f.name for f in fields]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"transition fields declared twice: {dupes}")
    missing = [
        n for n in ("obs", "action", "reward", "next_obs", "terminated", "truncated") if n not in names
    ]
    if missing:
        raise ValueError(f"transition fields must include {missing}")
    return tuple(fields)


# --------------------------------------------------------------------------------------------
# The actor side


@dataclass(frozen=True)
class PolicyStep:
    """One decision for a batch of B envs.

    `env_actions` is [B, action_dim], or [B, k, action_dim] for a chunk of k actions the actor
    executes open loop. `extras` are [B, ...] arrays stored with the transition under their
    names; an `action` entry is what the transition stores as its action (a latent, say),
    otherwise the executed env action(s) are stored.
    """

    env_actions: np.ndarray
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def chunk(self) -> int:
        return 1 if self.env_actions.ndim == 2 else int(self.env_actions.shape[1])

    def stored_action(self) -> np.ndarray:
        return np.asarray(self.extras["action"]) if "action" in self.extras else self.env_actions


@runtime_checkable
class Policy(Protocol):
    """What an actor holds: a CPU, inference-only policy fed the parameter sets a learner publishes.

    `param_sets` names the sets it loads (`"policy"` first); the actor waits for every set in
    `required_params` before its first step (a frozen base model, say).
    """

    param_sets: tuple[str, ...]
    required_params: tuple[str, ...]
    # Extras the rollout sums over each episode and reports as `episode_<name>` (a shield's
    # interventions, say), like the env's signals.
    episode_sums: tuple[str, ...]

    def act(self, obs: np.ndarray, deterministic: bool = False) -> PolicyStep:
        """[B, obs_dim] float32 observations -> one decision per env."""
        ...

    def warmup(self, obs: np.ndarray, rng: np.random.Generator) -> PolicyStep:
        """The decision of the warm-up phase, before the learner has updated (random exploration)."""
        ...

    def reset(self, mask: np.ndarray) -> None:
        """[B] bool: these envs start a new episode with the next decision."""
        ...

    def observe(self, reward: np.ndarray, ended: np.ndarray) -> None:
        """After each decision: its [B] rewards (summed over a chunk) and which episodes ended, so a
        policy can keep per-env statistics of the stream (a discounted return, say) for its extras."""
        ...

    def load_params(self, param_set: str, tensors: Mapping[str, np.ndarray]) -> None:
        """Replace one parameter set with tensors a learner published; refuse bad ones whole."""
        ...


class BasePolicy:
    """Defaults for a single-step policy over the env's actions: uniform warm-up in [-1, 1],
    nothing to reset, the "policy" set only. Subclasses implement `act` and `load_params`."""

    param_sets: tuple[str, ...] = (POLICY_PARAMS,)
    required_params: tuple[str, ...] = ()
    episode_sums: tuple[str, ...] = ()

    def __init__(self, space: SpaceSpec) -> None:
        self.space = space

    def act(self, obs: np.ndarray, deterministic: bool = False) -> PolicyStep:
        raise NotImplementedError

    def warmup(self, obs: np.ndarray, rng: np.random.Generator) -> PolicyStep:
        actions = rng.uniform(-1.0, 1.0, size=(len(obs), self.space.action_dim)).astype(np.float32)
        return PolicyStep(actions)

    def reset(self, mask: np.ndarray) -> None:
        pass

    def observe(self, reward: np.ndarray, ended: np.ndarray) -> None:
        pass

    def load_params(self, param_set: str, tensors: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def check_obs(self, obs: np.ndarray) -> tuple[np.ndarray, bool]:
        """obs as float32 [B, obs_dim], and whether it came in as one [obs_dim] vector."""
        array = np.asarray(obs, dtype=np.float32)
        if array.ndim not in (1, 2) or array.shape[-1] != self.space.obs_dim:
            raise ValueError(
                f"obs has shape {array.shape}, expected [B, {self.space.obs_dim}] or [{self.space.obs_dim}]"
            )
        return (array[None] if array.ndim == 1 else array), array.ndim == 1


def check_param_tensors(
    what: str, tensors: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """float32 tensors of a parameter set checked against the expected names and shapes.

    Raises ValueError naming a missing, unexpected, misshapen or non-finite tensor, so a refused
    set leaves the old parameters whole.
    """
    names, expected = set(tensors), set(shapes)
    if names != expected:
        raise ValueError(
            f"{what} do not match: missing {sorted(expected - names)}, unexpected {sorted(names - expected)}"
        )
    out = {}
    for name, value in tensors.items():
        array = np.asarray(value)
        if array.shape != tuple(shapes[name]):
            raise ValueError(f"{what} {name!r} has shape {array.shape}, expected {tuple(shapes[name])}")
        if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
            raise ValueError(f"{what} {name!r} must hold finite floats (dtype {array.dtype})")
        out[name] = torch.tensor(array, dtype=torch.float32)
    return out


# --------------------------------------------------------------------------------------------
# The learner side


@dataclass(frozen=True)
class ParamSetSpec:
    """A parameter set a learner publishes to the actors.

    `every_updates`: None publishes it with the policy weights (`learner.publish_every`); N
    every N updates; 0 once, at the start (and again whenever the parameter server lost it).
    """

    name: str
    every_updates: int | None = None

    def __post_init__(self) -> None:
        if self.every_updates is not None and self.every_updates < 0:
            raise ValueError(f"ParamSetSpec {self.name!r}: every_updates must be >= 0 or None")


@runtime_checkable
class Algorithm(Protocol):
    """What a learner holds: networks, optimizers and the update rule.

    `batches_per_update`: one `update` consumes this many learner batches (the update-to-data
    ratio). `can_pretrain`: `pretrain_step` is implemented (behaviour cloning on demos).
    """

    device: torch.device
    batches_per_update: int
    can_pretrain: bool

    def update(
        self, batch: Mapping[str, torch.Tensor], demo_batch: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, float]:
        """One learner step on batches already on `device`; returns float metrics."""
        ...

    def priorities(self) -> torch.Tensor | None:
        """Per-item priorities of the last update's online items (for prioritized replay), or None."""
        ...

    def pretrain_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """One pretraining step on a demo batch (only when `can_pretrain`)."""
        ...

    def param_sets(self) -> tuple[ParamSetSpec, ...]:
        """The parameter sets this learner publishes ("policy" among them)."""
        ...

    def params(self, param_set: str) -> dict[str, np.ndarray]:
        """float32 numpy copies of one parameter set, as a `Policy.load_params` takes it."""
        ...

    def make_policy(self) -> Policy:
        """A CPU policy holding every current parameter set."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Networks, targets, optimizers, temperature and counters, for checkpoints."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore everything `state_dict()` saved."""
        ...


# --------------------------------------------------------------------------------------------
# Helpers for algorithms


def resolve_device(device: str | torch.device) -> torch.device:
    """`"auto"` picks CUDA when present, else the CPU; anything else must name an available device."""
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"unknown device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for CUDA but torch.cuda.is_available() is False")
    return resolved


# Keys every update batch needs; `truncated` never changes an update (only `terminated` cuts the
# bootstrap) and `weights` (importance weights) come from prioritized replay, so both are optional.
REQUIRED_BATCH_KEYS: tuple[str, ...] = ("obs", "action", "reward", "next_obs", "terminated")


def check_batch(
    batch: Mapping[str, torch.Tensor],
    fields: Sequence[TransitionField],
    device: torch.device | None = None,
    name: str = "batch",
    required: Sequence[str] = REQUIRED_BATCH_KEYS,
) -> int:
    """Check keys, shapes, dtypes and device of a training batch against declared fields; returns B.

    Every `required` key must be present; every present declared field (and `weights`) must have
    shape [B, *field.shape], float32 where the field is a float. Raises BatchError naming the key.
    Costs a few microseconds: no data is read.
    """
    missing = [key for key in required if key not in batch]
    if missing:
        raise BatchError(f"{name} is missing {missing}; a batch needs {list(required)}")
    reward = batch["reward"]
    if not isinstance(reward, torch.Tensor) or reward.dim() != 1 or reward.shape[0] < 1:
        shape = tuple(reward.shape) if isinstance(reward, torch.Tensor) else type(reward).__name__
        raise BatchError(f"{name}['reward'] must be a non-empty 1-D tensor [B], got {shape}")
    size = reward.shape[0]
    expected = {f.name: ((size, *f.shape), f.np_dtype.kind == "f") for f in fields}
    expected["weights"] = ((size,), True)
    for key, (shape, is_float) in expected.items():
        if key not in batch:
            continue
        tensor = batch[key]
        if not isinstance(tensor, torch.Tensor):
            raise BatchError(f"{name}[{key!r}] must be a torch.Tensor, got {type(tensor).__name__}")
        if tuple(tensor.shape) != shape:
            raise BatchError(
                f"{name}[{key!r}] has shape {tuple(tensor.shape)}, expected {shape} (B from reward)"
            )
        if is_float and tensor.dtype != torch.float32:
            raise BatchError(f"{name}[{key!r}] has dtype {tensor.dtype}, expected torch.float32")
        if device is not None and tensor.device != device:
            raise BatchError(f"{name}[{key!r}] is on {tensor.device}, the algorithm runs on {device}")
    return size


def learner_state(
    modules: Mapping[str, torch.nn.Module | torch.optim.Optimizer],
    parameters: Mapping[str, torch.Tensor] | None = None,
    counters: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """A learner's checkpoint state: each module's and optimizer's state_dict, detached copies of
    loose parameters (a temperature), and integer counters."""
    state: dict[str, Any] = {name: module.state_dict() for name, module in modules.items()}
    state.update({name: p.detach().clone() for name, p in (parameters or {}).items()})
    state["counters"] = dict(counters or {})
    return state


def load_learner_state(
    what: str,
    state: Mapping[str, Any],
    modules: Mapping[str, torch.nn.Module | torch.optim.Optimizer],
    parameters: Mapping[str, torch.Tensor] | None = None,
    optional: Sequence[str] = (),
) -> dict[str, int]:
    """Restore what `learner_state` saved; returns the counters. A missing entry (not in
    `optional`) raises KeyError naming it, before anything is changed."""
    parameters = parameters or {}
    missing = sorted((set(modules) | set(parameters)) - set(optional) - set(state))
    if missing:
        raise KeyError(f"{what} state is missing {missing}")
    for name, module in modules.items():
        if name not in state:
            continue
        if isinstance(module, torch.optim.Optimizer):
            # Optimizer.load_state_dict keeps same-device state tensors by reference: copy them, so a
            # learner restored from another's live state_dict() never shares its Adam moments.
            module.load_state_dict(copy.deepcopy(state[name]))
        else:
            module.load_state_dict(state[name])
    with torch.no_grad():
        for name, p in parameters.items():
            if name in state:
                p.copy_(torch.as_tensor(state[name]))
    return {str(k): int(v) for k, v in state.get("counters", {}).items()}
