# RetinaNet 1x COCO with mmpretrain's generic TIMMBackbone building efficientformerv2_s2 by its timm name (any input
# size, as this package registers it). Needs mmpretrain (the `mmpretrain` extra). ImageNet weights:
# $EFFICIENTFORMER_V2_S2_CKPT (default timm/efficientformerv2_s2.snap_dist_in1k: timm's weights from the Hugging Face
# hub, cached; or a local file in any format).
_base_ = ['../retinanet_v2_s2.py']

custom_imports = dict(imports=['efficientformer_timm.mm', 'mmpretrain.models'], allow_failed_imports=False)

# timm reads hub weights from the pretrained config's hf_hub_id, a local file from its file
imagenet_weights = '{{$EFFICIENTFORMER_V2_S2_CKPT:timm/efficientformerv2_s2.snap_dist_in1k}}'
timm_weights = (dict(hf_hub_id=imagenet_weights) if imagenet_weights.startswith('timm/')
                else dict(file=imagenet_weights))
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmpretrain.TIMMBackbone',
        model_name='efficientformerv2_s2',
        features_only=True,
        out_indices=(0, 1, 2, 3),
        pretrained=True,
        pretrained_cfg_overlay=timm_weights))
