"""RBF kernels with median-heuristic bandwidths, and the standardisation they are computed in."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n, d] x [m, d] -> [n, m] squared Euclidean distances (clamped at 0 against round-off)."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d2, 0.0, out=d2)


def rbf(a: np.ndarray, b: np.ndarray, lengthscale: float) -> np.ndarray:
    """k(a_i, b_j) = exp(-|a_i - b_j|^2 / (2 l^2)); k(x, x) = 1."""
    return np.exp(squared_distances(a, b) * (-0.5 / (lengthscale * lengthscale)))


def median_lengthscale(x: np.ndarray, max_points: int = 1000, seed: int = 0) -> float:
    """The median heuristic: the median pairwise distance of (a subsample of) the points.

    Falls back to 1.0 when every point is the same (the distances are all zero).
    """
    x = np.asarray(x, dtype=np.float64)
    if len(x) > max_points:
        x = x[np.random.default_rng(seed).choice(len(x), max_points, replace=False)]
    d2 = squared_distances(x, x)[np.triu_indices(len(x), k=1)]
    d2 = d2[d2 > 0]
    return float(np.sqrt(np.median(d2))) if len(d2) else 1.0


@dataclass(frozen=True)
class Standardizer:
    """Per-dimension (x - mean) / std, std floored so a constant dimension stays finite."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, floor: float = 1e-3) -> Standardizer:
        x = np.asarray(x, dtype=np.float64)
        return cls(x.mean(axis=0), np.maximum(x.std(axis=0), floor))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.std
