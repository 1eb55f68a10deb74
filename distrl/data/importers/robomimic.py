"""robomimic / MimicGen HDF5 -> a distrl demonstration dataset.

Source layout: `data/demo_<i>/{obs/<key>, next_obs/<key>, actions, rewards, dones, states}`
(demo attrs `num_samples`, `model_file`), `data` attrs `total` and `env_args` (JSON with
`env_name`, `type`, `env_kwargs`), and `mask/<filter>` listing demo names (`train`, `valid`).

`obs` is the chosen low-dim keys flattened in order (default: robomimic's low-dim set,
which is also the order `robosuite:` envs observe; see `distrl.envs.robosuite_envs`), so
policies trained on the import run in the env recorded in the `env` attribute. `dones`
become `terminated` (robomimic's TD learners treat them so); an episode's last step that
is not done is `truncated`. Rewards are robomimic's r(s'): with `reward` matching how the
file was made (`env_kwargs.reward_shaping`) they are copied; otherwise they are recomputed
by setting a robosuite env to each recorded state (needs `states` and robosuite).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

from distrl.data.format import DatasetInfo, DatasetSource, DemoWriter
from distrl.data.importers import (
    BUFFER_STEPS,
    ImportResult,
    SourceError,
    flat_steps,
    open_hdf5,
    staged_output,
    step_progress,
    timed,
)
from distrl.envs.config import EnvConfig, RobosuiteOptions

RewardKind = Literal["sparse", "dense"]
# robomimic's EnvType: 1 robosuite, 2 gym, 3 iGibson.
_ROBOSUITE_TYPE = 1
_DEMO = re.compile(r"^demo_(\d+)$")


def import_robomimic(
    src: str | Path,
    out: str | Path,
    *,
    obs_keys: Sequence[str] | None = None,
    raw_obs_keys: Sequence[str] = (),
    filter_key: str | None = None,
    reward: RewardKind = "sparse",
    overwrite: bool = False,
    progress: bool = True,
) -> ImportResult:
    """Import a robomimic/MimicGen HDF5 file; see the module doc."""
    if reward not in ("sparse", "dense"):
        raise SourceError(f"reward must be 'sparse' or 'dense', got {reward!r}")
    src = Path(src)
    start = time.perf_counter()
    with open_hdf5(src) as f:
        if "data" not in f:
            raise SourceError(f"{src}: no 'data' group; not a robomimic file (expected data/demo_<i>)")
        data = f["data"]
        env_args = _env_args(data, src)
        demos = _demo_names(f, data, filter_key, src)
        available = list(data[demos[0]]["obs"].keys()) if "obs" in data[demos[0]] else []
        defaults = default_obs_keys(available, env_args)
        keys = list(obs_keys) if obs_keys else defaults
        if not keys:
            raise SourceError(
                f"{src}: found none of robomimic's low-dim keys (robot*_eef_pos, ..., object); "
                f"choose observation keys from: {', '.join(available)}"
            )
        for key in [*keys, *raw_obs_keys]:
            if key not in available:
                raise SourceError(f"{src}: no observation key {key!r}; available: {', '.join(available)}")
        shaped_file = bool(env_args.get("env_kwargs", {}).get("reward_shaping", False))
        replay = reward != ("dense" if shaped_file else "sparse")
        checked, dims, has_next = _check_demos(data, demos, keys, raw_obs_keys, replay, src)
        env = env_config_from_env_args(env_args, keys, defaults, reward, src)
        action_dim = checked[0].datasets["actions"].shape[1]
        info = DatasetInfo(
            env=env,
            obs_keys=keys,
            obs_key_dims=dims,
            # robosuite (and robomimic) actions are normalised to [-1, 1]
            action_low=[-1.0] * action_dim if env is not None else None,
            action_high=[1.0] * action_dim if env is not None else None,
            source=DatasetSource(
                "robomimic",
                str(src.resolve()),
                {
                    "filter_key": filter_key,
                    "reward": reward,
                    "reward_recomputed": replay,
                    "raw_obs_keys": list(raw_obs_keys),
                    "env_args": env_args,
                },
            ),
        )
        if replay and env is None:
            raise SourceError(f"{src}: {reward} rewards need a robosuite env_args to replay states in")
        with (
            _StateReplay(env, shaped=reward == "dense") if replay and env else nullcontext() as rewarder,
            staged_output(out, overwrite) as stage,
            DemoWriter(stage, info, buffer_steps=BUFFER_STEPS, label=str(src)) as writer,
            step_progress(f"robomimic {src.name}", sum(d.length for d in checked), progress) as advance,
        ):
            for demo in checked:
                where = f"{src}: {demo.name}"
                episode = _episode(demo, keys, raw_obs_keys, has_next, where)
                if rewarder is not None:
                    episode["reward"], episode["success"] = rewarder.episode(
                        demo.datasets["states"][()], episode["action"], where
                    )
                elif not shaped_file:
                    episode["success"] = episode["reward"] > 0  # sparse: the task reward is success
                writer.append_episode(episode)
                advance(len(episode["action"]))
            episodes, steps = writer.episodes, writer.steps
    return ImportResult(Path(out), episodes, steps, timed(start))


def default_obs_keys(available: Sequence[str], env_args: dict[str, Any]) -> list[str]:
    """robomimic's low-dim keys in the order `robosuite:` envs flatten them."""
    from distrl.envs.robosuite_envs import default_obs_keys as robosuite_default

    robots = env_args.get("env_kwargs", {}).get("robots")
    if isinstance(robots, str):
        count = 1
    elif robots:
        count = len(robots)
    else:
        count = len({m.group(1) for k in available if (m := re.match(r"robot(\d+)_", k))})
    # robosuite lists a bimanual robot's right arm before its left; HDF5 keys come sorted.
    ordered = sorted(available, key=lambda k: "_left_" in k)
    objects = ["object"] if "object" in available else []
    return robosuite_default(ordered, count, objects)


