# What every EfficientFormer config adds to the mmdet / mmseg runtime: the plugin, its Runner and its hooks, and the
# backbone the detection and segmentation bases put in place of their ResNet.
custom_imports = dict(imports=['efficientformer_timm.mm'], allow_failed_imports=False)
# mmengine's Runner, plus `--launcher pytorch` on CPU-only machines (gloo, SyncBN as BN); without CUDA it has glibc
# keep freed memory for reuse (--cfg-options env_cfg.keep_freed_cpu_memory=False switches that off)
runner_type = 'EfficientFormerRunner'
# a NaN / Inf loss stops the run before a poisoned checkpoint is saved; --resume restores the random state
custom_hooks = [dict(type='StopOnInvalidLossHook'), dict(type='ResumeRandomStateHook')]

# L1 with the authors' output norms (GroupNorm(1, C) for V1, none for V2); the model configs set model_name, the
# neck's in_channels and the ImageNet weights
efficientformer_backbone = dict(
    _delete_=True,
    type='EfficientFormerBackbone',
    model_name='efficientformer_l1',
    out_indices=(0, 1, 2, 3),
    feature_norm=None,
    drop_path_rate=0.,
    frozen_stages=-1,
    norm_eval=False,
    init_cfg=dict(type='Pretrained', checkpoint=None))
