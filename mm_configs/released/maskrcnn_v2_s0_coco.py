# The authors' Mask R-CNN V2-S0 trained on COCO, converted with
#   python tools/convert_checkpoint.py mask_rcnn_efficientformerv2_s0_fpn_1x_coco.pth maskrcnn_v2_s0_coco.pth
# and evaluated with
#   mim test mmdet mm_configs/released/maskrcnn_v2_s0_coco.py --checkpoint maskrcnn_v2_s0_coco.pth
# Their attention bias scheme (one table for the token grid of an 800-pixel input, the bias matrix resized to the
# real grid at every forward); the test pipeline is mmdet's COCO one (1333x800, keep ratio), as theirs. Fine-tune
# from it with `mim train` and --cfg-options load_from=maskrcnn_v2_s0_coco.pth.
_base_ = ['../maskrcnn_v2_s0.py']
# their V2 backbones keep every BatchNorm in eval mode while training
model = dict(backbone=dict(fixed_grid_bias_resolution=800, norm_eval=True, init_cfg=None))
