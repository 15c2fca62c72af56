# UperNet 160k ADE20K, efficientformerv2_s2 backbone. ImageNet weights: $EFFICIENTFORMER_V2_S2_CKPT
# (default timm/efficientformerv2_s2.snap_dist_in1k: timm's weights from the Hugging Face hub, cached; or a local file in any format); data from $ADE20K_ROOT
# (default data/ade/ADEChallengeData2016).
_base_ = ['./_base_/upernet_efficientformer_ade20k_160k.py']

model = dict(
    backbone=dict(
        model_name='efficientformerv2_s2',
        init_cfg=dict(checkpoint='{{$EFFICIENTFORMER_V2_S2_CKPT:timm/efficientformerv2_s2.snap_dist_in1k}}')),
    decode_head=dict(in_channels=[32, 64, 144, 288]),
    auxiliary_head=dict(in_channels=144))
