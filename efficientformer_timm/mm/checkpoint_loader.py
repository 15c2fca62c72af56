"""mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; torch >= 2.6 then refuses the checkpoints
mmengine itself writes (``--resume``, ``load_from``, ``mim test``): "Unsupported global: ...HistoryBuffer".

The local scheme is replaced by one that loads weight files (timm, converted, safetensors) with
``weights_only=True``. mmengine training checkpoints pickle the message hub (``HistoryBuffer`` and its
statistics methods, reached through ``getattr``) and cannot be read that way without allowing ``getattr``,
which would void the safe loader; for those, and only those, it falls back to a full load, as every torch
before 2.6 did, and says so.
"""
import os
import pickle
import warnings

import torch
from mmengine.logging import MMLogger
from mmengine.runner.checkpoint import CheckpointLoader


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_local_checkpoint(filename, map_location=None):
    """Local files: safetensors, or torch.load (weights_only unless the file is an mmengine training
    checkpoint)."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    if filename.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(filename, device=str(map_location or 'cpu'))
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if 'mmengine' not in str(e) and 'getattr' not in str(e):  # not the shape of an mmengine checkpoint
            raise
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        checkpoint = torch.load(filename, map_location=map_location, weights_only=False)
    MMLogger.get_current_instance().info(
        f'{filename} is an mmengine training checkpoint (message hub, config): loaded with '
        'weights_only=False, as mmengine wrote it. Only load training checkpoints you trust.')
    return checkpoint
