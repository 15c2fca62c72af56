"""Bad input, bad checkpoints and training faults give clear errors and lose nothing."""
import functools
import os
import sys

import pytest
import timm
import torch
from hypothesis import given, settings, strategies as st

from efficientformer_timm import CheckpointError, load_checkpoint
from efficientformer_timm.checkpoint import original_to_timm, timm_to_original, transformers_to_timm
from helpers import ALL_MODELS, randomize_

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'tools'))

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


@pytest.mark.parametrize('name', ALL_MODELS)
def test_original_timm_original_round_trip_is_bit_exact(name):
    sd = randomize_(timm.create_model(name)).state_dict()
    original = timm_to_original(sd)
    back, unknown = original_to_timm(original)
    assert not unknown
    again = timm_to_original(back)
    assert again.keys() == original.keys()
    assert all(torch.equal(again[k], original[k]) and again[k].dtype == original[k].dtype for k in original)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_transformers_to_timm_keeps_every_tensor():
    import transformers
    hf = randomize_(transformers.EfficientFormerForImageClassificationWithTeacher(
        transformers.EfficientFormerConfig(hidden_size=448)))
    source = hf.state_dict()
    converted, unknown = transformers_to_timm(source)
    assert not unknown and len(converted) == len(source)
    by_id = {v.data_ptr(): v for v in converted.values()}
    assert all(torch.equal(by_id[v.data_ptr()], v) for v in source.values())


def test_wrong_dtype_is_named():
    sd = timm.create_model('efficientformer_l1').state_dict()
    sd['stages.3.blocks.4.token_mixer.qkv.weight'] = sd['stages.3.blocks.4.token_mixer.qkv.weight'].long()
    with pytest.raises(CheckpointError, match=r'qkv\.weight: checkpoint dtype torch\.int64 vs model torch\.float32'):
        load_checkpoint(timm.create_model('efficientformer_l1'), sd)


def test_not_a_checkpoint_file_names_the_file(tmp_path):
    junk = tmp_path / 'weights.pth'
    junk.write_text('<html>404 not found</html>')
    with pytest.raises(CheckpointError, match=r'cannot read checkpoint .*weights\.pth'):
        load_checkpoint(timm.create_model('efficientformer_l1'), str(junk))
    torch.save({'model': [1, 2, 3]}, tmp_path / 'list.pth')
    with pytest.raises(CheckpointError, match=r'list\.pth holds no state dict'):
        load_checkpoint(timm.create_model('efficientformer_l1'), str(tmp_path / 'list.pth'))


def test_failed_conversion_write_leaves_nothing(tmp_path, monkeypatch):
    import convert_checkpoint
    torch.save(timm.create_model('efficientformerv2_s0').state_dict(), tmp_path / 'in.pth')

    def broken_save(*args, **kwargs):
        raise OSError('disk full')
    monkeypatch.setattr(convert_checkpoint.torch, 'save', broken_save)
    with pytest.raises(OSError, match='disk full'):
        convert_checkpoint.convert(str(tmp_path / 'in.pth'), str(tmp_path / 'out.pth'))
    assert sorted(os.listdir(tmp_path)) == ['in.pth']


@pytest.mark.parametrize('name', ['efficientformer_l1', 'efficientformerv2_s1'])
@pytest.mark.mm
def test_frozen_stages_stay_bit_identical_through_training(name):
    from efficientformer_timm.mm import EfficientFormerBackbone
    backbone = randomize_(EfficientFormerBackbone(name, frozen_stages=2)).train()
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()
              if k.startswith(('model.stem.', 'model.stages.0.', 'model.stages.1.'))}
    trainable = {k: v.clone() for k, v in backbone.state_dict().items() if k.startswith('model.stages.3.')}
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=1e-2, weight_decay=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        sum(o.square().mean() for o in backbone(torch.randn(2, 3, 96, 128))).backward()
        optimizer.step()
    state = backbone.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert any(not torch.equal(state[k], v) for k, v in trainable.items())


@pytest.mark.mm
def test_invalid_loss_stops_before_checkpoint():
    from mmengine.hooks import CheckpointHook
    from mmengine.registry import HOOKS
    from mmengine.runner.priority import get_priority
    from efficientformer_timm.mm import StopOnInvalidLossHook
    hook = HOOKS.build(dict(type='StopOnInvalidLossHook'))
    assert get_priority(hook.priority) < get_priority(CheckpointHook.priority)

    class FakeRunner:
        iter, work_dir = 41, '/work_dirs/run'
    hook.after_train_iter(FakeRunner(), 0, outputs={'loss': torch.tensor(1.5)})
    with pytest.raises(RuntimeError, match=r'loss is nan at iteration 42: training stopped before writing'):
        hook.after_train_iter(FakeRunner(), 0, outputs={'loss': torch.tensor(float('nan'))})
    assert isinstance(hook, StopOnInvalidLossHook)


@pytest.mark.mm
def test_neck_channel_mismatch_fails_at_build(tmp_path):
    from mmengine.config import Config
    from efficientformer_timm.mm import EfficientFormerRunner
    cfg = Config.fromfile(os.path.join(os.path.dirname(__file__), '..', 'mm_configs', 'toy', 'maskrcnn_l1_toy.py'))
    cfg.model.neck.in_channels = [64, 128, 320, 512]
    cfg.work_dir = str(tmp_path)
    with pytest.raises(ValueError, match=r'model\.neck\.in_channels=\[64, 128, 320, 512\] does not match .*'
                                         r'efficientformer_l1 .* gives \[48, 96, 224, 448\]'):
        EfficientFormerRunner.from_cfg(cfg)


@pytest.mark.mm
def test_missing_init_checkpoint_fails_when_the_runner_builds(tmp_path):
    """A training run from the backbone's ImageNet weights fails at build; `mim test` (load_from set) does not."""
    from mmengine.config import Config
    from efficientformer_timm.mm import EfficientFormerRunner
    cfg = Config.fromfile(os.path.join(os.path.dirname(__file__), '..', 'mm_configs', 'maskrcnn_l1.py'))
    cfg.model.backbone.init_cfg.checkpoint = str(tmp_path / 'missing.safetensors')
    cfg.work_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"model\.backbone\.init_cfg\.checkpoint='.*missing\.safetensors' "
                                                r"does not exist.*tools/convert_checkpoint\.py"):
        EfficientFormerRunner.from_cfg(cfg)
    cfg.load_from = str(tmp_path / 'detector.pth')  # what tools/test.py sets from --checkpoint
    assert isinstance(EfficientFormerRunner.from_cfg(cfg), EfficientFormerRunner)
