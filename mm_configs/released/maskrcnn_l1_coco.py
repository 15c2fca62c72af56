# The authors' Mask R-CNN L1 trained on COCO, converted with
#   python tools/convert_checkpoint.py mask_rcnn_efficientformer_l1_fpn_1x_coco.pth maskrcnn_l1_coco.pth
# and evaluated with
#   mim test mmdet mm_configs/released/maskrcnn_l1_coco.py --checkpoint maskrcnn_l1_coco.pth
# Their attention bias scheme (one table for the token grid of an 800-pixel input, the bias matrix resized to the
# real grid at every forward); the test pipeline is mmdet's COCO one (1333x800, keep ratio), as theirs. Fine-tune
# from it with `mim train` and --cfg-options load_from=maskrcnn_l1_coco.pth.
_base_ = ['../maskrcnn_l1.py']
model = dict(backbone=dict(fixed_grid_bias_resolution=800, init_cfg=None))
