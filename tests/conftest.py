"""Fixtures shared by the whole suite."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread: the models under test are tiny, and on a 2-core CI machine two torch
    threads fighting other processes are much slower than one."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
