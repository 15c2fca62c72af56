# Mask R-CNN 1x COCO, efficientformer_l1 backbone. ImageNet weights: set $EFFICIENTFORMER_L1_CKPT
# (default checkpoints/efficientformer_l1.snap_dist_in1k.safetensors, made with tools/convert_checkpoint.py); COCO from $COCO_ROOT (default data/coco/).
_base_ = ['./_base_/maskrcnn_efficientformer_1x_coco.py']

model = dict(
    backbone=dict(
        model_name='efficientformer_l1',
        init_cfg=dict(checkpoint='{{$EFFICIENTFORMER_L1_CKPT:checkpoints/efficientformer_l1.snap_dist_in1k.safetensors}}')),
    neck=dict(in_channels=[48, 96, 224, 448]))
