"""Shared test helpers: the model names, random weights that exercise every tensor, and files made once per run."""
import os
import pathlib

import numpy as np
import torch
from filelock import FileLock

from efficientformer_timm.variants import EFFICIENTFORMER_ARCHS, MODEL_NAMES, V1_MODEL_NAMES, V2_MODEL_NAMES

V1_MODELS = list(V1_MODEL_NAMES)
V2_MODELS = list(V2_MODEL_NAMES)
ALL_MODELS = list(MODEL_NAMES)


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


def made_once(tmp_path_factory, name: str, make) -> pathlib.Path:
    """The path ``name`` in a folder all pytest-xdist workers of this run share, made by ``make(path)`` in the first
    worker that asks while the others wait for it (a file lock): work that several tests on any worker need is done
    once per run."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'):
        root = root.parent  # the run's folder, above each worker's own
    path = root / name
    with FileLock(str(path) + '.lock'):
        if not path.exists():
            partial = root / f'partial_{name}'  # a failed make leaves no path that looks made
            make(partial)
            os.replace(partial, path)
    return path


def fewer_blocks(name: str) -> dict:
    """``name``'s widths and kinds of blocks with one or two blocks a stage: V1's last stage keeps pooling blocks
    before its attention blocks (L7's has attention blocks only), and several of those where the variant has them;
    V2 keeps blocks of both MLP ratios and one attention block in stages 2 and 3."""
    if 'v2' in name:
        return dict(depths=(1, 1, 2, 2), num_vit=1, mlp_ratios=(4, 4, (3, 4), (3, 4)))
    arch = EFFICIENTFORMER_ARCHS[name.split('_')[-1]]
    num_vit = min(arch['num_vit'], 2)
    return dict(depths=(1, 1, 1, num_vit + (arch['depths'][3] > arch['num_vit'])), num_vit=num_vit)


def assert_same_contents(a, b, where: str = 'checkpoint') -> None:
    """Bit-identical nested checkpoint contents: tensors, numpy arrays and scalars, containers (dict keys in the same
    order), mmengine's message-hub buffers (by their attributes), other values by ==; ``where`` names a difference."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same_contents(a[k], b[k], f'{where}.{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_contents(x, y, f'{where}[{i}]')
    elif type(a).__name__ == 'HistoryBuffer':  # mmengine's; compared by its state
        assert_same_contents(vars(a), vars(b), f'{where}.__dict__')
    else:
        assert a == b, where
