# Mask R-CNN 1x COCO, efficientformerv2_l backbone. ImageNet weights: $EFFICIENTFORMER_V2_L_CKPT
# (default timm/efficientformerv2_l.snap_dist_in1k: timm's weights from the Hugging Face hub, cached; or a local file in any format); COCO from $COCO_ROOT (default data/coco/).
_base_ = ['./_base_/maskrcnn_efficientformer_1x_coco.py']

model = dict(
    backbone=dict(
        model_name='efficientformerv2_l',
        init_cfg=dict(checkpoint='{{$EFFICIENTFORMER_V2_L_CKPT:timm/efficientformerv2_l.snap_dist_in1k}}')),
    neck=dict(in_channels=[40, 80, 192, 384]))

optim_wrapper = dict(optimizer=dict(weight_decay=0.05))  # the V2 recipe
