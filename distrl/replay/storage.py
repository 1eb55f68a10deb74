"""Preallocated ring storage: one numpy array per field, `capacity` items each."""

from __future__ import annotations

import numpy as np

from distrl.replay.spec import TableSpec

EMPTY = -1


class RingStorage:
    """Holds items in fixed slots; each occupied slot remembers the key of its item.

    A key is the item's insertion counter, so `key % capacity` is its slot and
    a stale key (its slot since overwritten) is recognised by comparing keys.
    """

    def __init__(self, spec: TableSpec, capacity: int) -> None:
        self.spec = spec
        self.capacity = capacity
        self.fields = {name: np.zeros((capacity, *f.shape), dtype=f.dtype) for name, f in spec.fields.items()}
        self.keys = np.full(capacity, EMPTY, dtype=np.int64)
        self.policy_version = np.zeros(capacity, dtype=np.int64)
        self.next_key = 0
        self.size = 0

    def write(self, slots: np.ndarray, batch: dict[str, np.ndarray], policy_version: int) -> np.ndarray:
        """Write one item per slot (slots must be free); returns the new items' keys."""
        n = len(slots)
        keys = np.arange(self.next_key, self.next_key + n, dtype=np.int64)
        for name, arr in self.fields.items():
            arr[slots] = batch[name]
        self.keys[slots] = keys
        self.policy_version[slots] = policy_version
        self.next_key += n
        self.size += n
        return keys

    def free(self, slots: np.ndarray) -> None:
        self.keys[slots] = EMPTY
        self.size -= len(slots)

    def read(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        return {name: arr[slots] for name, arr in self.fields.items()}

    def occupied(self, slots: np.ndarray) -> np.ndarray:
        return self.keys[slots] != EMPTY

    def live_slots(self, keys: np.ndarray) -> np.ndarray:
        """Slots of the keys whose items are still stored (others dropped)."""
        slots = keys % self.capacity
        return slots[self.keys[slots] == keys]

    def slots_oldest_first(self) -> np.ndarray:
        slots = np.flatnonzero(self.keys != EMPTY)
        return slots[np.argsort(self.keys[slots], kind="stable")]


class FifoRemover:
    """Chooses where the next items go: the slots after the newest, evicting the oldest when full."""

    def select(self, storage: RingStorage, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (slots to write, the occupied ones among them that must be evicted first)."""
        slots = (storage.next_key + np.arange(n, dtype=np.int64)) % storage.capacity
        evict = slots[storage.occupied(slots)]
        return slots, evict
