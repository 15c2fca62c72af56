"""The package's MMDetection / MMSegmentation configs: the repository's mm_configs/, shipped inside the package as
``efficientformer_timm/configs`` (as OpenMMLab packages ship theirs), so that an installed package builds the
released and toy models without a checkout. mmengine reads a config by its path and its ``_base_`` files relative
to it: the whole tree ships."""
import importlib.resources
import os

__all__ = ['CONFIGS', 'config_path']

CONFIGS = importlib.resources.files('efficientformer_timm') / 'configs'


def config_path(name: str) -> str:
    """The file of the config ``name``, relative to mm_configs/ (e.g. ``'released/maskrcnn_l1_coco.py'``)."""
    path = CONFIGS.joinpath(*name.split('/'))
    if not path.is_file():
        raise FileNotFoundError(f'no config {name!r} in {CONFIGS}: the package ships the configs of mm_configs/')
    return os.path.realpath(path)
