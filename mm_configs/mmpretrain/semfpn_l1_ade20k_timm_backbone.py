# Semantic FPN 40k ADE20K with mmpretrain's generic TIMMBackbone building efficientformer_l1 by its timm name (any
# input size, as this package registers it). Needs mmpretrain (the `mmpretrain` extra). ImageNet weights:
# $EFFICIENTFORMER_L1_CKPT, a local file in any format (unset: timm's weights from the Hugging Face hub).
_base_ = ['../semfpn_l1_ade20k.py']

custom_imports = dict(imports=['efficientformer_timm.mm', 'mmpretrain.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmpretrain.TIMMBackbone',
        model_name='efficientformer_l1',
        features_only=True,
        out_indices=(0, 1, 2, 3),
        pretrained=True,
        pretrained_cfg_overlay=dict(file='{{$EFFICIENTFORMER_L1_CKPT:}}')))
