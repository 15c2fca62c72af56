# UperNet 160k ADE20K, efficientformer_l1 backbone. ImageNet weights: $EFFICIENTFORMER_L1_CKPT
# (default timm/efficientformer_l1.snap_dist_in1k: timm's weights from the Hugging Face hub, cached; or a local file in any format); data from $ADE20K_ROOT
# (default data/ade/ADEChallengeData2016).
_base_ = ['./_base_/upernet_efficientformer_ade20k_160k.py']

model = dict(
    backbone=dict(
        model_name='efficientformer_l1',
        init_cfg=dict(checkpoint='{{$EFFICIENTFORMER_L1_CKPT:timm/efficientformer_l1.snap_dist_in1k}}')),
    decode_head=dict(in_channels=[48, 96, 224, 448]),
    auxiliary_head=dict(in_channels=224))
