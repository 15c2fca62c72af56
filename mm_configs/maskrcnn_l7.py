# Mask R-CNN 1x COCO, efficientformer_l7 backbone. ImageNet weights: set $EFFICIENTFORMER_L7_CKPT
# (default checkpoints/efficientformer_l7.snap_dist_in1k.safetensors, made with tools/convert_checkpoint.py); COCO from $COCO_ROOT (default data/coco/).
_base_ = ['./_base_/maskrcnn_efficientformer_1x_coco.py']

model = dict(
    backbone=dict(
        model_name='efficientformer_l7',
        init_cfg=dict(checkpoint='{{$EFFICIENTFORMER_L7_CKPT:checkpoints/efficientformer_l7.snap_dist_in1k.safetensors}}')),
    neck=dict(in_channels=[96, 192, 384, 768]))
