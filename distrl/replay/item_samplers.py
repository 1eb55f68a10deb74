"""The shard's item samplers: which stored items a table's sample draws. Each sees only slots and priorities.

Both follow one small interface (insert / update / delete / sample), so a table
is a composition, not a subclass. (The learner's side, which cuts learner
batches from what the shards send, is `prefetch`.)
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class NoPriorityMass(ValueError):
    """A prioritized sample from a table whose every stored item has priority 0.

    The shard answers FAILED_PRECONDITION: a priority update has to give an item more first.
    """


class ItemSampler(Protocol):
    name: str

    def insert(self, slots: np.ndarray) -> None: ...
    def update(self, slots: np.ndarray, priorities: np.ndarray) -> None: ...
    def delete(self, slots: np.ndarray) -> None: ...
    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """`n` slots drawn with replacement and their probabilities (None: all equally likely)."""
        ...

    def priorities(self, slots: np.ndarray) -> np.ndarray: ...


class UniformSampler:
    """Every stored item equally likely."""

    name = "uniform"

    def __init__(self, capacity: int) -> None:
        self._occupied = np.zeros(capacity, dtype=bool)
        self._count = 0
        self._high = 0  # one past the highest occupied slot ever

    def insert(self, slots: np.ndarray) -> None:
        self._occupied[slots] = True
        self._count = int(self._occupied.sum()) if len(slots) > 4096 else self._count + len(slots)
        if len(slots):
            self._high = max(self._high, int(slots.max()) + 1)

    def update(self, slots: np.ndarray, priorities: np.ndarray) -> None:
        pass

    def delete(self, slots: np.ndarray) -> None:
        self._occupied[slots] = False
        self._count -= len(slots)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, None]:
        # Probabilities are all 1/size: no array for them (readers fill it in when asked).
        if self._count == self._high:  # the ring's usual case: slots 0..high-1 all occupied
            # Scaled doubles: uniform to within high / 2**53, and half the cost of rng.integers.
            slots = (rng.random(n) * self._high).astype(np.int64)
            return np.minimum(slots, self._high - 1, out=slots), None
        return rng.choice(np.flatnonzero(self._occupied), size=n), None

    def priorities(self, slots: np.ndarray) -> np.ndarray:
        return np.ones(len(slots))


class SumTree:
    """A binary tree whose internal nodes hold the sum of their leaves; vectorised updates and search."""

    def __init__(self, capacity: int) -> None:
        self._leaves = 1 << max(0, int(capacity - 1).bit_length())
        self._tree = np.zeros(2 * self._leaves, dtype=np.float64)
        self._depth = self._leaves.bit_length() - 1

    @property
    def total(self) -> float:
        return float(self._tree[1])

    def values(self, slots: np.ndarray) -> np.ndarray:
        return self._tree[slots + self._leaves]

    def set(self, slots: np.ndarray, values: np.ndarray) -> None:
        nodes = np.unique(slots + self._leaves)
        self._tree[slots + self._leaves] = values
        for _ in range(self._depth):
            nodes = np.unique(nodes >> 1)
            self._tree[nodes] = self._tree[2 * nodes] + self._tree[2 * nodes + 1]

    def find(self, targets: np.ndarray) -> np.ndarray:
        """Leaf index whose prefix-sum interval holds each target in [0, total)."""
        nodes = np.ones(len(targets), dtype=np.int64)
        targets = targets.copy()
        for _ in range(self._depth):
            left = 2 * nodes
            left_sum = self._tree[left]
            # Rounding may leave a target past the left sum with an empty right subtree.
            go_right = (targets >= left_sum) & (self._tree[left + 1] > 0)
            targets -= np.where(go_right, left_sum, 0.0)
            nodes = left + go_right
        return nodes - self._leaves


class PrioritizedSampler:
    """P(i) = p_i^alpha / sum_j p_j^alpha; new items get the highest priority seen so far."""

    name = "prioritized"

    def __init__(self, capacity: int, priority_exponent: float) -> None:
        self.alpha = priority_exponent
        self._tree = SumTree(capacity)
        self._raw = np.zeros(capacity, dtype=np.float64)
        self.max_priority = 1.0

    def insert(self, slots: np.ndarray) -> None:
        self._raw[slots] = self.max_priority
        self._tree.set(slots, np.full(len(slots), self.max_priority**self.alpha))

    def update(self, slots: np.ndarray, priorities: np.ndarray) -> None:
        if len(slots) == 0:
            return
        self._raw[slots] = priorities
        self._tree.set(slots, priorities**self.alpha)
        self.max_priority = max(self.max_priority, float(priorities.max()))

    def delete(self, slots: np.ndarray) -> None:
        self._raw[slots] = 0.0
        self._tree.set(slots, np.zeros(len(slots)))

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        total = self._tree.total
        if total <= 0.0:
            raise NoPriorityMass("every stored item has priority 0: nothing to sample until one has more")
        # Stratified: one draw per equal slice of the total mass.
        targets = (np.arange(n) + rng.random(n)) * (total / n)
        slots = self._tree.find(np.minimum(targets, np.nextafter(total, 0.0)))
        return slots, self._tree.values(slots) / total

    def priorities(self, slots: np.ndarray) -> np.ndarray:
        return self._raw[slots]
