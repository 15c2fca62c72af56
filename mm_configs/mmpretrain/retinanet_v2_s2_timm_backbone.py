# RetinaNet 1x COCO with mmpretrain's generic TIMMBackbone building efficientformerv2_s2 by its timm name (any input
# size, as this package registers it). Needs mmpretrain (the `mmpretrain` extra). ImageNet weights:
# $EFFICIENTFORMER_V2_S2_CKPT, a local file in any format (unset: timm's weights from the Hugging Face hub).
_base_ = ['../retinanet_v2_s2.py']

custom_imports = dict(imports=['efficientformer_timm.mm', 'mmpretrain.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmpretrain.TIMMBackbone',
        model_name='efficientformerv2_s2',
        features_only=True,
        out_indices=(0, 1, 2, 3),
        pretrained=True,
        pretrained_cfg_overlay=dict(file='{{$EFFICIENTFORMER_V2_S2_CKPT:}}')))
