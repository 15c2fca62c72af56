# Semantic FPN 40k ADE20K, efficientformerv2_s1 backbone. ImageNet weights: $EFFICIENTFORMER_V2_S1_CKPT
# (default timm/efficientformerv2_s1.snap_dist_in1k: timm's weights from the Hugging Face hub, cached; or a local file in any format); data from $ADE20K_ROOT
# (default data/ade/ADEChallengeData2016).
_base_ = ['./_base_/semfpn_efficientformer_ade20k_40k.py']

model = dict(
    backbone=dict(
        model_name='efficientformerv2_s1',
        init_cfg=dict(checkpoint='{{$EFFICIENTFORMER_V2_S1_CKPT:timm/efficientformerv2_s1.snap_dist_in1k}}')),
    neck=dict(in_channels=[32, 48, 120, 224]))
