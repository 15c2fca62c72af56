# Mask R-CNN 1x COCO, efficientformer_l3 backbone. ImageNet weights: set $EFFICIENTFORMER_L3_CKPT
# (default checkpoints/efficientformer_l3.snap_dist_in1k.safetensors, made with tools/convert_checkpoint.py); COCO from $COCO_ROOT (default data/coco/).
_base_ = ['./_base_/maskrcnn_efficientformer_1x_coco.py']

model = dict(
    backbone=dict(
        model_name='efficientformer_l3',
        init_cfg=dict(checkpoint='{{$EFFICIENTFORMER_L3_CKPT:checkpoints/efficientformer_l3.snap_dist_in1k.safetensors}}')),
    neck=dict(in_channels=[64, 128, 320, 512]))
