"""The learner's metric window: each metric is the mean over the updates that reported it."""

from __future__ import annotations

import numpy as np
import pytest

from distrl.learners.learner import _Window


def test_a_metric_reported_every_third_update_is_not_diluted_by_the_others() -> None:
    window = _Window()
    for i in range(9):
        metrics = {"critic_loss": float(i)}
        if i % 3 == 2:  # an actor step every 3rd update (XQC), a shield fit every Nth
            metrics["actor_loss"] = 6.0
        window.add(metrics, wait_s=0.0, step_s=0.0, staleness=np.zeros(1, np.int64))
    out = window.flush({})
    assert out["critic_loss"] == pytest.approx(4.0)
    assert out["actor_loss"] == pytest.approx(6.0)  # was 2.0: divided by all 9 updates
