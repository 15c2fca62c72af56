"""Checkpoint layouts (timm, the authors' release, transformers), the conversion tool, clear errors for files and
tensors that do not fit."""
import logging
import os
import re
import subprocess
import sys

import pytest
import timm
import torch
import timm.models.efficientformer as timm_v1
from safetensors.torch import load_file, save_file

from efficientformer_timm import CheckpointError, load_checkpoint
from efficientformer_timm._bias import relative_offset_index
from efficientformer_timm.checkpoint import (
    detect_format, infer_model_name, original_to_timm, timm_to_original, transformers_to_timm)
from efficientformer_timm.convert import convert_file
from helpers import ALL_MODELS, V2_MODELS, randomize_

CONVERT_TOOL = os.path.join(os.path.dirname(__file__), '..', 'tools', 'convert_checkpoint.py')


def _source(name, **kwargs):
    return randomize_(timm.create_model(name, **kwargs)).eval()


@pytest.mark.parametrize('name', ALL_MODELS)
def test_timm_format_loads_strictly_through_pretrained_cfg_file(name, tmp_path):
    src = _source(name)
    path = str(tmp_path / ('ckpt.safetensors' if 'v2' in name else 'ckpt.pth'))
    if path.endswith('.safetensors'):
        save_file(src.state_dict(), path)
    else:
        torch.save(src.state_dict(), path)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path)).eval()
    x = torch.randn(1, 3, 160, 192)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


def test_fine_tuning_with_another_class_count(tmp_path):
    src = _source('efficientformerv2_s0')
    torch.save(src.state_dict(), tmp_path / 's0.pth')
    model = timm.create_model('efficientformerv2_s0', pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 's0.pth'))).eval()
    assert model.head.weight.shape == (10, 176)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), src.forward_features(x))
    with pytest.raises(CheckpointError, match=r'head\.weight: checkpoint \(1000, 176\) vs model \(10, 176\)'):
        load_checkpoint(timm.create_model('efficientformerv2_s0', num_classes=10), str(tmp_path / 's0.pth'))


def test_timm_file_into_features_only_model(tmp_path):
    src = _source('efficientformer_l3')
    torch.save(src.state_dict(), tmp_path / 'l3.pth')
    feats = timm.create_model('efficientformer_l3', features_only=True, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'l3.pth'))).eval()
    x = torch.randn(1, 3, 200, 300)
    with torch.no_grad():
        for a, b in zip(feats(x), src.forward_intermediates(x, intermediates_only=True)):
            assert torch.equal(a, b)


def test_v1_original_layout_agrees_with_timm_own_filter():
    """timm ships an original->timm filter for V1: our inverse must be what it expects."""
    for name in ('efficientformer_l1', 'efficientformer_l7'):
        sd = timm.create_model(name).state_dict()
        original = timm_to_original(sd)
        assert detect_format(original) == 'original'
        back = timm_v1.checkpoint_filter_fn(original, None)
        assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    keys = timm_to_original(timm.create_model('efficientformer_l1').state_dict()).keys()
    for key in ('patch_embed.3.weight', 'network.0.0.layer_scale_1', 'network.0.0.mlp.norm2.running_var',
                'network.1.proj.weight', 'network.1.norm.weight', 'network.6.4.norm1.weight',
                'network.6.4.token_mixer.qkv.weight', 'network.6.4.token_mixer.attention_biases',
                'network.6.4.token_mixer.attention_bias_idxs', 'network.6.4.mlp.fc2.bias', 'dist_head.weight'):
        assert key in keys


