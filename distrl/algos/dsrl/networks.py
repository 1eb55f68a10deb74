"""DSRL's networks: LayerNorm + Tanh MLPs (the reference's) for the latent actor and the critics."""

from __future__ import annotations

import torch
from torch import nn

from distrl.algos.sac.networks import squashed_gaussian_sample


def mlp(
    in_dim: int, hidden: tuple[int, ...], out_dim: int, layernorm: bool, activation: str
) -> nn.Sequential:
    act = nn.Tanh if activation == "tanh" else nn.ReLU
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if layernorm:
            layers.append(nn.LayerNorm(h))
        layers.append(act())
        width = h
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class LatentActor(nn.Module):
    """obs -> w = bound * tanh(u), u ~ N(mean, std): SAC's squashed Gaussian scaled to [-m, m].

    The log-std is clamped into [log_std_min, log_std_max] and starts near 0 (std 1), as in the
    reference (Stable-Baselines3's SAC): the first latents spread like the N(0, I) prior.

    `log_prob` is the density of tanh(u) in [-1, 1]^d (the scale is a constant), so the target
    entropy means the same whatever the bound, as in the reference.
    """

    def __init__(
        self,
        obs_dim: int,
        latent_dim: int,
        hidden: tuple[int, ...],
        layernorm: bool,
        activation: str,
        bound: float,
        log_std_min: float,
        log_std_max: float,
    ) -> None:
        super().__init__()
        self.net = mlp(obs_dim, hidden, 2 * latent_dim, layernorm, activation)
        self.bound = bound
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw = self.net(obs).chunk(2, dim=-1)
        return mean, raw.clamp(self.log_std_min, self.log_std_max)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised latent [B, d] in (-m, m) and its log-probability [B]."""
        w, log_prob = squashed_gaussian_sample(*self(obs))
        return self.bound * w, log_prob

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return self.bound * torch.tanh(self(obs)[0])


class QEnsemble(nn.Module):
    """E independent Q(s, x) MLPs; x is a latent w or a flattened action chunk. Returns [E, B]."""

    def __init__(
        self, obs_dim: int, in_dim: int, hidden: tuple[int, ...], num: int, layernorm: bool, activation: str
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList(
            mlp(obs_dim + in_dim, hidden, 1, layernorm, activation) for _ in range(num)
        )

    def forward(self, obs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([obs, x.reshape(x.shape[0], -1)], dim=-1)
        return torch.stack([m(h).squeeze(-1) for m in self.members])
