import pytest
import torch

from pyramidal_wan.data.cache import CacheSettings, prepare_data
from pyramidal_wan.toy.dataset import make_dataset
from pyramidal_wan.toy.text import build_text_encoder, build_tokenizer
from pyramidal_wan.toy.vae import build_vae


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread per test: tests use tiny models, and on a shared 2-core machine two-thread ops
    stall behind other jobs (measured up to 40x slower). Tests that time or spawn work set their own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """Six toy clips through a random toy VAE: a real prepare-data cache with all three stages."""
    root = tmp_path_factory.mktemp("cache")
    make_dataset(root / "data", n=6, progress=False)
    prepare_data(
        root / "data",
        root / "cache",
        build_vae(0),
        build_tokenizer(),
        build_text_encoder(0),
        CacheSettings(17, 64, 64),
        shard_size=4,
        batch_size=3,
        progress=False,
    )
    return root / "cache"