def _v2_original_by_hand(sd):
    """The authors' V2 layout written out independently of the package's mapping (see their
    models/efficientformer_v2.py): Sequential indices inside q/k/v/proj, Embedding proj/norm or conv/bn/attn,
    (C, 1, 1) layer scales and persistent attention_bias_idxs."""
    out = {}
    for key, value in sd.items():
        k = key
        k = re.sub(r'^stem\.conv(\d)\.conv\.', lambda m: f'patch_embed.{3 * (int(m.group(1)) - 1)}.', k)
        k = re.sub(r'^stem\.conv(\d)\.bn\.', lambda m: f'patch_embed.{3 * (int(m.group(1)) - 1) + 1}.', k)
        m = re.match(r'stages\.(\d)\.downsample\.(.*)', k)
        if m:
            s, rest = int(m.group(1)), m.group(2)
            conv, bn = ('conv', 'bn') if s == 3 else ('proj', 'norm')
            rest = rest.replace('conv.conv.', conv + '.').replace('conv.bn.', bn + '.')
            k = f'network.{2 * s - 1}.{rest}'
        k = re.sub(r'^stages\.(\d)\.blocks\.', lambda m: f'network.{2 * int(m.group(1))}.', k)
        for a, b in [('mlp.fc1.conv.', 'mlp.fc1.'), ('mlp.fc1.bn.', 'mlp.norm1.'), ('mlp.mid.conv.', 'mlp.mid.'),
                     ('mlp.mid.bn.', 'mlp.mid_norm.'), ('mlp.fc2.conv.', 'mlp.fc2.'), ('mlp.fc2.bn.', 'mlp.norm2.'),
                     ('q.local.', 'q.local.0.'), ('q.proj.conv.', 'q.proj.0.'), ('q.proj.bn.', 'q.proj.1.'),
                     ('proj.conv.', 'proj.1.'), ('proj.bn.', 'proj.2.')]:
            k = k.replace(a, b)
        k = re.sub(r'\.(q|k|v|v_local|stride_conv)\.conv\.', r'.\1.0.', k)
        k = re.sub(r'\.(q|k|v|v_local|stride_conv)\.bn\.', r'.\1.1.', k)
        k = re.sub(r'ls(\d)\.gamma$', r'layer_scale_\1', k)
        k = k.replace('head_dist.', 'dist_head.')
        if k.endswith(('layer_scale_1', 'layer_scale_2')):
            value = value.reshape(-1, 1, 1)
        out[k] = value
    return out


@pytest.mark.parametrize('name', ALL_MODELS)
def test_original_release_format_reproduces_logits(name, tmp_path):
    src = _source(name)
    sd = src.state_dict()
    if name in V2_MODELS:
        original = _v2_original_by_hand(sd)
        for key, biases in [(k, v) for k, v in original.items() if k.endswith('attention_biases')]:
            side = int(biases.shape[1] ** 0.5)  # the release saves its offset indices too
            stride = 2 if '.attn.' in key and 'token_mixer' not in key else 1
            original[key[:-len('attention_biases')] + 'attention_bias_idxs'] = relative_offset_index(
                (side, side), stride)
        converted = timm_to_original(sd)
        assert converted.keys() == original.keys()
        assert all(torch.equal(converted[k], original[k]) for k in original)
    else:
        original = timm_to_original(sd)
    torch.save({'model': original, 'epoch': 299}, tmp_path / 'release.pth')
    model = timm.create_model(name, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'release.pth'))).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


def test_wrong_variant_names_keys_and_variant():
    l3 = timm.create_model('efficientformer_l3').state_dict()
    with pytest.raises(CheckpointError, match=r'looks like efficientformer_l3.*stem\.conv1\.weight'):
        load_checkpoint(timm.create_model('efficientformer_l1'), l3)
    with pytest.raises(CheckpointError, match=r'looks like efficientformerv2_s1'):
        load_checkpoint(timm.create_model('efficientformerv2_s0'), timm.create_model('efficientformerv2_s1').state_dict())


def test_missing_and_extra_keys_are_named(caplog):
    sd = timm.create_model('efficientformer_l1').state_dict()
    del sd['stages.2.blocks.3.mlp.fc1.weight']
    sd['stages.2.blocks.3.extra.weight'] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: \['stages.2.blocks.3.mlp.fc1.weight'\]"):
        load_checkpoint(timm.create_model('efficientformer_l1'), sd)
    with pytest.raises(CheckpointError, match=r"no place in the model: \['stages.2.blocks.3.extra.weight'\]"):
        load_checkpoint(timm.create_model('efficientformer_l1'), sd)
    with caplog.at_level(logging.WARNING):
        report = load_checkpoint(timm.create_model('efficientformer_l1'), sd, strict=False)
    assert report.skipped == ['stages.2.blocks.3.extra.weight', 'stages.2.blocks.3.mlp.fc1.weight']
    assert 'stages.2.blocks.3.mlp.fc1.weight' in caplog.text


