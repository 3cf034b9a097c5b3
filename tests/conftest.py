import os
import sys
import warnings

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
# under pytest-xdist (-n N) the N workers share the cores: each gets its part
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))
warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and OpenMP threads slow down by
    orders of magnitude when other processes share the (2-core) machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
