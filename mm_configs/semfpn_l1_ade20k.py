# Semantic FPN 40k ADE20K, efficientformer_l1 backbone. ImageNet weights: set $EFFICIENTFORMER_L1_CKPT
# (default checkpoints/efficientformer_l1.snap_dist_in1k.safetensors, made with tools/convert_checkpoint.py); data from $ADE20K_ROOT
# (default data/ade/ADEChallengeData2016).
_base_ = ['./_base_/semfpn_efficientformer_ade20k_40k.py']

model = dict(
    backbone=dict(
        model_name='efficientformer_l1',
        init_cfg=dict(checkpoint='{{$EFFICIENTFORMER_L1_CKPT:checkpoints/efficientformer_l1.snap_dist_in1k.safetensors}}')),
    neck=dict(in_channels=[48, 96, 224, 448]))
