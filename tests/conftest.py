import pytest
import torch

import efficientformer_timm  # noqa: F401  (registers the models before any test builds one)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(2)
