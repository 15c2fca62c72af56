# The authors' Semantic FPN V2-S1 trained on ADE20K, converted with
#   python tools/convert_checkpoint.py fpn_efficientformerv2_s1_ade20k_40k.pth semfpn_v2_s1_ade20k.pth
# and evaluated with
#   mim test mmseg mm_configs/released/semfpn_v2_s1_ade20k.py --checkpoint semfpn_v2_s1_ade20k.pth
# Their attention bias scheme (one table for the token grid of a 512-pixel input, the bias matrix resized to the
# real grid at every forward); the test pipeline is mmseg's ADE20K one (2048x512, keep ratio). Fine-tune from it
# with `mim train` and --cfg-options load_from=semfpn_v2_s1_ade20k.pth.
_base_ = ['../semfpn_v2_s1_ade20k.py']
# their V2 backbones keep every BatchNorm in eval mode while training
model = dict(backbone=dict(fixed_grid_bias_resolution=512, norm_eval=True, init_cfg=None))
