import os
import random

import numba
import numpy as np
import pytest
import torch

# Tests must never reach the network (no weights can be downloaded here, and CI has no network either).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _cuda_with_gsplat() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def pytest_collection_modifyitems(config, items):
    if _cuda_with_gsplat():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU with gsplat (pip install perchead[cuda])")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny tensors run faster on one than on two threads fighting over a busy 2-core CPU.
    Modules that want it say ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


DETERMINISTIC_SEED = 0


@pytest.fixture
def deterministic():
    """For tests that train, optimise or sum floats in an order that depends on the thread count and then
    compare against a threshold: one torch thread and one numba thread (the CPU rasterizer's tiles and its
    per-thread gradient buffers), torch / numpy / random seeded with ``DETERMINISTIC_SEED``, and
    ``torch.use_deterministic_algorithms(True, warn_only=True)``; everything is restored afterwards (the
    random states included). The outcome then no longer depends on OMP_NUM_THREADS / NUMBA_NUM_THREADS or on
    what ran before; it can still depend on the CPU's kernels (AVX2 vs AVX-512 summation), which is why each
    such test states its margin. Modules say ``pytestmark = pytest.mark.usefixtures("deterministic")``."""
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    # numpy's legacy global state on purpose: it is what code that calls np.random.* without a Generator uses
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()  # noqa: NPY002
    numba_threads = numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    torch.manual_seed(DETERMINISTIC_SEED)
    np.random.seed(DETERMINISTIC_SEED)  # noqa: NPY002
    random.seed(DETERMINISTIC_SEED)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        torch.set_num_threads(threads)
        numba.set_num_threads(numba_threads)
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])  # noqa: NPY002
        random.setstate(states[2])
