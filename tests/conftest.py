import numpy as np
import pytest
import torch

import rmt

# torch and rmt run on one libgomp in this process (whichever libgomp.so.1 loads first serves
# both); each keeps its own thread count (rmt since e544eeb). Pin both.
torch.set_num_threads(2)
rmt.set_num_threads(2)


@pytest.fixture(params=rmt.available_isas())
def isa(request):
    """Runs a test once per instruction set this CPU has (avx512, avx2, scalar)."""
    previous = rmt.get_isa()
    rmt.set_isa(request.param)
    yield request.param
    rmt.set_isa(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
