"""Converting a checkpoint file into a file this package's models load directly: ``convert_file``, the function
behind ``tools/convert_checkpoint.py``. It tells the kinds of file apart and hands each to the code that knows it:
the weight layouts (``efficientformer_timm.checkpoint``), a transformers folder's config
(``efficientformer_timm.transformers_compat``) and the authors' detectors and segmenters
(``efficientformer_timm.mm.released``, with the OpenMMLab stack)."""
import os
from typing import Optional

import timm

from .checkpoint import convert_state_dict, infer_model_name, read_checkpoint, save_tensors, to_timm_keys
from .checkpoint import transformers_weights_file
from .transformers_compat import model_args_from_transformers_config

__all__ = ['convert_file']


def convert_file(src: str, dst: str, model_name: Optional[str] = None) -> str:
    """Write the checkpoint ``src`` converted to ``dst``; returns what it is a checkpoint of.

    ``src``: a classification checkpoint (timm, the authors' release, or transformers; a file or a transformers
    ``save_pretrained`` folder), written in timm format (returns the model name); or one of the authors' trained
    Mask R-CNN / Semantic FPN checkpoints, written as an mmengine checkpoint of the model its released config
    (``mm_configs/released``, shipped with the package) builds (needs the ``mm`` extra; returns that config's
    path). ``model_name`` overrides the variant read from the tensor shapes. Every tensor is checked against the
    model; the file is written atomically, never over ``src``."""
    src_file = transformers_weights_file(src) if os.path.isdir(src) else src
    state_dict = read_checkpoint(src_file)
    if any(k.startswith('backbone.') for k in state_dict):
        try:
            from .mm.released import convert_released_file
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
