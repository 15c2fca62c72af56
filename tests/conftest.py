import os

import pytest
import torch

import efficientformer_timm  # noqa: F401  (registers the models before any test builds one)

# under pytest-xdist (`make test` runs one worker per core) each worker computes on one thread: two workers with two
# threads each would fight over the cores
THREADS = 1 if os.environ.get('PYTEST_XDIST_WORKER') else 2


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
