"""The shield an actor runs: E^[B(x') | x, a] <= B(x) + c per decision, and a safe replacement.

`Shield` holds what a fit produced, in the form one check needs: the standardisation, the CME
dictionary inputs Z with g = (K + m lambda I)^-1 B(X'), so E^[B(x') | z] = k(z, Z) g costs O(m),
and the barrier's centers and weights. It travels to the actors as the "shield" parameter set
(float32 tensors, no pickle) and is rebuilt there by `from_tensors`, which validates everything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from distrl.algos.safety.kernels import Standardizer, rbf

TENSOR_NAMES = ("scalars", "mean", "std", "dictionary", "g", "centers", "alpha")
# scalars = [z lengthscale, x lengthscale, c, gamma, fitted (0/1), horizon]
_SCALARS = 6
# c and gamma come out of a linear program, within its feasibility tolerance of their bounds.
BOUND_TOLERANCE = 1e-6


@dataclass(frozen=True)
class FilterResult:
    executed: np.ndarray  # [B, A] the actions to execute
    intervened: np.ndarray  # [B] bool: the proposal failed the check and was replaced
    expected: np.ndarray  # [B] E^[B(x') | x, executed]
    passing: np.ndarray  # [B] bool: the executed action passes the check


@dataclass(frozen=True)
class Shield:
    obs_dim: int
    action_dim: int
    fitted: bool
    standardizer: Standardizer | None = None  # over z = (x, a)
    dictionary: np.ndarray | None = None  # [m, dx + da], standardised
    g: np.ndarray | None = None  # [m]
    centers: np.ndarray | None = None  # [p, dx], standardised
    alpha: np.ndarray | None = None  # [p]
    z_lengthscale: float = 1.0
    x_lengthscale: float = 1.0
    c: float = 0.0
    gamma: float = 0.0
    horizon: int = 1
    tolerance: float = 1e-6

    @classmethod
    def unfitted(cls, obs_dim: int, action_dim: int) -> Shield:
        """Before the first fit: every action passes."""
        return cls(obs_dim, action_dim, fitted=False)

    @property
    def bound(self) -> float:
        return float(min(1.0, self.gamma + self.c * self.horizon)) if self.fitted else 1.0

    # ---- the check

    def _x(self, x: np.ndarray) -> np.ndarray:
        s = self.standardizer
        return (np.asarray(x, dtype=np.float64) - s.mean[: self.obs_dim]) / s.std[: self.obs_dim]

    def barrier(self, x: np.ndarray) -> np.ndarray:
        """B(x) [N] for raw observations [N, obs_dim]."""
        if not self.fitted:
            return np.zeros(len(x))
        return rbf(self._x(x), self.centers, self.x_lengthscale) @ self.alpha

    def expected_next(self, x: np.ndarray, a: np.ndarray) -> np.ndarray:
        """E^[B(x') | x, a] [N] for raw observations [N, obs_dim] and actions [N, action_dim]."""
        if not self.fitted:
            return np.zeros(len(x))
        z = self.standardizer(np.concatenate([np.asarray(x), np.asarray(a)], axis=1))
        return rbf(z, self.dictionary, self.z_lengthscale) @ self.g

    def passes(self, x: np.ndarray, a: np.ndarray) -> np.ndarray:
        return self.expected_next(x, a) <= self.barrier(x) + self.c + self.tolerance

    def filter(
        self,
        x: np.ndarray,
        proposed: np.ndarray,
        candidates: Callable[[np.ndarray], np.ndarray],
    ) -> FilterResult:
        """Check each proposal; where one fails, try `candidates(rows)` ([k, M, A] actions for those
        rows) and execute the passing candidate closest to the proposal, else the candidate with the
        lowest expected barrier."""
        proposed = np.asarray(proposed, dtype=np.float32)
        n = len(proposed)
        if not self.fitted:
            return FilterResult(proposed, np.zeros(n, bool), np.zeros(n), np.ones(n, bool))
        level = self.barrier(x) + self.c + self.tolerance
        expected = self.expected_next(x, proposed)
        fail = expected > level
        executed = proposed.copy()
        passing = ~fail
        if fail.any():
            rows = np.flatnonzero(fail)
            cands = np.asarray(candidates(rows), dtype=np.float32)
            k, m = len(rows), cands.shape[1]
            if cands.shape != (k, m, self.action_dim):
                raise ValueError(f"candidates have shape {cands.shape}, expected [{k}, M, {self.action_dim}]")
            xs = np.repeat(np.asarray(x)[rows], m, axis=0)
            e = self.expected_next(xs, cands.reshape(k * m, -1)).reshape(k, m)
            ok = e <= level[rows, None]
            dist = np.where(ok, ((cands - proposed[rows, None]) ** 2).sum(-1), np.inf)
            choice = np.where(ok.any(1), dist.argmin(1), e.argmin(1))
            executed[rows] = cands[np.arange(k), choice]
            expected[rows] = e[np.arange(k), choice]
            passing[rows] = ok[np.arange(k), choice]
        return FilterResult(executed, fail, expected, passing)

    # ---- the wire form

    def tensors(self) -> dict[str, np.ndarray]:
        """float32 tensors of the "shield" parameter set (placeholders of one row when unfitted)."""
        if not self.fitted:
            dz = self.obs_dim + self.action_dim
            scalars = np.array([1.0, 1.0, 0.0, 0.0, 0.0, 1.0], dtype=np.float32)
            return {
                "scalars": scalars,
                "mean": np.zeros(dz, np.float32),
                "std": np.ones(dz, np.float32),
                "dictionary": np.zeros((1, dz), np.float32),
                "g": np.zeros(1, np.float32),
                "centers": np.zeros((1, self.obs_dim), np.float32),
                "alpha": np.zeros(1, np.float32),
            }
        scalars = [self.z_lengthscale, self.x_lengthscale, self.c, self.gamma, 1.0, float(self.horizon)]
        return {
            "scalars": np.array(scalars, dtype=np.float32),
            "mean": self.standardizer.mean.astype(np.float32),
            "std": self.standardizer.std.astype(np.float32),
            "dictionary": self.dictionary.astype(np.float32),
            "g": self.g.astype(np.float32),
            "centers": self.centers.astype(np.float32),
            "alpha": self.alpha.astype(np.float32),
        }

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, np.ndarray], obs_dim: int, action_dim: int, tolerance: float = 1e-6
    ) -> Shield:
        """Rebuild and validate a shield from its parameter set; ValueError names the problem."""
        names = set(tensors)
        if names != set(TENSOR_NAMES):
            raise ValueError(
                f"shield parameters do not match: missing {sorted(set(TENSOR_NAMES) - names)}, "
                f"unexpected {sorted(names - set(TENSOR_NAMES))}"
            )
        arrays = {}
        for name in TENSOR_NAMES:
            array = np.asarray(tensors[name])
            if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
                raise ValueError(f"shield parameter {name!r} must hold finite floats (dtype {array.dtype})")
            arrays[name] = array.astype(np.float64)
        dz = obs_dim + action_dim
        m, p = len(arrays["g"]), len(arrays["alpha"])
        expected = {
            "scalars": (_SCALARS,),
            "mean": (dz,),
            "std": (dz,),
            "dictionary": (m, dz),
            "g": (m,),
            "centers": (p, obs_dim),
            "alpha": (p,),
        }
        for name, shape in expected.items():
            if arrays[name].shape != shape:
                raise ValueError(
                    f"shield parameter {name!r} has shape {arrays[name].shape}, expected {shape}"
                )
        z_len, x_len, c, gamma, fitted, horizon = arrays["scalars"].tolist()
        if fitted not in (0.0, 1.0):
            raise ValueError(f"shield parameter 'scalars': fitted flag must be 0 or 1, got {fitted}")
        if not fitted:
            return cls.unfitted(obs_dim, action_dim)
        if z_len <= 0 or x_len <= 0 or (arrays["std"] <= 0).any():
            raise ValueError("shield parameters: lengthscales and std must be positive")
        if c < -BOUND_TOLERANCE or not -BOUND_TOLERANCE <= gamma <= 1 + BOUND_TOLERANCE or horizon < 1:
            raise ValueError(
                f"shield parameters: need c >= 0, 0 <= gamma <= 1, horizon >= 1 (got {c}, {gamma}, {horizon})"
            )
        return cls(
            obs_dim,
            action_dim,
            fitted=True,
            standardizer=Standardizer(arrays["mean"], arrays["std"]),
            dictionary=arrays["dictionary"],
            g=arrays["g"],
            centers=arrays["centers"],
            alpha=arrays["alpha"],
            z_lengthscale=z_len,
            x_lengthscale=x_len,
            c=max(c, 0.0),
            gamma=min(max(gamma, 0.0), 1.0),
            horizon=int(horizon),
            tolerance=tolerance,
        )
