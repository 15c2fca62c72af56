# RetinaNet 1x COCO, efficientformer_l1 backbone. ImageNet weights: $EFFICIENTFORMER_L1_CKPT
# (default timm/efficientformer_l1.snap_dist_in1k: timm's weights from the Hugging Face hub, cached; or a local file in any format); COCO from $COCO_ROOT (default data/coco/).
_base_ = ['./_base_/retinanet_efficientformer_1x_coco.py']

model = dict(
    backbone=dict(
        model_name='efficientformer_l1',
        init_cfg=dict(checkpoint='{{$EFFICIENTFORMER_L1_CKPT:timm/efficientformer_l1.snap_dist_in1k}}')),
    neck=dict(in_channels=[48, 96, 224, 448]))
