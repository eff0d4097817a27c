import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run toy tests on one thread: on the shared 2-core machine, two-thread ops stall behind other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
