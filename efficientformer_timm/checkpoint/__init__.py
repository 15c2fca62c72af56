"""Checkpoints in timm's, the authors' original and transformers' layouts: reading files (``files``), the layouts
and their key tables (``formats``), converting with a check against the model (``convert``) and writing the
result (``write``). Converting a whole file of any kind: ``efficientformer_timm.convert.convert_file``."""
from .convert import convert_state_dict, convert_with_report, load_checkpoint
from .files import atomic_output, read_checkpoint, read_file, transformers_weights_file, unwrap_state_dict
from .formats import (
    detect_format, infer_model_name, original_to_timm, timm_to_original, timm_to_transformers, to_timm_keys,
    transformers_to_timm)
from .report import CheckpointError, LoadReport
from .write import save_tensors

__all__ = [
    'CheckpointError', 'LoadReport', 'detect_format', 'original_to_timm', 'timm_to_original',
    'transformers_to_timm', 'timm_to_transformers', 'to_timm_keys', 'infer_model_name', 'convert_with_report',
    'convert_state_dict', 'load_checkpoint', 'read_file', 'unwrap_state_dict', 'read_checkpoint',
    'transformers_weights_file', 'atomic_output', 'save_tensors',
]
