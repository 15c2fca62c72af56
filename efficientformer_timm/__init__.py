"""EfficientFormer V1 / V2 for timm at any input size, with checkpoint loading from timm, the authors'
release and transformers. Importing this package registers the seven models in timm's registry,
replacing timm's fixed-224 entries of the same names."""
import warnings

with warnings.catch_warnings():
    # replacing timm's built-in entries is the point of this package: no per-model "Overwriting" warning
    warnings.filterwarnings('ignore', message=r'Overwriting efficientformer', category=UserWarning)
    from . import efficientformer, efficientformer_v2

from .checkpoint import (
    CheckpointError, LoadReport, convert_state_dict, convert_with_report, load_checkpoint, read_checkpoint)
from .efficientformer import EfficientFormer
from .efficientformer_v2 import EfficientFormerV2

__version__ = '0.1.0'
__all__ = [
    'EfficientFormer', 'EfficientFormerV2', 'CheckpointError', 'LoadReport', 'convert_state_dict',
    'convert_with_report', 'load_checkpoint', 'read_checkpoint',
]
