"""Fixtures several test modules use (pytest finds them here without an import)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: tiny networks on a shared 2-core machine otherwise spend
    their time in OpenMP barrier waits. Modules opt in with `pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
