"""SAC's networks: a tanh-Gaussian actor and an ensemble of Q critics evaluated as one batched module."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _tanh_log_det(u: torch.Tensor) -> torch.Tensor:
    """log(1 - tanh(u)^2), written to stay finite for large |u| (2 * (log 2 - u - softplus(-2u)))."""
    return 2.0 * (_LOG_2 - u - F.softplus(-2.0 * u))


class TanhGaussianActor(nn.Module):
    """obs -> tanh(N(mean, std)): a ReLU MLP with one head producing mean and log-std together.

    The log-std head is squashed into [log_std_min, log_std_max] with tanh (CleanRL's bounds,
    -5 and 2): std stays in [0.0067, 7.4] and the gradient never dies at a hard clamp.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: tuple[int, ...],
        log_std_min: float,
        log_std_max: float,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        self.trunk = nn.Sequential(*layers)
        # Mean and log-std in one matmul: on a CPU every avoided op counts.
        self.head = nn.Linear(width, 2 * action_dim)
        self.action_dim = action_dim
        self._log_std_scale = 0.5 * (log_std_max - log_std_min)
        self._log_std_mid = log_std_min + self._log_std_scale

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, obs_dim] -> (mean, log_std), each [B, action_dim], before the tanh squash."""
        mean, raw_log_std = self.head(self.trunk(obs)).chunk(2, dim=-1)
        log_std = torch.tanh(raw_log_std) * self._log_std_scale + self._log_std_mid
        return mean, log_std

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action a = tanh(mean + std * eps) in (-1, 1) and its log-probability [B]."""
        return squashed_gaussian_sample(*self(obs))

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        """The mode of the squashed Gaussian's pre-image: tanh(mean)."""
        mean, _ = self(obs)
        return torch.tanh(mean)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor, eps: float) -> torch.Tensor:
        """log pi(action | obs) [B] for given actions; they are clamped to (-1+eps, 1-eps) before atanh."""
        mean, log_std = self(obs)
        return gaussian_tanh_log_prob(mean, log_std, action, eps)


def squashed_gaussian_sample(mean: torch.Tensor, log_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A reparameterised sample tanh(mean + std * eps) in (-1, 1) and its log-probability [B]."""
    eps = torch.randn_like(mean)
    u = mean + log_std.exp() * eps
    # log N(u; mean, std) - log|d tanh(u)/du|, summed over action dims.
    log_prob = -(0.5 * eps.square() + log_std + _tanh_log_det(u)).sum(-1) - mean.shape[-1] * _HALF_LOG_2PI
    return torch.tanh(u), log_prob


def gaussian_tanh_log_prob(
    mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor, eps: float
) -> torch.Tensor:
    """log of tanh(N(mean, exp(log_std))) at `action` [B], clamped to (-1+eps, 1-eps) before atanh."""
    u = torch.atanh(action.clamp(-1.0 + eps, 1.0 - eps))
    z = (u - mean) * torch.exp(-log_std)
    return -(0.5 * z.square() + log_std + _tanh_log_det(u)).sum(-1) - mean.shape[-1] * _HALF_LOG_2PI


class CriticEnsemble(nn.Module):
    """E independent Q(s, a) MLPs stored as stacked weights [E, in, out] and run with batched matmuls.

    One `baddbmm` per layer replaces E separate Linear calls, so the cost of an ensemble of 10 is
    a few large ops rather than 30 small ones. With `layernorm` every hidden layer is
    Linear -> LayerNorm -> ReLU (RLPD); each member has its own LayerNorm scale and shift.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: tuple[int, ...],
        num_members: int,
        layernorm: bool = False,
    ) -> None:
        super().__init__()
        self.num_members = num_members
        self.layernorm = layernorm
        widths = (obs_dim + action_dim, *hidden_sizes, 1)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.norm_scales = nn.ParameterList()
        self.norm_shifts = nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(widths):
            # nn.Linear's default initialisation, drawn independently for each member.
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(
                nn.Parameter(torch.empty(num_members, fan_in, fan_out).uniform_(-bound, bound))
            )
            self.biases.append(nn.Parameter(torch.empty(num_members, 1, fan_out).uniform_(-bound, bound)))
        if layernorm:
            for hidden in hidden_sizes:
                self.norm_scales.append(nn.Parameter(torch.ones(num_members, 1, hidden)))
                self.norm_shifts.append(nn.Parameter(torch.zeros(num_members, 1, hidden)))
        self._widths = widths

    def layer_params(self) -> list[torch.Tensor]:
        """All parameters in the order `run` expects: weights, biases, then LayerNorm scales and shifts."""
        return [*self.weights, *self.biases, *self.norm_scales, *self.norm_shifts]

    def forward(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        members: torch.Tensor | None = None,
        detach_params: bool = False,
    ) -> torch.Tensor:
        """Q values [E, B] (or [len(members), B]).

        `members` picks a subset of the ensemble (indices [K]) before any matmul, so a random-subset
        backup costs K members, not E. `detach_params` evaluates the critic as a fixed function:
        gradients reach the inputs (the actor's actions) but no critic weight gradient is computed.
        """
        params = self.layer_params()
        if detach_params:
            params = [p.detach() for p in params]
        if members is not None:
            params = [p.index_select(0, members) for p in params]
        return self.run(params, torch.cat((obs, action), dim=-1))

    def run(self, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The ensemble MLP on [B, in] inputs with explicit parameters (see `layer_params`)."""
        num_layers = len(self._widths) - 1
        weights, biases = params[:num_layers], params[num_layers : 2 * num_layers]
        norm = params[2 * num_layers :]
        scales, shifts = norm[: num_layers - 1], norm[num_layers - 1 :]
        h = x.expand(weights[0].shape[0], *x.shape)
        for layer in range(num_layers - 1):
            h = torch.baddbmm(biases[layer], h, weights[layer])
            if self.layernorm:
                h = torch.addcmul(shifts[layer], F.layer_norm(h, h.shape[-1:]), scales[layer])
            h = F.relu(h, inplace=True)
        return torch.baddbmm(biases[-1], h, weights[-1]).squeeze(-1)
