"""Fitting a barrier B(x) = sum_j alpha_j k(c_j, x) to exploration data with one linear program.

Given a CME of the transitions (dictionary z_i = (x_i, a_i) -> x'_i), initial states X0, unsafe
states U, and for each decrease state x_k a designated action a*_k, the LP (scipy's HiGHS) finds
alpha, gamma, c >= 0 minimising the bound gamma + c T on the chance of reaching an unsafe state
within T steps, subject to

    B(x) >= 0                                   on the sampled states,
    B(x0) <= gamma                              on initial states,
    B(u) >= 1 - u_slack                         on unsafe states,
    E^[B(x') | x_k, a*_k] + eps sigma_k ||alpha||_1 <= B(x_k) + c + s_k     on decrease states,

where E^ is the CME estimate (linear in alpha), sigma_k its error factor and ||alpha||_1 bounds
B's RKHS norm (k(x, x) = 1), so eps sigma_k ||alpha||_1 is the robustness margin. The decrease
condition asks for *some* action per state, not for every action explored: the shield enforces
it on the executed action, so a barrier must exist for the shielded behaviour. `fit_shield`
picks a*_k among candidate actions by the previous barrier (see there).
Slacks s_k cost `slack_weight * T` per unit each, against T per unit of c (which relaxes every
constraint at once): with slack_weight = 1/N the LP raises c rather than pay slack on more than N
states, so a few outliers do not loosen the bound for all. `BarrierFit` reports the slacks; the
bound holds on the fit data only where they are 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from distrl.algos.safety.cme import ConditionalMeanEmbedding
from distrl.algos.safety.kernels import rbf

# An unsafe state left below B = 1 costs this much per unit: in practice the LP never pays it
# unless an unsafe state coincides with an initial one.
UNSAFE_SLACK_COST = 1e3
# A tiny price on ||alpha||_1 keeps the expansion small where the constraints leave it free.
NORM_COST = 1e-4


class BarrierFitError(RuntimeError):
    """The LP could not be solved (HiGHS status other than optimal); the message says why."""


@dataclass(frozen=True)
class KernelBarrier:
    """B(x) = sum_j alpha_j exp(-|x - c_j|^2 / (2 l^2)) over standardised states."""

    centers: np.ndarray  # [p, dx]
    alpha: np.ndarray  # [p]
    lengthscale: float

    def features(self, x: np.ndarray) -> np.ndarray:
        return rbf(np.asarray(x, dtype=np.float64), self.centers, self.lengthscale)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.features(x) @ self.alpha


@dataclass(frozen=True)
class BarrierFit:
    """A fitted barrier and how the LP went."""

    barrier: KernelBarrier
    gamma: float  # max B over initial states (LP variable)
    c: float  # allowed expected increase per step
    horizon: int
    status: int  # scipy.optimize.linprog status (0 = optimal)
    message: str
    decrease_slack_max: float
    decrease_slack_fraction: float  # share of decrease constraints with slack > 1e-6
    unsafe_slack_max: float
    norm_l1: float
    seconds: float
    counts: dict[str, int]

    @property
    def bound(self) -> float:
        """gamma + c T, capped at 1: the certified chance of reaching an unsafe state in T steps
        (when the slacks are 0)."""
        return float(min(1.0, self.gamma + self.c * self.horizon))


def fit_barrier(
    cme: ConditionalMeanEmbedding,
    next_states: np.ndarray,
    positive: np.ndarray,
    decrease_states: np.ndarray,
    decrease_inputs: np.ndarray,
    initial: np.ndarray,
    unsafe: np.ndarray,
    centers: np.ndarray,
    lengthscale: float,
    horizon: int,
    margin: float = 0.1,
    slack_weight: float = 1.0,
    min_c: float = 0.0,
) -> BarrierFit:
    """Solve the LP of the module docstring. Everything is standardised: `next_states[i]` follows the
    CME's dictionary input i; `positive` are the states where B >= 0; `decrease_inputs[k]` is
    z = (x_k, a*_k) for `decrease_states[k]`."""
    start = time.perf_counter()
    if len(unsafe) == 0:
        raise ValueError("fitting a barrier needs at least one unsafe state")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    barrier_basis = KernelBarrier(np.asarray(centers, dtype=np.float64), np.zeros(len(centers)), lengthscale)
    phi_next = barrier_basis.features(next_states)  # [m, p]
    positive = barrier_basis.features(positive)
    phi_init = barrier_basis.features(initial) if len(initial) else np.zeros((0, len(centers)))
    phi_unsafe = barrier_basis.features(unsafe)
    if len(decrease_inputs) != len(decrease_states):
        raise ValueError("decrease_inputs and decrease_states must have the same length")
    expected = cme.weights(decrease_inputs) @ phi_next  # E^[phi(x') | z_k], [d, p]
    sigma = cme.error_scale(decrease_inputs)
    decrease_block = expected - barrier_basis.features(decrease_states)

    p, d, u = len(centers), len(decrease_states), len(unsafe)
    # Variables: alpha+ [p], alpha- [p], gamma, c, t, s [d], u_slack [u].
    n_var = 2 * p + 3 + d + u
    g_idx, c_idx, t_idx = 2 * p, 2 * p + 1, 2 * p + 2

    def signed(block: np.ndarray) -> sparse.csr_matrix:
        return sparse.csr_matrix(np.hstack([block, -block]))

    def pad(block: sparse.spmatrix, extra: sparse.spmatrix) -> sparse.csr_matrix:
        return sparse.hstack([block, extra]).tocsr()

    def columns(n_rows: int, entries: dict[int, np.ndarray | float]) -> sparse.csr_matrix:
        out = sparse.lil_matrix((n_rows, n_var - 2 * p))
        for index, value in entries.items():
            out[:, index - 2 * p] = np.broadcast_to(value, (n_rows,)).reshape(-1, 1)
        return out.tocsr()

    blocks, rhs = [], []
    # B >= 0 on sampled states.
    blocks.append(pad(signed(-positive), sparse.csr_matrix((len(positive), n_var - 2 * p))))
    rhs.append(np.zeros(len(positive)))
    # B(x0) - gamma <= 0.
    if len(phi_init):
        blocks.append(pad(signed(phi_init), columns(len(phi_init), {g_idx: -1.0})))
        rhs.append(np.zeros(len(phi_init)))
    # -B(u) - u_slack <= -1.
    unsafe_cols = sparse.hstack([sparse.csr_matrix((u, 3 + d)), -sparse.identity(u, format="csr")]).tocsr()
    blocks.append(pad(signed(-phi_unsafe), unsafe_cols))
    rhs.append(-np.ones(u))
    # E^[B(x')] - B(x) + margin sigma t - c - s <= 0.
    if d:
        scalars = np.zeros((d, 3))
        scalars[:, 1] = -1.0
        scalars[:, 2] = margin * sigma
        decrease_cols = sparse.hstack(
            [sparse.csr_matrix(scalars), -sparse.identity(d, format="csr"), sparse.csr_matrix((d, u))]
        ).tocsr()
        blocks.append(pad(signed(decrease_block), decrease_cols))
        rhs.append(np.zeros(d))
    # ||alpha||_1 - t <= 0.
    norm_row = np.zeros((1, n_var))
    norm_row[0, : 2 * p] = 1.0
    norm_row[0, t_idx] = -1.0
    blocks.append(sparse.csr_matrix(norm_row))
    rhs.append(np.zeros(1))

    cost = np.zeros(n_var)
    cost[g_idx] = 1.0
    cost[c_idx] = float(horizon)
    cost[t_idx] = NORM_COST
    if d:
        cost[2 * p + 3 : 2 * p + 3 + d] = slack_weight * horizon
    cost[2 * p + 3 + d :] = UNSAFE_SLACK_COST
    bounds = [(0, None)] * n_var
    bounds[g_idx] = (0.0, 1.0)
    bounds[c_idx] = (min_c, None)
    result = linprog(
        cost,
        A_ub=sparse.vstack(blocks).tocsc(),
        b_ub=np.concatenate(rhs),
        bounds=bounds,
        method="highs",
    )
    if result.status != 0 or result.x is None:
        raise BarrierFitError(f"barrier LP failed (HiGHS status {result.status}): {result.message}")
    x = result.x
    alpha = x[:p] - x[p : 2 * p]
    slacks = x[2 * p + 3 : 2 * p + 3 + d]
    unsafe_slack = x[2 * p + 3 + d :]
    return BarrierFit(
        barrier=KernelBarrier(barrier_basis.centers, alpha, lengthscale),
        # HiGHS meets bounds to its feasibility tolerance (gamma = -5e-10, say): clip onto them.
        gamma=float(np.clip(x[g_idx], 0.0, 1.0)),
        c=float(max(x[c_idx], min_c)),
        horizon=int(horizon),
        status=int(result.status),
        message=str(result.message),
        decrease_slack_max=float(slacks.max()) if d else 0.0,
        decrease_slack_fraction=float((slacks > 1e-6).mean()) if d else 0.0,
        unsafe_slack_max=float(unsafe_slack.max()),
        norm_l1=float(np.abs(alpha).sum()),
        seconds=time.perf_counter() - start,
        counts={
            "dictionary": cme.size,
            "centers": p,
            "decrease": d,
            "initial": len(phi_init),
            "unsafe": u,
            "positive": len(positive),
        },
    )
