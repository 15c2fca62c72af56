"""Reading checkpoint files: torch / safetensors files, the state dict inside their containers, the weights file of
a transformers folder, and writing a file so that a failure leaves nothing behind."""
import contextlib
import os
import pickle
import tempfile
from typing import Dict, List, Tuple

import torch
from safetensors.torch import load_file
from timm.models import clean_state_dict

from .report import CheckpointError

__all__ = ['read_file', 'unwrap_state_dict', 'read_checkpoint', 'transformers_weights_file', 'atomic_output']

TRANSFORMERS_WEIGHTS = ('model.safetensors', 'pytorch_model.bin')


def read_file(path, map_location='cpu'):
    """The object in a .pth/.pt/.bin (torch, loaded with ``weights_only=True``) or .safetensors file.

    Raises FileNotFoundError for a missing file and CheckpointError naming the file for one that cannot be read
    (truncated, not a checkpoint) or pickles more than tensors, containers and the globals allowed with
    ``torch.serialization.safe_globals`` (naming those globals; nothing in the file is run); the reader's own
    exception is its ``__cause__``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    try:
        if path.endswith('.safetensors'):
            return load_file(path, device=str(map_location or 'cpu'))
        return torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError as e:  # an allowed global refused what the file asked of it
        raise CheckpointError(f'cannot read checkpoint {path}: {e}') from e
    except pickle.UnpicklingError as e:
        refused = _refused_globals(path)
        if not refused:
            raise CheckpointError(_unreadable(path, e)) from e
        raise CheckpointError(
            f'cannot read checkpoint {path}: it pickles {", ".join(refused)}, which a weights-only load does not '
            'allow: unpickling a global can run code, so nothing in the file was run. Load only checkpoints from a '
            'source you trust; to use one you trust, allow the globals it names with '
            'torch.serialization.add_safe_globals before loading it (a training checkpoint to resume), or load it '
            'once with torch.load(..., weights_only=False) and torch.save its state dict, which loads here.') from e
    except Exception as e:  # torch / safetensors raise many types for truncated or foreign files
        raise CheckpointError(_unreadable(path, e)) from e


def _unreadable(path: str, error: Exception) -> str:
    return (f'cannot read checkpoint {path}: {type(error).__name__}: {error}. The file may be truncated or not a '
            'PyTorch / safetensors checkpoint; download it again.')


def _refused_globals(path: str) -> List[str]:
    """The globals in a torch file's pickle that a weights-only load refuses now (none for a file torch cannot
    read that far)."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip-format torch file, or a pickle torch's scanner cannot step through
        return []


def unwrap_state_dict(obj, source: str) -> Dict[str, torch.Tensor]:
    """The state dict inside a checkpoint object: ``state_dict`` / ``model`` containers unwrapped, a DDP
    ``module.`` prefix removed (timm's ``clean_state_dict``). CheckpointError when ``source`` (a file name, for
    the message) holds none."""
    if isinstance(obj, dict):
        for key in ('state_dict', 'model'):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f'{source} holds no state dict of tensors (found {type(obj).__name__})')
    return clean_state_dict(obj)


def read_checkpoint(path) -> Dict[str, torch.Tensor]:
    """Read a .pth/.pt/.bin (torch) or .safetensors file and unwrap ``state_dict`` / ``model`` containers."""
    return unwrap_state_dict(read_file(path), os.fspath(path))


def transformers_weights_file(folder) -> str:
    """The weights file of a transformers ``save_pretrained`` folder (safetensors first)."""
    for name in TRANSFORMERS_WEIGHTS:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f'no {" or ".join(TRANSFORMERS_WEIGHTS)} in {folder}')


@contextlib.contextmanager
def atomic_output(dst: str, inputs: Tuple[str, ...] = ()):
    """Yield a temporary path next to ``dst`` and move it onto ``dst`` only if the block succeeds, so a failed
    write leaves no half file. Refuses to write over any of ``inputs``."""
    dst_abs = os.path.abspath(dst)
    if any(dst_abs == os.path.abspath(p) for p in inputs):
        raise ValueError(f'refusing to overwrite the input {dst}: choose another output path')
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst_abs), prefix='.' + os.path.basename(dst), suffix='.tmp')
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
