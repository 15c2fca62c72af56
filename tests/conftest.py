import pytest
import torch

import efficientformer_timm  # noqa: F401  (registers the models)

V1_MODELS = ['efficientformer_l1', 'efficientformer_l3', 'efficientformer_l7']
V2_MODELS = ['efficientformerv2_s0', 'efficientformerv2_s1', 'efficientformerv2_s2', 'efficientformerv2_l']
ALL_MODELS = V1_MODELS + V2_MODELS


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and float buffer (BN statistics, attention biases, layer scales) random values,
    so that parity checks exercise all of them rather than their zero / one initialisation."""
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if not tensor.is_floating_point():
            continue
        if name.endswith('running_var'):
            tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
        elif name.endswith(('gamma', 'layer_scale_1', 'layer_scale_2')):
            tensor.copy_(torch.rand(tensor.shape, generator=gen) * 0.5 + 0.1)
        elif name.endswith('attention_biases'):
            tensor.copy_(torch.randn(tensor.shape, generator=gen))
        else:
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
    return model


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(2)
