import importlib.metadata
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


# transformers 4.40.2 (the reference, verified stack) and transformers 5 (the hf extra, newest stack) never share an
# environment: each stack collects the transformers tests written for it, and `make test` runs both stacks
try:
    _TRANSFORMERS_MAJOR = int(importlib.metadata.version('transformers').split('.')[0])
except importlib.metadata.PackageNotFoundError:  # neither the test's reference nor the hf extra installed
    _TRANSFORMERS_MAJOR = None
collect_ignore = {None: ['test_transformers.py', 'test_hf.py'], 4: ['test_hf.py']}.get(
    _TRANSFORMERS_MAJOR, ['test_transformers.py'])
