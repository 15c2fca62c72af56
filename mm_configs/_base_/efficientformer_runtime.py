# What every EfficientFormer config adds to the mmdet / mmseg runtime: the plugin, its Runner and its hooks.
custom_imports = dict(imports=['efficientformer_timm.mm'], allow_failed_imports=False)
# mmengine's Runner, plus `--launcher pytorch` on CPU-only machines (gloo, SyncBN as BN)
runner_type = 'EfficientFormerRunner'
# a NaN / Inf loss stops the run before a poisoned checkpoint is saved; --resume restores the random state
custom_hooks = [dict(type='StopOnInvalidLossHook'), dict(type='ResumeRandomStateHook')]
