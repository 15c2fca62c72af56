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

from ..checkpoint import CheckpointError, read_file


def _is_mmengine_checkpoint(error: CheckpointError) -> bool:
    """The weights-only refusal of a readable file that pickles mmengine's training state."""
    cause = error.__cause__
    return isinstance(cause, pickle.UnpicklingError) and ('mmengine' in str(cause) or 'getattr' in str(cause))


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_local_checkpoint(filename, map_location=None):
    """Local files: safetensors, or torch.load (weights_only unless the file is an mmengine training
    checkpoint). A file that cannot be read raises the package's CheckpointError naming it."""
    filename = os.path.expanduser(filename)
    try:
        return read_file(filename, map_location)
    except CheckpointError as e:
        if not _is_mmengine_checkpoint(e):
            raise
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        checkpoint = torch.load(filename, map_location=map_location, weights_only=False)
    MMLogger.get_current_instance().info(
        f'{filename} is an mmengine training checkpoint (message hub, config): loaded with '
        'weights_only=False, as mmengine wrote it. Only load training checkpoints you trust.')
    return checkpoint
