"""The conditional mean embedding of a transition kernel, estimated from (z = (x, a), x') pairs.

For a function f of the next state and a query z,

    E[f(x') | z]  ~  sum_i beta_i(z) f(x'_i),        beta(z) = (K + m lambda I)^-1 k(z),

with K = k(Z, Z) the Gram matrix of the m dictionary inputs. The estimate's error for an f of
RKHS norm ||f|| is bounded by ||f|| times a data-dependent factor; we use the usual one,
sigma(z) = sqrt(k(z, z) - k(z)^T (K + m lambda I)^-1 k(z)), which is ~0 where the dictionary is
dense and ~1 far from it (k(z, z) = 1 for the RBF kernel).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from distrl.algos.safety.kernels import rbf


class ConditionalMeanEmbedding:
    """beta(z) over a fixed dictionary of m inputs (already standardised); one Cholesky at fit."""

    def __init__(self, inputs: np.ndarray, lengthscale: float, regularization: float) -> None:
        if inputs.ndim != 2 or len(inputs) < 1:
            raise ValueError(f"the CME needs a [m, d] dictionary, got shape {inputs.shape}")
        if lengthscale <= 0 or regularization <= 0:
            raise ValueError("the CME needs a positive lengthscale and regularization")
        self.inputs = np.asarray(inputs, dtype=np.float64)
        self.lengthscale = float(lengthscale)
        self.regularization = float(regularization)
        m = len(self.inputs)
        gram = rbf(self.inputs, self.inputs, self.lengthscale)
        gram[np.diag_indices(m)] += m * self.regularization
        self._factor = cho_factor(gram, lower=True, check_finite=False)

    @property
    def size(self) -> int:
        return len(self.inputs)

    def kernel(self, z: np.ndarray) -> np.ndarray:
        """[q, d] -> k(z, Z) [q, m]."""
        return rbf(np.asarray(z, dtype=np.float64), self.inputs, self.lengthscale)

    def weights(self, z: np.ndarray) -> np.ndarray:
        """beta(z) for each query: [q, m]."""
        return cho_solve(self._factor, self.kernel(z).T, check_finite=False).T

    def solve(self, values: np.ndarray) -> np.ndarray:
        """g = (K + m lambda I)^-1 f(x'): then E[f(x') | z] = k(z, Z) g, O(m) per query."""
        return cho_solve(self._factor, np.asarray(values, dtype=np.float64), check_finite=False)

    def expectation(self, z: np.ndarray, values: np.ndarray) -> np.ndarray:
        """E[f(x') | z] [q] (or [q, k] for values [m, k]) given f at the dictionary's next states."""
        return self.kernel(z) @ self.solve(values)

    def error_scale(self, z: np.ndarray) -> np.ndarray:
        """sigma(z) [q] (see the module docstring)."""
        kz = self.kernel(z)
        quad = (kz * cho_solve(self._factor, kz.T, check_finite=False).T).sum(1)
        return np.sqrt(np.clip(1.0 - quad, 0.0, None))
