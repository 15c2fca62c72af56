"""Checking a checkpoint (any layout) against a model and converting it to the model's keys.

``convert_with_report(state_dict, model)`` maps the checkpoint to the model's own (timm) keys and checks the
result against the model: a tensor that lands nowhere, a missing tensor or a wrong shape raises
``CheckpointError`` naming the keys. The few deliberate exceptions are logged, never silent: per-output feature
norms absent from a classification checkpoint are kept at their identity-like initialisation, and classifier heads
are dropped when the model has none.
"""
import logging
import math
import os
import re
from typing import Dict, List, Tuple

import torch
from timm.models import adapt_input_conv
from timm.models._features import FeatureDictNet
from torch import nn

from .._bias import relative_offset_index, resize_offset_table
from .files import read_checkpoint
from .formats import infer_model_name, to_timm_keys, v2_bias_index
from .report import CheckpointError, LoadReport, listed

_logger = logging.getLogger(__name__)

__all__ = ['convert_with_report', 'convert_state_dict', 'load_checkpoint']

# attention modules whose index buffer timm does not save (derived from the table size)
_V2_DERIVED = re.compile(r'(token_mixer|downsample\.attn)\.attention_bias_idxs$')
_HEAD = re.compile(r'head(_dist)?\.')
_FIRST_CONV = ('stem.conv1.weight', 'stem.conv1.conv.weight')  # V1, V2
# timm's FeatureListNet (V2 features_only) flattens the stem and stages: ``stem.conv1.`` is ``stem_conv1.``
_FLAT_PREFIX = re.compile(r'^(stem|stages)[._](\w+)\.')


def _flatten_key(key: str) -> str:
    return _FLAT_PREFIX.sub(r'\1_\2.', key)


def _unflatten_key(key: str) -> str:
    return _FLAT_PREFIX.sub(r'\1.\2.', key)


def _num_stages(model: nn.Module) -> int:
    if isinstance(model, FeatureDictNet):
        return sum(1 for name in model.keys() if name.startswith('stages_'))
    return len(model.stages)


def _pruned(key: str, model: nn.Module) -> bool:
    """Key of a part that a features_only model does not build (pruned stages, norms and heads)."""
    m = re.match(r'stages\.(\d+)\.', key)
    if m:
        return int(m.group(1)) >= _num_stages(model)
    if isinstance(model, FeatureDictNet):  # only the stem and the stages up to the last output
        return key.startswith(('norm.', 'feature_norms.'))
    m = re.match(r'feature_norms\.(\d+)\.', key)
    if m:
        norms = getattr(model, 'feature_norms', None)
        return norms is None or isinstance(norms[int(m.group(1))], nn.Identity)
    return key.startswith('norm.') and isinstance(model.norm, nn.Identity)


def _other_in_chans(key: str, value: torch.Tensor, target: torch.Tensor) -> bool:
    """The stem's first conv made for another number of input channels (the rest of its shape equal)."""
    return key in _FIRST_CONV and value.ndim == 4 and value.shape[:1] + value.shape[2:] == target.shape[:1] + \
        target.shape[2:]


def _square_side(table: torch.Tensor) -> int:
    """The side of a (heads, side * side) offset table; 0 when the table is not square."""
    side = math.isqrt(table.shape[-1]) if table.ndim == 2 else 0
    return side if side * side == table.shape[-1] else 0


def _other_bias_grid(key: str, value: torch.Tensor, target: torch.Tensor) -> bool:
    """An attention bias table (same heads) learned for another square grid, or the index of such a table."""
    if key.endswith('attention_biases'):
        return value.shape[0] == target.shape[0] and value.shape != target.shape and \
            _square_side(value) > 0 and _square_side(target) > 0
    if key.endswith('attention_bias_idxs') and value.shape != target.shape and value.ndim == 2:
        side = math.isqrt(value.shape[1])
        return side * side == value.shape[1] and torch.equal(value, relative_offset_index((side, side)))
    return False


def _mismatch(key: str, value: torch.Tensor, target: torch.Tensor) -> str:
    """Why ``value`` cannot replace ``target`` ('' if it can)."""
    if value.shape != target.shape:
        return f'{key}: checkpoint {tuple(value.shape)} vs model {tuple(target.shape)}'
    if value.is_floating_point() != target.is_floating_point():
        return f'{key}: checkpoint dtype {value.dtype} vs model {target.dtype}'
    if key.endswith('attention_bias_idxs') and not torch.equal(value.to(target), target):
        return f"{key}: index table differs from the model's relative-offset layout"
    return ''


