"""Converting a checkpoint file into a file this package's models load directly: ``convert_file``, the function
behind ``tools/convert_checkpoint.py``."""
import os
from typing import Dict, Optional

import timm
import torch
from safetensors.torch import save_file

from .convert import convert_state_dict
from .files import atomic_output, read_checkpoint, transformers_weights_file
from .formats import infer_model_name, to_timm_keys

__all__ = ['convert_file', 'save_tensors']


def save_tensors(tensors: Dict[str, torch.Tensor], dst: str, inputs=(), metadata: Optional[dict] = None,
                 container: Optional[str] = None) -> None:
    """Write ``tensors`` to ``dst`` atomically and never over one of ``inputs``: safetensors when ``dst`` ends in
    .safetensors (``metadata`` in its header), else ``torch.save`` (under ``container`` with ``metadata`` as
    ``meta`` when a container is named, the plain dict otherwise)."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    with atomic_output(dst, inputs=inputs) as tmp:
        if dst.endswith('.safetensors'):
            save_file(tensors, tmp, metadata={'format': 'pt', **(metadata or {})})
        else:
            torch.save({container: tensors, 'meta': metadata or {}} if container else tensors, tmp)


def convert_file(src: str, dst: str, model_name: Optional[str] = None) -> str:
    """Write the checkpoint ``src`` converted to ``dst``; returns what it is a checkpoint of.

    ``src``: a classification checkpoint (timm, the authors' release, or transformers; a file or a transformers
    ``save_pretrained`` folder), written in timm format (returns the model name); or one of the authors' trained
    Mask R-CNN / Semantic FPN checkpoints, written as an mmengine checkpoint of the model its config in
    ``mm_configs/released`` builds (needs the ``mm`` extra; returns that config's path). ``model_name`` overrides
    the variant read from the tensor shapes. Every tensor is checked against the model; the file is written
    atomically, never over ``src``."""
    from ..transformers_compat import model_args_from_transformers_config
    src_file = transformers_weights_file(src) if os.path.isdir(src) else src
    state_dict = read_checkpoint(src_file)
    if any(k.startswith('backbone.') for k in state_dict):
        try:
            from ..mm.released import convert_released_file
        except ImportError as e:
            raise ImportError(f'{src} is a detector / segmenter checkpoint: converting it needs the OpenMMLab stack '
                              f'(install the package with its `mm` extra, as `make demo` does): {e}') from e
        return convert_released_file(state_dict, src, dst, model_name)
    model_name = model_name or infer_model_name(state_dict)
    kwargs = {}
    if os.path.isdir(src) and os.path.isfile(os.path.join(src, 'config.json')):
        model_name, kwargs = model_args_from_transformers_config(src)
    timm_keys = to_timm_keys(state_dict)[0]
    head = timm_keys.get('head.weight')
    kwargs.setdefault('num_classes', head.shape[0] if head is not None else 0)
    kwargs.setdefault('distillation', 'head_dist.weight' in timm_keys)
    kwargs.setdefault('feature_norm', any(k.startswith('feature_norms.') for k in timm_keys))
    model = timm.create_model(model_name, **kwargs)
    save_tensors(convert_state_dict(state_dict, model), dst, inputs=(src, src_file), metadata={'model': model_name})
    return model_name
