"""XQC's networks: BatchNorm MLPs whose weight rows are kept at unit norm.

Every hidden block is Linear(no bias) -> BatchNorm -> ReLU after a BatchNorm of the input
(pre-activation BN, the reference's `XQCBlock`). The critics are an ensemble evaluated as one
batched module: per-member weights are stacked ([E, out, in]) and each member's BatchNorm is a
channel group of one BatchNorm1d, so E critics cost one bmm and one normalisation per layer.
Initialisation is orthogonal (gain sqrt 2; 1 for the log-std head), then rows are normalised.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _bn(features: int, momentum: float, eps: float) -> nn.BatchNorm1d:
    # flax keeps `momentum` of the running statistics; torch's momentum is the new batch's share.
    return nn.BatchNorm1d(features, momentum=1.0 - momentum, eps=eps)


def _orthogonal(rows: int, cols: int, gain: float) -> torch.Tensor:
    weight = torch.empty(rows, cols)
    nn.init.orthogonal_(weight, gain=gain)
    return weight


@torch.no_grad()
def normalize_rows_(weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Scale each output unit's incoming weights (and bias, when given) to unit L2 norm, in place."""
    if bias is None:
        weight.div_(weight.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        return
    norm = torch.sqrt(weight.square().sum(-1) + bias.square()).clamp_min(1e-12)
    weight.div_(norm.unsqueeze(-1))
    bias.div_(norm)


class EnsembleBatchNorm(nn.Module):
    """Independent BatchNorm per ensemble member: [E, N, D] normalised over N, per (member, feature)."""

    def __init__(self, members: int, features: int, momentum: float, eps: float) -> None:
        super().__init__()
        self.members, self.features = members, features
        self.bn = _bn(members * features, momentum, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e, n, d = x.shape
        y = self.bn(x.transpose(0, 1).reshape(n, e * d))
        return y.reshape(n, e, d).transpose(0, 1)

    def member(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Member `index`'s BatchNorm of its own [N, D] activations (views of the shared buffers)."""
        bn, span = self.bn, slice(index * self.features, (index + 1) * self.features)
        use_batch = bn.training or bn.running_mean is None
        return F.batch_norm(
            x,
            bn.running_mean[span],
            bn.running_var[span],
            bn.weight[span],
            bn.bias[span],
            use_batch,
            bn.momentum,
            bn.eps,
        )


class CategoricalCriticEnsemble(nn.Module):
    """E critics Q_e(s, a) as logits over `num_bins` atoms of a fixed support; Q = expected value."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: tuple[int, ...],
        members: int,
        num_bins: int,
        v_min: float,
        v_max: float,
        momentum: float,
        eps: float,
    ) -> None:
        super().__init__()
        self.members = members
        in_dim = obs_dim + action_dim
        self.input_bn = EnsembleBatchNorm(members, in_dim, momentum, eps)
        self.weights = nn.ParameterList()
        self.norms = nn.ModuleList()
        width = in_dim
        for size in hidden:
            stacked = torch.stack([_orthogonal(size, width, math.sqrt(2.0)) for _ in range(members)])
            self.weights.append(nn.Parameter(stacked))
            self.norms.append(EnsembleBatchNorm(members, size, momentum, eps))
            width = size
        self.head_weight = nn.Parameter(
            torch.stack([_orthogonal(num_bins, width, math.sqrt(2.0)) for _ in range(members)])
        )
        self.head_bias = nn.Parameter(torch.zeros(members, 1, num_bins))
        self.register_buffer("support", torch.linspace(v_min, v_max, num_bins))
        # None: members together on CUDA, one at a time on the CPU (see forward).
        self.batched: bool | None = None
        self.normalize_()

    def forward(self, obs: torch.Tensor, action: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """[N, obs], [N, act] -> logits [E, N, bins] (BatchNorm in train or eval mode as set).

        `rows` keeps only those items' logits: the BatchNorm statistics still come from all N
        (the joint batch), but the last layer runs only on the rows that are used.

        On CUDA the members run together (one bmm and one BatchNorm per layer: fewer kernels);
        on the CPU, where a bmm costs what its matmuls cost, one member at a time on contiguous
        [N, D] activations, which saves the transposes the shared BatchNorm needs. Same math.
        """
        x = torch.cat((obs, action), dim=-1)
        if self.batched if self.batched is not None else x.is_cuda:
            x = self.input_bn(x.unsqueeze(0).expand(self.members, -1, -1))
            for weight, norm in zip(self.weights, self.norms, strict=True):
                x = F.relu(norm(torch.bmm(x, weight.transpose(1, 2))))
            if rows is not None:
                x = x[:, rows]
            return torch.baddbmm(self.head_bias, x, self.head_weight.transpose(1, 2))
        logits = []
        for e in range(self.members):
            h = self.input_bn.member(x, e)
            for weight, norm in zip(self.weights, self.norms, strict=True):
                h = F.relu(norm.member(h @ weight[e].t(), e))
            if rows is not None:
                h = h[rows]
            logits.append(torch.addmm(self.head_bias[e], h, self.head_weight[e].t()))
        return torch.stack(logits)

    def q(self, logits: torch.Tensor) -> torch.Tensor:
        """Expected values [E, N] of logits [E, N, bins]."""
        return (logits.softmax(-1) * self.support).sum(-1)

    @torch.no_grad()
    def normalize_(self) -> None:
        for weight in self.weights:
            normalize_rows_(weight)
        normalize_rows_(self.head_weight)  # the last layer's kernel, its bias left alone (reference)


class BatchNormTrunk(nn.Module):
    """Input BatchNorm, then [Linear(no bias) -> BatchNorm -> ReLU] per hidden width."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], momentum: float, eps: float) -> None:
        super().__init__()
        layers: list[nn.Module] = [_bn(in_dim, momentum, eps)]
        width = in_dim
        for size in hidden:
            linear = nn.Linear(width, size, bias=False)
            with torch.no_grad():
                linear.weight.copy_(_orthogonal(size, width, math.sqrt(2.0)))
            layers += [linear, _bn(size, momentum, eps), nn.ReLU()]
            width = size
        self.net = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def normalize_(self) -> None:
        for module in self.net:
            if isinstance(module, nn.Linear):
                normalize_rows_(module.weight)


class GaussianHead(nn.Module):
    """Mean and log-std heads (orthogonal init, gains sqrt 2 and 1); log-std clipped to its bounds."""

    def __init__(self, in_dim: int, action_dim: int, log_std_min: float, log_std_max: float) -> None:
        super().__init__()
        self.mean = nn.Linear(in_dim, action_dim)
        self.log_std = nn.Linear(in_dim, action_dim)
        with torch.no_grad():
            self.mean.weight.copy_(_orthogonal(action_dim, in_dim, math.sqrt(2.0)))
            self.log_std.weight.copy_(_orthogonal(action_dim, in_dim, 1.0))
            self.mean.bias.zero_()
            self.log_std.bias.zero_()
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the Gaussian before the tanh squash."""
        log_std = self.log_std(h).clamp(self.log_std_min, self.log_std_max)
        return self.mean(h), log_std.exp()

    @torch.no_grad()
    def normalize_(self) -> None:
        normalize_rows_(self.mean.weight)
        normalize_rows_(self.log_std.weight)


class StationaryHead(nn.Module):
    """CSIL's stationary head: periodic features of the trunk's output, a mean head initialised at
    0 and a std squashed toward `prior_std`, so that far from the data the policy returns to a
    broad prior (high entropy) and only the demonstrated states pull it in.

        z = h diag(exp(log_lengthscale)) W        (W random, trained)
        phi = [f(z + pi/4), f(z - pi/4)] / sqrt(D),   f = sin + cos
        mean = phi @ M (M = 0 at init),   std = prior_std * tanh(sqrt(min_var + ||L^T phi||^2))

    L is a [D, r] factor per action dim, the identity at init when r = D (CSIL's full factor):
    training can then shrink the variance along the features of demonstrated states alone, and
    features of far-away states, at other phases, keep theirs.
    """

    MIN_VAR = 1e-4

    def __init__(
        self, in_dim: int, action_dim: int, feature_dim: int, prior_std: float, rank: int | None = None
    ) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.prior_std = prior_std
        self.random_weights = nn.Parameter(torch.randn(in_dim, feature_dim // 2))
        # Long length scales at init (z of std ~0.2 for unit inputs): smooth features that generalise
        # between nearby demo states; training shortens them where the demos need detail. At scale 1
        # the features are rough enough to memorise the demos and miss the states between them.
        self.log_lengthscale = nn.Parameter(torch.full((in_dim,), -0.5 * math.log(in_dim) - 1.0))
        self.mean_weights = nn.Parameter(torch.zeros(feature_dim, action_dim))
        # ||L^T phi||^2 ~ ||phi||^2 ~ 1 at init: the std starts near prior_std * tanh(1).
        if rank is None or rank >= feature_dim:
            factor = torch.eye(feature_dim).expand(action_dim, -1, -1).clone()
        else:
            factor = torch.randn(action_dim, feature_dim, rank) / math.sqrt(rank)
        self.std_factor = nn.Parameter(factor)

    def features(self, h: torch.Tensor) -> torch.Tensor:
        z = (h * self.log_lengthscale.exp()) @ self.random_weights
        quarter = math.pi / 4.0
        phi = torch.cat((_sin_cos(z + quarter), _sin_cos(z - quarter)), dim=-1)
        return phi / math.sqrt(self.feature_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        phi = self.features(h)
        mean = phi @ self.mean_weights
        var = torch.einsum("bf,afr->bar", phi, self.std_factor).square().sum(-1)
        std = self.prior_std * torch.tanh(torch.sqrt(self.MIN_VAR + var))
        return mean, std

    def normalize_(self) -> None:
        pass  # periodic features and a zero-initialised mean: nothing to normalise


def _sin_cos(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x) + torch.cos(x)


def _tanh_log_det(u: torch.Tensor) -> torch.Tensor:
    """log(1 - tanh(u)^2), finite for large |u|."""
    return 2.0 * (_LOG_2 - u - F.softplus(-2.0 * u))


class XQCActor(nn.Module):
    """obs -> tanh(N(mean, std)): a BatchNorm trunk and a Gaussian (or stationary) head."""

    def __init__(self, trunk: BatchNormTrunk, head: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.trunk(obs))

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action in (-1, 1) and its log-probability [B]."""
        mean, std = self(obs)
        eps = torch.randn_like(mean)
        u = mean + std * eps
        log_prob = (-0.5 * eps.square() - std.log() - _HALF_LOG_2PI - _tanh_log_det(u)).sum(-1)
        return torch.tanh(u), log_prob

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self(obs)[0])

    @torch.no_grad()
    def normalize_(self) -> None:
        self.trunk.normalize_()
        self.head.normalize_()


def tanh_gaussian_log_prob(
    mean: torch.Tensor, std: torch.Tensor, action: torch.Tensor, eps: float
) -> torch.Tensor:
    """log pi(action) [B] of tanh(N(mean, std)) for actions in (-1, 1) (clamped by eps first)."""
    a = action.clamp(-1.0 + eps, 1.0 - eps)
    u = torch.atanh(a)
    z = (u - mean) / std
    return (-0.5 * z.square() - std.log() - _HALF_LOG_2PI - _tanh_log_det(u)).sum(-1)