def env_config_from_env_args(
    env_args: dict[str, Any],
    obs_keys: Sequence[str],
    default_keys: Sequence[str],
    reward: RewardKind,
    src: Path | str = "",
) -> EnvConfig | None:
    """The distrl env config (`robosuite:<env_name>`) matching robomimic's `env_args`."""
    if env_args.get("type", _ROBOSUITE_TYPE) != _ROBOSUITE_TYPE or not env_args.get("env_name"):
        return None
    kwargs = env_args.get("env_kwargs", {})
    options: dict[str, Any] = {"reward_shaping": reward == "dense"}
    robots = kwargs.get("robots")
    if isinstance(robots, str):
        options["robot"] = robots
    elif robots:
        options["robot"] = robots[0] if len(robots) == 1 else list(robots)
    controller = kwargs.get("controller_configs")
    if isinstance(controller, dict):
        # robosuite 1.5 composite configs go in whole; older part configs by their type name
        # (robomimic recorded them with that type's default parameters).
        options["controller"] = controller if "body_parts" in controller else controller.get("type")
    if "control_freq" in kwargs:
        options["control_freq"] = float(kwargs["control_freq"])
    if "horizon" in kwargs:
        options["horizon"] = int(kwargs["horizon"])
    if list(obs_keys) != list(default_keys):
        # robomimic's `object` is robosuite's `object-state`
        options["obs_keys"] = ["object-state" if k == "object" else k for k in obs_keys]
    options = {k: v for k, v in options.items() if v is not None}
    try:
        return EnvConfig(id=f"robosuite:{env_args['env_name']}", robosuite=RobosuiteOptions(**options))
    except ValidationError as exc:
        raise SourceError(f"{src}: env_args do not map to a robosuite env config: {exc}") from None


def _env_args(data: Any, src: Path) -> dict[str, Any]:
    raw = data.attrs.get("env_args")
    if raw is None:
        return {}
    try:
        args = json.loads(raw)
    except (TypeError, ValueError):
        raise SourceError(f"{src}: data attribute env_args is not JSON") from None
    if not isinstance(args, dict):
        raise SourceError(f"{src}: data attribute env_args is not a JSON object")
    return args


def _demo_names(f: Any, data: Any, filter_key: str | None, src: Path) -> list[str]:
    demos = sorted((k for k in data if _DEMO.match(k)), key=lambda k: int(k[5:]))
    if not demos:
        raise SourceError(f"{src}: data holds no demo_<i> groups")
    if filter_key is None:
        return demos
    filters = list(f["mask"].keys()) if "mask" in f else []
    if filter_key not in filters:
        raise SourceError(f"{src}: no filter key {filter_key!r}; available: {', '.join(filters) or 'none'}")
    chosen = [n.decode() if isinstance(n, bytes) else str(n) for n in f["mask"][filter_key][...]]
    missing = [n for n in chosen if n not in data]
    if missing:
        raise SourceError(f"{src}: mask/{filter_key} lists demos not in data: {missing[:5]}")
    return sorted(chosen, key=lambda k: int(k[5:]) if _DEMO.match(k) else k)


@dataclass
class _Demo:
    """One demo's dataset handles, looked up once (h5py lookups cost more than small reads)."""

    name: str
    length: int
    datasets: dict[str, Any]  # "actions", "rewards", "dones", "obs/<k>", "next_obs/<k>", "states"


