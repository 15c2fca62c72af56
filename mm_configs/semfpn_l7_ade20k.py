# Semantic FPN 40k ADE20K, efficientformer_l7 backbone. ImageNet weights: set $EFFICIENTFORMER_L7_CKPT
# (default checkpoints/efficientformer_l7.snap_dist_in1k.safetensors, made with tools/convert_checkpoint.py); data from $ADE20K_ROOT
# (default data/ade/ADEChallengeData2016).
_base_ = ['./_base_/semfpn_efficientformer_ade20k_40k.py']

model = dict(
    backbone=dict(
        model_name='efficientformer_l7',
        init_cfg=dict(checkpoint='{{$EFFICIENTFORMER_L7_CKPT:checkpoints/efficientformer_l7.snap_dist_in1k.safetensors}}')),
    neck=dict(in_channels=[96, 192, 384, 768]))