def test_long_key_lists_are_shortened_with_a_count():
    """A checkpoint of another variant mismatches most tensors: the error shows the first 20 and how many more."""
    l1 = timm.create_model('efficientformer_l1')
    l1_state, l3_state = l1.state_dict(), timm.create_model('efficientformer_l3').state_dict()
    wrong = [k for k, v in l3_state.items() if k in l1_state and v.shape != l1_state[k].shape]
    assert len(wrong) > 20
    with pytest.raises(CheckpointError, match=rf'{len(wrong)} tensors do not match') as error:
        load_checkpoint(l1, l3_state)
    assert f'(+{len(wrong) - 20} more)' in str(error.value)
    assert str(error.value).count(': checkpoint (') == 20


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match='not an EfficientFormer checkpoint'):
        load_checkpoint(timm.create_model('efficientformer_l1'), {'fc.weight': torch.zeros(1)})
    bad = tmp_path / 'half.pth'
    torch.save(timm.create_model('efficientformerv2_s0').state_dict(), bad)
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r'cannot read checkpoint .*half\.pth.*truncated'):
        load_checkpoint(timm.create_model('efficientformerv2_s0'), str(bad))
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_checkpoint(timm.create_model('efficientformerv2_s0'), str(tmp_path / 'nope.pth'))


def test_classification_checkpoint_into_feature_norm_model_says_so(caplog):
    sd = _source('efficientformer_l1').state_dict()
    model = timm.create_model('efficientformer_l1', feature_norm=True)
    with caplog.at_level(logging.WARNING):
        report = load_checkpoint(model, sd)
    assert 'feature_norms.0' in caplog.text and 'identity-like' in caplog.text
    assert sorted(report.initialised) == sorted(f'feature_norms.{i}.{p}' for i in range(4) for p in ('weight', 'bias'))
    assert all(torch.equal(n.weight, torch.ones_like(n.weight)) and torch.equal(n.bias, torch.zeros_like(n.bias))
               for n in model.feature_norms)


def test_head_keys_dropped_for_headless_model_are_reported(caplog):
    sd = timm.create_model('efficientformer_l1').state_dict()
    with caplog.at_level(logging.INFO, logger='efficientformer_timm.checkpoint'):
        report = load_checkpoint(timm.create_model('efficientformer_l1', num_classes=0), sd)
    assert sorted(report.dropped) == ['head.bias', 'head.weight', 'head_dist.bias', 'head_dist.weight']
    assert 'head_dist.weight' in caplog.text


@pytest.mark.parametrize('name, suffix', [('efficientformer_l1', '.safetensors'), ('efficientformerv2_s0', '.pth')])
def test_convert_tool(name, suffix, tmp_path):
    src = _source(name)
    original = timm_to_original(src.state_dict())
    torch.save({'model': original}, tmp_path / 'in.pth')
    before = (tmp_path / 'in.pth').read_bytes()
    out = tmp_path / f'out{suffix}'
    run = subprocess.run([sys.executable, CONVERT_TOOL, str(tmp_path / 'in.pth'), str(out)], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    assert f'({name}, timm format)' in run.stdout
    sd = load_file(out) if suffix == '.safetensors' else torch.load(out, weights_only=True)
    ref = src.state_dict()
    assert infer_model_name(sd) == name
    timm.create_model(name).load_state_dict(sd, strict=True)
    assert all(torch.equal(sd[k], ref[k]) for k in sd)
    assert (tmp_path / 'in.pth').read_bytes() == before
    same = subprocess.run([sys.executable, CONVERT_TOOL, str(out), str(out)], capture_output=True, text=True)
    assert same.returncode == 1 and 'refusing to overwrite the input' in same.stderr
    assert sorted(os.listdir(tmp_path)) == sorted(['in.pth', f'out{suffix}'])  # no temporary files left


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


def test_converting_a_detector_without_the_mm_stack_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'efficientformer_timm.mm.released', None)  # what a missing mmdet gives
    network = timm.create_model('efficientformer_l1').state_dict()
    backbone = {'backbone.' + k: v for k, v in timm_to_original(network).items()}
    torch.save({'state_dict': {**backbone, 'decode_head.conv_seg.weight': torch.zeros(150, 128, 1, 1)}},
               tmp_path / 'semfpn.pth')
    with pytest.raises(ImportError, match=r"semfpn\.pth is a detector / segmenter checkpoint: converting it needs the "
                                          r"OpenMMLab stack \(install the package with its `mm` extra.*released"):
        convert_file(str(tmp_path / 'semfpn.pth'), str(tmp_path / 'out.pth'))
    assert sorted(os.listdir(tmp_path)) == ['semfpn.pth']


def test_failed_conversion_write_leaves_nothing(tmp_path, monkeypatch):
    torch.save(timm.create_model('efficientformerv2_s0').state_dict(), tmp_path / 'in.pth')

    def broken_save(*args, **kwargs):
        raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(OSError, match='disk full'):
        convert_file(str(tmp_path / 'in.pth'), str(tmp_path / 'out.pth'))
    assert sorted(os.listdir(tmp_path)) == ['in.pth']
