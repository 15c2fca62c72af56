import importlib.metadata

import pytest
import torch

import efficientformer_timm  # noqa: F401  (registers the models before any test builds one)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(2)


# transformers 4.40.2 (the reference, verified stack) and transformers 5 (the hf extra, newest stack) never share an
# environment: each stack collects the transformers tests written for it, and `make test` runs both stacks
_TRANSFORMERS_MAJOR = int(importlib.metadata.version('transformers').split('.')[0])
collect_ignore = ['test_transformers.py'] if _TRANSFORMERS_MAJOR >= 5 else ['test_hf.py']
