"""The seven EfficientFormer variants: architecture tables, registered model names, and which variant a set of
stage widths belongs to. Imported by the model modules, checkpoint handling, the OpenMMLab adapter, tools and
tests."""
from typing import Optional, Sequence

__all__ = ['EFFICIENTFORMER_ARCHS', 'EFFICIENTFORMERV2_ARCHS', 'V1_MODEL_NAMES', 'V2_MODEL_NAMES', 'MODEL_NAMES',
           'model_name_from_widths']

EFFICIENTFORMER_ARCHS = {
    'l1': dict(depths=(3, 2, 6, 4), embed_dims=(48, 96, 224, 448), num_vit=1),
    'l3': dict(depths=(4, 4, 12, 6), embed_dims=(64, 128, 320, 512), num_vit=4),
    'l7': dict(depths=(6, 6, 18, 8), embed_dims=(96, 192, 384, 768), num_vit=8),
}

EFFICIENTFORMERV2_ARCHS = {
    's0': dict(depths=(2, 2, 6, 4), embed_dims=(32, 48, 96, 176), num_vit=2, drop_path_rate=0.0,
               mlp_ratios=(4, 4, (4, 3, 3, 3, 4, 4), (4, 3, 3, 4))),
    's1': dict(depths=(3, 3, 9, 6), embed_dims=(32, 48, 120, 224), num_vit=2, drop_path_rate=0.0,
               mlp_ratios=(4, 4, (4, 4, 3, 3, 3, 3, 4, 4, 4), (4, 4, 3, 3, 4, 4))),
    's2': dict(depths=(4, 4, 12, 8), embed_dims=(32, 64, 144, 288), num_vit=4, drop_path_rate=0.02,
               mlp_ratios=(4, 4, (4, 4, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4), (4, 4, 3, 3, 3, 3, 4, 4))),
    'l': dict(depths=(5, 5, 15, 10), embed_dims=(40, 80, 192, 384), num_vit=6, drop_path_rate=0.1,
              mlp_ratios=(4, 4, (4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4), (4, 4, 4, 3, 3, 3, 3, 4, 4, 4))),
}

V1_MODEL_NAMES = tuple(f'efficientformer_{key}' for key in EFFICIENTFORMER_ARCHS)
V2_MODEL_NAMES = tuple(f'efficientformerv2_{key}' for key in EFFICIENTFORMERV2_ARCHS)
MODEL_NAMES = V1_MODEL_NAMES + V2_MODEL_NAMES


def model_name_from_widths(widths: Sequence[Optional[int]], v2: bool) -> Optional[str]:
    """The model name whose four stage widths are ``widths`` (None where no variant has them)."""
    archs, prefix = (EFFICIENTFORMERV2_ARCHS, 'efficientformerv2_') if v2 else (EFFICIENTFORMER_ARCHS, 'efficientformer_')
    for key, arch in archs.items():
        if tuple(arch['embed_dims']) == tuple(widths):
            return prefix + key
    return None
