"""Model inputs: bad ones are refused with a clear error on every entry point; any size from 64 pixels gives
outputs of the right shape, finite, the same alone as in a batch, and the same every time."""
import functools

import pytest
import timm
import torch
from hypothesis import given, settings, strategies as st

from helpers import randomize_

BAD_INPUTS = [
    (lambda: torch.randn(1, 4, 96, 96), ValueError, r'expected 3 input channels, got 4'),
    (lambda: torch.randn(3, 96, 96), ValueError, r'4-D image batch .* got a 3-D tensor .*unsqueeze\(0\)'),
    (lambda: torch.randn(1, 1, 3, 96, 96), ValueError, r'got a 5-D tensor'),
    (lambda: torch.randint(0, 255, (1, 3, 96, 96), dtype=torch.uint8), TypeError, r'floating-point .* torch\.uint8'),
    (lambda: torch.randn(1, 3, 63, 96), ValueError, r'input 63x96 is smaller than the minimum 64x64'),
    (lambda: torch.randn(0, 3, 96, 96), ValueError, r'empty batch'),
    (lambda: [[0.0]], TypeError, r'expected a torch\.Tensor'),
]


def _entry_points(name):
    model = timm.create_model(name).eval()
    features = timm.create_model(name, features_only=True).eval()
    points = {
        'forward': model, 'forward_features': model.forward_features,
        'forward_intermediates': model.forward_intermediates, 'features_only': features,
    }
    try:
        from efficientformer_timm.mm import EfficientFormerBackbone
        points['mm_backbone'] = EfficientFormerBackbone(name).eval()
    except ImportError:  # the OpenMMLab extra is optional for the package (always installed by make test)
        pass
    return points


@pytest.mark.parametrize('name', ['efficientformer_l1', 'efficientformerv2_s0'])
def test_bad_input_is_rejected_on_every_entry_point(name):
    for entry, fn in _entry_points(name).items():
        for make, error, message in BAD_INPUTS:
            with pytest.raises(error, match=message):
                fn(make())


def test_nan_input_propagates():
    model = timm.create_model('efficientformer_l1', features_only=True).eval()
    x = torch.randn(1, 3, 96, 128)
    x[0, :, 10, 10] = float('nan')
    with torch.no_grad():
        feats = model(x)
    assert all(torch.isnan(f).any() for f in feats)


_WIDTHS = {'efficientformer_l1': [48, 96, 224, 448], 'efficientformerv2_s0': [32, 48, 96, 176]}


@functools.lru_cache(maxsize=None)
def _features(name):
    """One random-weight features_only model per name, built on first use and shared by the tests below."""
    return randomize_(timm.create_model(name, features_only=True)).eval()


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(sorted(_WIDTHS)), height=st.integers(64, 300), width=st.integers(64, 300),
       batch=st.integers(1, 2))
def test_any_size_output_formula(name, height, width, batch):
    with torch.no_grad():
        feats = _features(name)(torch.randn(batch, 3, height, width))
    assert [tuple(f.shape) for f in feats] == [
        (batch, c, -(-height // s), -(-width // s)) for c, s in zip(_WIDTHS[name], (4, 8, 16, 32))]
    assert all(torch.isfinite(f).all() for f in feats)


@pytest.mark.parametrize('size', [(64, 1333), (1333, 64), (64, 64)])
def test_extreme_aspect_ratios(size):
    for name in _WIDTHS:
        model = _features(name)
        with torch.no_grad():
            feats = model(torch.randn(1, 3, *size))
        assert feats[-1].shape[-2:] == (-(-size[0] // 32), -(-size[1] // 32))
        assert all(torch.isfinite(f).all() for f in feats)


@pytest.mark.parametrize('name', sorted(_WIDTHS))
def test_batch_invariance_and_determinism(name):
    model = _features(name)
    x = torch.randn(3, 3, 160, 224)
    with torch.no_grad():
        batch = model(x)
        alone = model(x[1:2])
        again = model(x)
    for b, a in zip(batch, alone):
        torch.testing.assert_close(b[1:2], a, rtol=0, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(batch, again))
