import os
import sys
import warnings

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and OpenMP threads slow down by
    orders of magnitude when other processes share the (2-core) machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
