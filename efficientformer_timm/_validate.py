"""Input checks shared by every forward entry point: cheap shape / dtype tests that raise before any work."""
from typing import Optional

import torch

from ._bias import tracing_or_compiling

__all__ = ['MIN_INPUT_SIZE', 'check_image_batch']

# smallest H, W supported (and tested): every stage keeps at least a 2 x 2 map
MIN_INPUT_SIZE = 64


def check_image_batch(x, in_chans: int, dtype: Optional[torch.dtype] = None) -> None:
    """Raise TypeError / ValueError for anything but a non-empty float (B, in_chans, H, W) batch with
    H, W >= MIN_INPUT_SIZE in the model's ``dtype`` (any float dtype under autocast). Skipped while tracing or
    compiling, where shapes are symbolic (FX graphs call it as a leaf: see ``_common``)."""
    if tracing_or_compiling():
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'expected a torch.Tensor image batch (B, C, H, W), got {type(x).__name__}')
    if x.ndim != 4:
        hint = ' Add the batch dimension with x.unsqueeze(0).' if x.ndim == 3 else ''
        raise ValueError(f'expected a 4-D image batch (B, {in_chans}, H, W), got a {x.ndim}-D tensor of shape '
                         f'{tuple(x.shape)}.{hint}')
    if not x.is_floating_point():
        raise TypeError(f'expected a floating-point image batch, got dtype {x.dtype}. Convert and normalise it '
                        'first, e.g. with timm.data.create_transform(**timm.data.resolve_data_config(model=model)).')
    batch, chans, height, width = x.shape
    if batch == 0:
        raise ValueError(f'got an empty batch (shape {tuple(x.shape)}): pass at least one image')
    if chans != in_chans:
        if width == in_chans:
            raise ValueError(f'expected {in_chans} input channels, got {chans} (shape {tuple(x.shape)}): this looks '
                             f'like a channels-last (B, H, W, C) batch. Images must be (B, C, H, W): pass '
                             'x.permute(0, 3, 1, 2).')
        raise ValueError(f'expected {in_chans} input channels, got {chans} (shape {tuple(x.shape)}). Images must be '
                         f'(B, C, H, W); build the model with in_chans={chans} for {chans}-channel input.')
    if height < MIN_INPUT_SIZE or width < MIN_INPUT_SIZE:
        raise ValueError(f'input {height}x{width} is smaller than the minimum {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} '
                         'these models support: resize or pad the images.')
    if dtype is not None and x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f'input dtype {x.dtype} differs from the model\'s {dtype}: convert the batch with '
                        f'x.to({dtype}), or the model with model.to({x.dtype}), or run under torch.autocast.')
