# Semantic FPN 40k ADE20K, efficientformer_l3 backbone. ImageNet weights: set $EFFICIENTFORMER_L3_CKPT
# (default checkpoints/efficientformer_l3.snap_dist_in1k.safetensors, made with tools/convert_checkpoint.py); data from $ADE20K_ROOT
# (default data/ade/ADEChallengeData2016).
_base_ = ['./_base_/semfpn_efficientformer_ade20k_40k.py']

model = dict(
    backbone=dict(
        model_name='efficientformer_l3',
        init_cfg=dict(checkpoint='{{$EFFICIENTFORMER_L3_CKPT:checkpoints/efficientformer_l3.snap_dist_in1k.safetensors}}')),
    neck=dict(in_channels=[64, 128, 320, 512]))
