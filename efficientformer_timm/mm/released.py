"""The authors' trained Mask R-CNN (COCO) and Semantic FPN (ADE20K) checkpoints, saved by mmdet 2.19 / mmseg 0.x,
as checkpoints of the models the released configs (``mm_configs/released``) build in mmdet 3 / mmseg 1.

Their backbones are the original-release layout (``backbone.patch_embed``, ``backbone.network.N``, output norms
``backbone.normN``) whose attentions carry two bias sets: the trained ``attention_biases_seg`` table (with its
index ``attention_bias_idxs_seg``) for the fixed grid of their input size, and the ``attention_biases`` /
``attention_bias_idxs`` buffers of the classification model, which their forward never reads. The trained set
becomes the backbone's fixed-grid bias table; the unread buffers are dropped and reported. Necks and heads keep
their names: FPN, RPNHead, Shared2FCBBoxHead, FCNMaskHead and FPNHead name their tensors in mmdet 3.3 / mmseg 1.2
as they did in mmdet 2.19 / mmseg 0.x. Every tensor is checked against the model built from the config.
"""
import logging
import os
import re
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..checkpoint import CheckpointError, convert_with_report, infer_model_name, original_to_timm, save_tensors
from ..checkpoint.report import listed
from ..variants import MODEL_NAMES
from .configs import config_path

__all__ = ['RELEASED_TASKS', 'released_task', 'released_config_name', 'model_name_of', 'convert_released_checkpoint',
           'convert_released_file']

_logger = logging.getLogger(__name__)

# task: (config prefix, dataset, the input size in pixels the authors' bias grid was made for, default scope)
RELEASED_TASKS = {
    'detection': ('maskrcnn', 'coco', 800, 'mmdet'),
    'segmentation': ('semfpn', 'ade20k', 512, 'mmseg'),
}
_BACKBONE = 'backbone.'
_UNREAD_BIAS = re.compile(r'\.(attention_biases|attention_bias_idxs)$')


def released_task(state_dict: Dict[str, torch.Tensor]) -> Optional[str]:
    """'detection' or 'segmentation' for a whole mmdet / mmseg model checkpoint with an EfficientFormer backbone,
    None for anything else."""
    if not any(k.startswith(_BACKBONE) for k in state_dict):
        return None
    if any(k.startswith(('rpn_head.', 'roi_head.')) for k in state_dict):
        return 'detection'
    if any(k.startswith('decode_head.') for k in state_dict):
        return 'segmentation'
    return None


def released_config_name(model_name: str, task: str) -> str:
    """The file name in ``mm_configs/released`` for ``model_name`` (e.g. maskrcnn_v2_s0_coco.py)."""
    if model_name not in MODEL_NAMES:
        raise ValueError(f'unknown model {model_name!r}; valid: {MODEL_NAMES}')
    prefix, dataset = RELEASED_TASKS[task][:2]
    short = model_name.replace('efficientformerv2_', 'v2_').replace('efficientformer_', '')
    return f'{prefix}_{short}_{dataset}.py'


def _backbone_to_release_layout(backbone: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """The trained fixed-grid bias set under the names the classification release uses; the unread set dropped."""
    seg_modules = {k[:-len('.attention_biases_seg')] for k in backbone if k.endswith('.attention_biases_seg')}
    if not seg_modules:
        raise CheckpointError(
            'the backbone has no attention_biases_seg tables: not a checkpoint of the authors\' detection / '
            'segmentation backbones (a classification checkpoint goes into init_cfg instead)')
    out, dropped = {}, []
    for key, value in backbone.items():
        m = _UNREAD_BIAS.search(key)
        if m and key[:m.start()] in seg_modules:
            dropped.append(_BACKBONE + key)
        else:
            out[key.replace('attention_biases_seg', 'attention_biases').replace(
                'attention_bias_idxs_seg', 'attention_bias_idxs')] = value
    return out, dropped


def model_name_of(state_dict: Dict[str, torch.Tensor]) -> str:
    """The EfficientFormer variant of a released checkpoint's backbone."""
    backbone = {k[len(_BACKBONE):]: v for k, v in state_dict.items() if k.startswith(_BACKBONE)}
    return infer_model_name(_backbone_to_release_layout(backbone)[0])


def convert_released_checkpoint(
        state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """The authors' whole-model checkpoint -> ``model``'s state dict (``model``: the detector or segmentor built
    from the released config). Returns (converted, dropped checkpoint keys); raises CheckpointError naming every
    tensor that has no place, is missing or has another shape."""
    backbone = {k[len(_BACKBONE):]: v for k, v in state_dict.items() if k.startswith(_BACKBONE)}
    release, dropped = _backbone_to_release_layout(backbone)
    network = model.backbone.model
    target = network.state_dict()
    grids = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}'
             for k, v in original_to_timm(release)[0].items()
             if k.endswith('attention_biases') and k in target and v.shape != target[k].shape]
    if grids:  # convert_with_report would resize them: a checkpoint of another grid is another model
        raise CheckpointError(
            'attention bias tables of another grid than the config\'s fixed_grid_bias_resolution (a checkpoint made '
            f'for another input size?): {grids[:5]}')
    try:
        converted, report = convert_with_report(release, network)
    except CheckpointError as e:
        raise CheckpointError(f'backbone: {e}') from e
    out = {'backbone.model.' + k: v for k, v in converted.items()}
    dropped += [_BACKBONE + k for k in report.dropped]

    model_state = model.state_dict()
    rest = {k: v for k, v in state_dict.items() if not k.startswith(_BACKBONE)}
    unused = [k for k in rest if k not in model_state]
    wrong = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(model_state[k].shape)}'
             for k, v in rest.items() if k in model_state and v.shape != model_state[k].shape]
    out.update({k: v for k, v in rest.items() if k in model_state})
    missing = [k for k in model_state if k not in out]
    problems = []
    if unused:
        problems.append(listed('checkpoint tensors with no place in the model', unused, limit=20))
    if wrong:
        problems.append(listed('tensors of another shape (another class count or neck width?)', wrong, limit=20))
    if missing:
        problems.append(listed('model tensors missing from the checkpoint (truncated?)', missing, limit=20))
    if problems:
        raise CheckpointError(' | '.join(problems))
    return out, dropped


def convert_released_file(state_dict: Dict[str, torch.Tensor], src: str, dst: str,
                          model_name: Optional[str] = None) -> str:
    """Write the authors' checkpoint ``state_dict`` (read from ``src``) to ``dst`` as an mmengine checkpoint of the
    model its released config builds; returns the path of that config (one the package ships)."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    task = released_task(state_dict)
    if task is None:
        raise CheckpointError(f'{src}: a backbone with neither Mask R-CNN heads (rpn_head / roi_head) nor a '
                              'Semantic FPN decode_head; only the authors\' COCO and ADE20K models convert')
    name = 'released/' + released_config_name(model_name or model_name_of(state_dict), task)
    config = config_path(name)
    init_default_scope(RELEASED_TASKS[task][3])
    out, dropped = convert_released_checkpoint(state_dict, MODELS.build(Config.fromfile(config).model))
    _logger.info('dropped %d tensors the authors\' forward never reads: %s', len(dropped), ', '.join(dropped))
    save_tensors(out, dst, inputs=(src,), metadata={'config': name, 'converted_from': os.path.basename(src)},
                 container='state_dict')
    return config
