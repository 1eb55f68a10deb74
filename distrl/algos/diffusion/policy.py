"""The base diffusion policy on its own: each decision denoises fresh noise w ~ N(0, I)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from distrl.algos.base import POLICY_PARAMS, BasePolicy, PolicyStep, SpaceSpec
from distrl.algos.diffusion.model import DiffusionModel


class DiffusionPolicy(BasePolicy):
    """A frozen diffusion policy as a `Policy`: chunk = pi_dp(s, w), w ~ N(0, I) every decision.

    `deterministic` changes nothing: the noise is the policy (evaluation samples it too, as
    the success of "the plain policy" is measured). `seed` fixes the noise stream.
    """

    def __init__(self, model: DiffusionModel, seed: int = 0) -> None:
        super().__init__(SpaceSpec(model.spec.obs_dim, model.spec.action_dim))
        self.model = model.cpu().eval().requires_grad_(False)
        self.generator = torch.Generator().manual_seed(seed)

    def act(self, obs: np.ndarray, deterministic: bool = False) -> PolicyStep:
        array, _ = self.check_obs(obs)
        spec = self.model.spec
        w = torch.randn(len(array), spec.chunk, spec.action_dim, generator=self.generator)
        with torch.inference_mode():
            chunk = self.model.denoise(torch.from_numpy(np.ascontiguousarray(array)), w)
        return PolicyStep(chunk.numpy())

    def warmup(self, obs: np.ndarray, rng: np.random.Generator) -> PolicyStep:
        return self.act(obs)

    def load_params(self, param_set: str, tensors: Mapping[str, np.ndarray]) -> None:
        if param_set != POLICY_PARAMS:
            raise ValueError(f"a diffusion policy loads only {POLICY_PARAMS!r}, not {param_set!r}")
        self.model = DiffusionModel.from_tensors(tensors)
