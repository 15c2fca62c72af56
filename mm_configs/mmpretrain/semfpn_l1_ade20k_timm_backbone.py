# Semantic FPN 40k ADE20K with mmpretrain's generic TIMMBackbone building efficientformer_l1 by its timm name (any
# input size, as this package registers it). Needs mmpretrain (the `mmpretrain` extra). ImageNet weights:
# $EFFICIENTFORMER_L1_CKPT (default timm/efficientformer_l1.snap_dist_in1k: timm's weights from the Hugging Face hub,
# cached; or a local file in any format).
_base_ = ['../semfpn_l1_ade20k.py']

custom_imports = dict(imports=['efficientformer_timm.mm', 'mmpretrain.models'], allow_failed_imports=False)

# timm reads hub weights from the pretrained config's hf_hub_id, a local file from its file
imagenet_weights = '{{$EFFICIENTFORMER_L1_CKPT:timm/efficientformer_l1.snap_dist_in1k}}'
timm_weights = (dict(hf_hub_id=imagenet_weights) if imagenet_weights.startswith('timm/')
                else dict(file=imagenet_weights))
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmpretrain.TIMMBackbone',
        model_name='efficientformer_l1',
        features_only=True,
        out_indices=(0, 1, 2, 3),
        pretrained=True,
        pretrained_cfg_overlay=timm_weights))
