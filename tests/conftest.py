import os

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
