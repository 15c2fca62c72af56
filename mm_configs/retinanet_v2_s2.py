# RetinaNet 1x COCO, efficientformerv2_s2 backbone. ImageNet weights: $EFFICIENTFORMER_V2_S2_CKPT
# (default timm/efficientformerv2_s2.snap_dist_in1k: timm's weights from the Hugging Face hub, cached; or a local file in any format); COCO from $COCO_ROOT (default data/coco/).
_base_ = ['./_base_/retinanet_efficientformer_1x_coco.py']

model = dict(
    backbone=dict(
        model_name='efficientformerv2_s2',
        init_cfg=dict(checkpoint='{{$EFFICIENTFORMER_V2_S2_CKPT:timm/efficientformerv2_s2.snap_dist_in1k}}')),
    neck=dict(in_channels=[32, 64, 144, 288]))
