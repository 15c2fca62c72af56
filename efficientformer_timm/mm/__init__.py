"""MMDetection 3.x / MMSegmentation 1.x adapter: ``custom_imports = dict(imports=['efficientformer_timm.mm'])``.

Registers ``EfficientFormerBackbone``, ``EfficientFormerRunner``, ``StopOnInvalidLossHook`` and
``ResumeRandomStateHook`` in mmengine's root registries, which mmdet's and mmseg's registries both fall back
to, and a local checkpoint loader that reads mmengine's own checkpoints under torch >= 2.6.
"""
from .backbone import EfficientFormerBackbone
from .checkpoint_loader import load_local_checkpoint
from .hooks import ResumeRandomStateHook, StopOnInvalidLossHook
from .runner import EfficientFormerRunner

__all__ = ['EfficientFormerBackbone', 'EfficientFormerRunner', 'ResumeRandomStateHook', 'StopOnInvalidLossHook',
           'load_local_checkpoint']
