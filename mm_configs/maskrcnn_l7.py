# Mask R-CNN 1x COCO, efficientformer_l7 backbone. ImageNet weights: $EFFICIENTFORMER_L7_CKPT
# (default timm/efficientformer_l7.snap_dist_in1k: timm's weights from the Hugging Face hub, cached; or a local file in any format); COCO from $COCO_ROOT (default data/coco/).
_base_ = ['./_base_/maskrcnn_efficientformer_1x_coco.py']

model = dict(
    backbone=dict(
        model_name='efficientformer_l7',
        init_cfg=dict(checkpoint='{{$EFFICIENTFORMER_L7_CKPT:timm/efficientformer_l7.snap_dist_in1k}}')),
    neck=dict(in_channels=[96, 192, 384, 768]))
