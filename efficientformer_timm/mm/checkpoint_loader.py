"""mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; torch >= 2.6 then refuses the checkpoints
mmengine itself writes (``--resume``, ``load_from``, ``mim test``): "Unsupported global: ...HistoryBuffer".

Instead of turning the safe loader off, the local scheme is replaced by one that keeps ``weights_only=True``
and allows exactly the types mmengine puts in a checkpoint (message hub buffers, numpy scalars / arrays).
"""
import os

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader


def _numpy_globals():
    from numpy.core.multiarray import _reconstruct, scalar
    dtypes = [type(np.dtype(t)) for t in ('float16', 'float32', 'float64', 'int8', 'int16', 'int32', 'int64',
                                          'uint8', 'bool')]
    return [_reconstruct, scalar, np.ndarray, np.dtype, *dtypes]


MMENGINE_SAFE_GLOBALS = [HistoryBuffer, *_numpy_globals()]


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_local_checkpoint(filename, map_location=None):
    """Local files: safetensors, or torch.load with weights_only=True and mmengine's checkpoint types allowed."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    if filename.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(filename, device=str(map_location or 'cpu'))
    with torch.serialization.safe_globals(MMENGINE_SAFE_GLOBALS):
        return torch.load(filename, map_location=map_location, weights_only=True)