def _place(converted: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor], model: nn.Module,
           report: LoadReport, pass_other_classifier: bool) -> Tuple[Dict[str, torch.Tensor], List[str], List[str]]:
    """Sort timm-keyed tensors into loaded (returned), dropped (in ``report``), wrongly shaped and unused."""
    has_head = isinstance(getattr(model, 'head', None), nn.Linear)
    out, wrong, unused = {}, [], []
    for key, value in converted.items():
        if pass_other_classifier and _HEAD.match(key) and key in target:
            out[key] = value  # timm's loader drops another class count itself
        elif key not in target:
            if (_HEAD.match(key) and not has_head) or _pruned(key, model):
                report.dropped.append(key)
            elif _V2_DERIVED.search(key):  # the release saves the index V2 derives: check it, then drop it
                biases_key = key[:-len('attention_bias_idxs')] + 'attention_biases'
                biases = converted.get(biases_key)
                if biases is None or not torch.equal(value, v2_bias_index(biases_key, biases)):
                    wrong.append(f"{key}: index table differs from the model's relative-offset layout")
                else:
                    report.dropped.append(key)
            else:
                unused.append(key)
        elif _other_in_chans(key, value, target[key]):
            if not pass_other_classifier:  # timm's loader adapts it itself
                _logger.info('adapting %s from %d to %d input channels (timm adapt_input_conv)',
                             key, value.shape[1], target[key].shape[1])
                value = adapt_input_conv(target[key].shape[1], value)
            out[key] = value
        elif _other_bias_grid(key, value, target[key]):
            if key.endswith('attention_bias_idxs'):  # the model keeps the index of its own grid
                report.dropped.append(key)
                out[key] = target[key]
                continue
            src, dst = _square_side(value), _square_side(target[key])
            _logger.info('resizing %s from a %dx%d to a %dx%d grid (antialiased bicubic over offsets)',
                         key, src, src, dst, dst)
            out[key] = resize_offset_table(value, (src, src), (dst, dst))
        elif problem := _mismatch(key, value, target[key]):
            wrong.append(problem)
        else:
            out[key] = value
    report.loaded += list(out)
    return out, wrong, unused


def _keep_initial_feature_norms(missing: List[str], target: Dict[str, torch.Tensor], out: Dict[str, torch.Tensor],
                                report: LoadReport) -> List[str]:
    """Classification checkpoints have no per-output norms: keep the model's own, say so, return the rest."""
    norms = [k for k in missing if k.startswith('feature_norms.')]
    if norms:
        report.initialised += norms
        _logger.warning(
            'checkpoint has no per-output feature norms; keeping their identity-like initialisation '
            '(weight 1, bias 0) for: %s', ', '.join(sorted({k.rsplit('.', 1)[0] for k in norms})))
        out.update({k: target[k] for k in norms})
    return [k for k in missing if not k.startswith('feature_norms.')]


def _problems(state_dict, model, fmt, unknown, wrong, unused, missing) -> List[str]:
    problems = []
    if unknown:
        problems.append(listed(f'keys not recognised as {fmt} EfficientFormer keys', unknown))
    if wrong:
        guess = ''
        try:
            guess = f' The checkpoint looks like {infer_model_name(state_dict)}.'
        except CheckpointError:
            pass
        problems.append(listed(f'{len(wrong)} tensors do not match the model ({type(model).__name__}).{guess} '
                               'Shapes', wrong, limit=20))
    if unused:
        problems.append(listed('checkpoint tensors with no place in the model', unused))
    if missing:
        problems.append(listed('model tensors missing from the checkpoint', missing))
    return problems


def convert_with_report(
        state_dict: Dict[str, torch.Tensor], model: nn.Module, strict: bool = True,
        pass_other_classifier: bool = False) -> Tuple[Dict[str, torch.Tensor], LoadReport]:
    """Map ``state_dict`` (any supported format) onto ``model``'s keys, checked against the model; returns the
    converted state dict and a report of what was loaded, initialised, dropped and skipped.

    strict=True raises CheckpointError for any unknown, unused, missing or wrongly shaped tensor (other than
    the logged exceptions in the module docstring); strict=False leaves those out with one warning listing
    them. Tensors the model lacks and does not need (its missing classifier) are dropped with a log line.
    A stem convolution made for another number of input channels is adapted with timm's ``adapt_input_conv``
    (as timm's pretrained loader does), with a log line.
    ``pass_other_classifier`` is set by timm's pretrained loader, which calls this as its filter: classifier
    tensors of another class count and a stem convolution of another input-channel count pass through
    unchanged, because that loader drops the former (``num_classes`` differs) and adapts the latter itself.
    """
    converted, unknown, fmt = to_timm_keys(state_dict)
    report = LoadReport(fmt)
    flat = isinstance(model, FeatureDictNet)
    target = {_unflatten_key(k): v for k, v in model.state_dict().items()} if flat else model.state_dict()
    out, wrong, unused = _place(converted, target, model, report, pass_other_classifier)
    missing = _keep_initial_feature_norms(
        [k for k in target if k not in out and k not in converted], target, out, report)
    if report.dropped:
        _logger.info('checkpoint tensors this model does not use (no classifier, pruned for features_only, '
                     'derived index buffers): %s', ', '.join(report.dropped))
    problems = _problems(state_dict, model, fmt, unknown, wrong, unused, missing)
    if problems:
        if strict:
            raise CheckpointError(f'{fmt}-format checkpoint does not fit the model: ' + ' | '.join(problems))
        report.skipped += unknown + unused + [w.split(':')[0] for w in wrong] + missing
        _logger.warning('strict=False: loading %d tensors, skipping: %s', len(out), ' | '.join(problems))
    return ({_flatten_key(k): v for k, v in out.items()} if flat else out), report


def convert_state_dict(state_dict: Dict[str, torch.Tensor], model: nn.Module, strict: bool = True,
                       pass_other_classifier: bool = False) -> Dict[str, torch.Tensor]:
    """The converted state dict of ``convert_with_report`` (timm's pretrained filter signature)."""
    return convert_with_report(state_dict, model, strict, pass_other_classifier)[0]


def load_checkpoint(model: nn.Module, checkpoint, strict: bool = True) -> LoadReport:
    """Load a checkpoint (path or state dict, any supported format) into an EfficientFormer model or a
    ``features_only`` wrapper of one. Returns what was loaded, initialised, dropped and skipped."""
    target = getattr(model, 'model', model)  # timm's FeatureGetterNet keeps the network as .model
    state_dict = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    converted, report = convert_with_report(state_dict, target, strict=strict)
    target.load_state_dict(converted, strict=strict)
    return report