def _check_demos(
    data: Any, names: list[str], keys: list[str], raw: Sequence[str], replay: bool, src: Path
) -> tuple[list[_Demo], list[int], bool]:
    """Lengths and shapes from metadata alone, so a truncated or mislabelled file fails before any copy."""
    demos: list[_Demo] = []
    first: dict[str, tuple[int, ...]] = {}
    has_next = True
    for name in names:
        demo = data[name]
        where = f"{src}: {name}"
        actions, obs = demo.get("actions"), demo.get("obs")
        if actions is None or obs is None:
            raise SourceError(f"{where}: needs 'actions' and 'obs'")
        n = actions.shape[0]
        if actions.ndim != 2:
            raise SourceError(f"{where}: actions must be (T, action_dim); found shape {actions.shape}")
        declared = demo.attrs.get("num_samples")
        if declared is not None and int(declared) != n:
            raise SourceError(f"{where}: num_samples says {int(declared)} but actions has {n} rows")
        datasets = {"actions": actions, "rewards": demo.get("rewards"), "dones": demo.get("dones")}
        datasets.update({f"obs/{k}": obs.get(k) for k in [*keys, *raw]})
        if replay:
            datasets["states"] = demo.get("states")
        next_group = demo.get("next_obs")
        if next_group is not None:
            found = {f"next_obs/{k}": next_group.get(k) for k in keys}
            has_next = has_next and all(ds is not None for ds in found.values())
            datasets.update({k: ds for k, ds in found.items() if ds is not None})
        else:
            has_next = False
        for label, ds in datasets.items():
            if ds is None:
                raise SourceError(f"{where}: missing {label}")
            if ds.shape[0] != n:
                raise SourceError(f"{where}: {label} has {ds.shape[0]} rows but actions has {n}")
            if label in ("rewards", "dones") and not (ds.ndim == 1 or ds.shape[1:] == (1,)):
                raise SourceError(f"{where}: {label} must be one value per step; found shape {ds.shape}")
            shape = tuple(ds.shape[1:])
            if first.setdefault(label, shape) != shape:
                raise SourceError(f"{where}: {label} is {shape} per step, {names[0]} has {first[label]}")
        demos.append(_Demo(name, n, datasets))
    total = data.attrs.get("total")
    held = sum(d.length for d in demos)
    every_demo = len(names) == sum(1 for k in data if _DEMO.match(k))
    if total is not None and every_demo and int(total) != held:
        raise SourceError(f"{src}: data attribute total={int(total)} but the demos hold {held} samples")
    dims = [int(np.prod(first[f"obs/{k}"], dtype=np.int64)) for k in keys]
    return demos, dims, has_next


def _episode(
    demo: _Demo, keys: list[str], raw: Sequence[str], has_next: bool, where: str
) -> dict[str, np.ndarray]:
    ds, n = demo.datasets, demo.length
    obs = np.concatenate([flat_steps(ds[f"obs/{k}"][()], n, f"{where}/obs/{k}") for k in keys], axis=1)
    dones = np.asarray(ds["dones"][()]).reshape(n)
    if np.any((dones != 0) & (dones != 1)):
        raise SourceError(f"{where}: dones must be 0/1; found {dones[(dones != 0) & (dones != 1)][0]!r}")
    terminated = dones.astype(bool)
    truncated = np.zeros(n, dtype=bool)
    truncated[-1] = not terminated[-1]
    episode = {
        "obs": obs,
        "action": ds["actions"][()],
        "reward": np.asarray(ds["rewards"][()]).reshape(n),
        "terminated": terminated,
        "truncated": truncated,
    }
    if has_next:
        episode["next_obs"] = np.concatenate(
            [flat_steps(ds[f"next_obs/{k}"][()], n, f"{where}/next_obs/{k}") for k in keys], axis=1
        )
    for k in raw:
        episode[f"obs/{k}"] = ds[f"obs/{k}"][()]
    return episode


class _StateReplay:
    """Rewards r(s') and success by setting a robosuite env to each recorded state.

    robomimic's convention: step t's reward is evaluated at states[t + 1]; the last step's
    by executing its action from the last state.
    """

    def __init__(self, env: EnvConfig, shaped: bool) -> None:
        from distrl.envs.robosuite_envs import RobosuiteEnv

        self._wrapper = RobosuiteEnv(env.name, env.robosuite, step_limit=None, seed=0)
        # The robosuite env itself: its reward() and _check_success() read the simulator.
        self._env = self._wrapper._env
        self._env.reward_shaping = shaped

    def __enter__(self) -> _StateReplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self._wrapper.close()

    def episode(self, states: np.ndarray, actions: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
        sim = self._env.sim
        self._wrapper.reset()
        size = sim.get_state().flatten().size
        if states.ndim != 2 or states.shape[1] != size:
            raise SourceError(
                f"{where}: states are {states.shape[1:]} per step but this robosuite model's state has "
                f"{size} values (recorded with a different robot/model?)"
            )
        n = len(actions)
        rewards = np.zeros(n, dtype=np.float32)
        success = np.zeros(n, dtype=bool)
        for t in range(n):
            if t + 1 < n:
                sim.set_state_from_flattened(states[t + 1])
                sim.forward()
                rewards[t] = self._env.reward(None)
            else:
                sim.set_state_from_flattened(states[t])
                sim.forward()
                _, rewards[t], _, _ = self._env.step(actions[t])
            success[t] = bool(self._env._check_success())
        return rewards, success
