import torch

# Two cores, shared: keep intra-op threads modest so parallel jobs don't thrash.
torch.set_num_threads(min(2, torch.get_num_threads()))
