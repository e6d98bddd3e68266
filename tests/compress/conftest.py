"""Fixtures shared by the compress tests."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """These tensors are tiny: on a shared CPU, 2+ threads spin-wait and run 10-50x slower than one.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``; the thread count is restored."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
