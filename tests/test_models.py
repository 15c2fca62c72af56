"""Registration, timm parity at 224, any input size, features_only, resized attention biases."""
import subprocess
import sys

import pytest
import timm
import torch
import timm.models.efficientformer as timm_v1
import timm.models.efficientformer_v2 as timm_v2

from efficientformer_timm import EfficientFormer, EfficientFormerV2
from efficientformer_timm import _bias
from efficientformer_timm._bias import relative_offset_index
from efficientformer_timm.efficientformer import WindowAveragePooling
from helpers import ALL_MODELS, randomize_

WIDTHS = {
    'efficientformer_l1': [48, 96, 224, 448], 'efficientformer_l3': [64, 128, 320, 512],
    'efficientformer_l7': [96, 192, 384, 768], 'efficientformerv2_s0': [32, 48, 96, 176],
    'efficientformerv2_s1': [32, 48, 120, 224], 'efficientformerv2_s2': [32, 64, 144, 288],
    'efficientformerv2_l': [40, 80, 192, 384],
}


def _reference(name):
    module = timm_v2 if 'v2' in name else timm_v1
    return getattr(module, name)(drop_path_rate=0.)  # S2 / L default to stochastic depth


def _pair(name, seed=0):
    """Our model and timm's built-in on the same random weights (loaded strictly)."""
    ref = randomize_(_reference(name), seed)
    ours = timm.create_model(name, drop_path_rate=0.)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def test_import_registers_all_models_without_warnings():
    code = ('import warnings; warnings.simplefilter("error"); import timm, efficientformer_timm; '
            f'print([type(timm.create_model(n)).__module__ for n in {ALL_MODELS!r}])')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(
        ['efficientformer_timm.efficientformer'] * 3 + ['efficientformer_timm.efficientformer_v2'] * 4)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_pretrained_tags_match_timm(name):
    cfg = timm.models.get_pretrained_cfg(f'{name}.snap_dist_in1k')
    assert cfg.hf_hub_id == f'timm/{name}.snap_dist_in1k'
    assert cfg.interpolation == 'bicubic' and cfg.crop_pct == 0.95
    assert cfg.classifier == ('head', 'head_dist')
    assert f'{name}.snap_dist_in1k' in timm.list_pretrained(name)


@pytest.mark.parametrize('name', ALL_MODELS)
@pytest.mark.parametrize('train', [False, True])
def test_parity_with_timm_at_224(name, train):
    ours, ref = _pair(name)
    ours.train(train)
    ref.train(train)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), rtol=0, atol=1e-5)
        for norm in (False, True):
            final_o, inter_o = ours.forward_intermediates(x, norm=norm)
            final_r, inter_r = ref.forward_intermediates(x, norm=norm)
            torch.testing.assert_close(final_o, final_r, rtol=0, atol=1e-5)
            assert len(inter_o) == len(inter_r) == 4
            for a, b in zip(inter_o, inter_r):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_any_input_size_forward_backward(name):
    model = timm.create_model(name, num_classes=10)
    randomize_(model)
    for train in (True, False):
        model.train(train)
        for h, w in [(64, 64), (129, 193)]:  # 333x517 and 801x1333 run in the features tests
            x = torch.randn(2, 3, h, w, requires_grad=train)
            logits = model(x)
            assert logits.shape == (2, 10)
            feats = model.forward_intermediates(x, intermediates_only=True)
            expected = [(2, c, -(-h // s), -(-w // s)) for c, s in zip(WIDTHS[name], (4, 8, 16, 32))]
            assert [tuple(f.shape) for f in feats] == expected
            assert all(torch.isfinite(f).all() for f in feats)
            if train:
                (logits.sum() + sum(f.mean() for f in feats)).backward()
                assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize('name', ['efficientformer_l1', 'efficientformerv2_s0'])
def test_features_only_detection_size(name):
    model = timm.create_model(name, features_only=True).eval()
    assert model.feature_info.channels() == WIDTHS[name]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.module_name() == [f'stages.{i}' for i in range(4)]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 801, 1333))
        assert [tuple(f.shape) for f in model(torch.randn(2, 3, 333, 517))] == [
            (2, c, -(-333 // s), -(-517 // s)) for c, s in zip(WIDTHS[name], (4, 8, 16, 32))]
    assert [tuple(f.shape) for f in feats] == [
        (1, c, -(-801 // s), -(-1333 // s)) for c, s in zip(WIDTHS[name], (4, 8, 16, 32))]


@pytest.mark.parametrize('name', ['efficientformer_l1', 'efficientformerv2_s1'])
def test_features_only_out_indices(name):
    model = timm.create_model(name, features_only=True, out_indices=(1, 2, 3))
    assert model.feature_info.channels() == WIDTHS[name][1:]
    assert model.feature_info.reduction() == [8, 16, 32]
    feats = model(torch.randn(2, 3, 256, 320))
    assert [f.shape[1] for f in feats] == WIDTHS[name][1:]
    pruned = timm.create_model(name, features_only=True, out_indices=(0, 1))
    # stages after the last output are not built into the forward (V1: getter over the pruned network, V2: stock
    # timm's FeatureListNet over the flattened stem and stages)
    built = len(pruned.model.stages) if 'v2' not in name else sum(n.startswith('stages_') for n in pruned.keys())
    assert built == 2
    assert [f.shape[1] for f in pruned(torch.randn(1, 3, 96, 96))] == WIDTHS[name][:2]


@pytest.mark.parametrize('name, norm_type', [('efficientformer_l1', torch.nn.GroupNorm),
                                             ('efficientformerv2_s0', torch.nn.BatchNorm2d)])
def test_feature_norm_option(name, norm_type):
    model = timm.create_model(name, features_only=True, feature_norm=True, out_indices=(1, 2, 3))
    assert model.feature_info.module_name() == ['feature_norms.1', 'feature_norms.2', 'feature_norms.3']
    norms = model.model.feature_norms
    assert isinstance(norms[0], torch.nn.Identity)  # output 0 not taken: no unused parameters
    assert all(isinstance(n, norm_type) for n in norms[1:])
    randomize_(model)
    model.eval()
    x = torch.randn(1, 3, 160, 224)
    plain = timm.create_model(name, features_only=True, feature_cls='getter', out_indices=(1, 2, 3)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if 'feature_norms' not in k})
    with torch.no_grad():
        for raw, normed, norm in zip(plain(x), model(x), norms[1:]):
            torch.testing.assert_close(normed, norm(raw))


@pytest.mark.parametrize('layout', [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize('shape', [(2, 5, 64, 64), (1, 7, 13, 9), (2, 4, 2, 5), (1, 3, 1, 1)])
def test_window_average_pooling_equals_timm_pooling(shape, layout):
    """The pooling mixer's depthwise-convolution average is timm's (PyTorch's average pooling, padding left out):
    same values and input gradients at edges, odd sizes and 1-pixel maps, in both memory formats, which it keeps."""
    ours = WindowAveragePooling(3)
    assert type(timm.create_model('efficientformer_l1').stages[0].blocks[0].token_mixer) is WindowAveragePooling
    x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    got, want = ours(x), timm_v1.Pooling(3)(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got.is_contiguous(memory_format=layout)
    grad = torch.randn_like(got)
    torch.testing.assert_close(torch.autograd.grad(got, x, grad)[0], torch.autograd.grad(want, x, grad)[0],
                               rtol=1e-12, atol=1e-12)
    with torch.autocast('cpu', dtype=torch.bfloat16):  # the average in bf16, the difference in the input's fp32
        low = ours(x.detach().float())
    torch.testing.assert_close(low, want.detach().float(), rtol=0.02, atol=0.05)


def test_bias_resize_is_exact_at_pretraining_grid_and_follows_offsets():
    model = randomize_(timm.create_model('efficientformer_l1')).eval()
    attn = model.stages[3].blocks[4].token_mixer
    table = attn.attention_biases
    exact = attn.attention_bias((7, 7), torch.float32)
    torch.testing.assert_close(exact, table[:, attn.attention_bias_idxs], rtol=0, atol=0)
    big = attn.attention_bias((13, 21), torch.float32)
    assert big.shape == (8, 13 * 21, 13 * 21)
    resized = torch.nn.functional.interpolate(
        table.detach().reshape(1, 8, 7, 7), size=(13, 21), mode='bicubic', align_corners=False, antialias=True)[0]
    # query (2, 3) to key (10, 1): offset (8, 2)
    torch.testing.assert_close(big[:, 2 * 21 + 3, 10 * 21 + 1], resized[:, 8, 2])
    torch.testing.assert_close(big[:, 10 * 21 + 1, 2 * 21 + 3], resized[:, 8, 2])  # symmetric in |offset|


def test_strided_query_offset_index():
    index = relative_offset_index((5, 4), query_stride=2)
    assert index.shape == (3 * 2, 20)
    # query row 1 of the strided grid sits at y=2, x=2 (query col 1): key (4, 0) is at offset (2, 2)
    assert index[1 * 2 + 1, 4 * 4 + 0].item() == 2 * 4 + 2


@pytest.mark.parametrize('grid', [(5, 4), (7, 7), (1, 6), (13, 21)])
@pytest.mark.parametrize('query_stride', [1, 2])
def test_bias_gathered_in_two_steps_is_the_offset_index_gather(grid, query_stride):
    table = torch.randn(3, grid[0] * grid[1])
    want = table[:, relative_offset_index(grid, query_stride)]
    torch.testing.assert_close(_bias.offset_table_bias(table, grid, query_stride), want, rtol=0, atol=0)


@pytest.mark.parametrize('name', ['efficientformer_l1', 'efficientformerv2_s0'])
def test_bias_cache_in_eval_and_gradients_in_train(name):
    model = randomize_(timm.create_model(name, features_only=True))
    attns = [m for m in model.modules() if hasattr(m, 'attention_bias_cache')]
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 320, 480))
        first = [dict(a.attention_bias_cache) for a in attns]
        model(torch.randn(1, 3, 320, 480))
        assert all(a.attention_bias_cache.keys() == f.keys() and len(f) == 1 for a, f in zip(attns, first))
        assert all(a.attention_bias_cache[k] is f[k] for a, f in zip(attns, first) for k in f)  # reused
        # an in-place update (load_state_dict, optimizer step) invalidates the cache
        attns[0].attention_biases.add_(1.0)
        model(torch.randn(1, 3, 320, 480))
        (cached,) = attns[0].attention_bias_cache.values()
        grid = (10, 15)  # the first attention's keys at 320x480: L1's stage 4, V2-S0's strided stage-3 attention
        torch.testing.assert_close(cached, attns[0]._compute_attention_bias(grid))
    model.train()
    assert all(not a.attention_bias_cache for a in attns)
    sum(f.sum() for f in model(torch.randn(2, 3, 320, 480))).backward()
    assert all(a.attention_biases.grad is not None and a.attention_biases.grad.abs().sum() > 0 for a in attns)
    assert all(not a.attention_bias_cache for a in attns)


def _count_row_blocks(monkeypatch):
    calls = []
    rows = _bias._attention_rows
    monkeypatch.setattr(_bias, '_attention_rows', lambda q, *args: calls.append(q.shape[-2]) or rows(q, *args))
    return calls


def test_attention_in_query_row_blocks_is_the_whole_map_attention(monkeypatch):
    """CPU inference computes large maps a block of query rows at a time: the output of the whole-map form with
    V2's talking heads as 1x1 convolution modules (the authors' arithmetic), with and without talking heads; with
    autograd recording, whole maps and the same gradients."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 8, n, d, generator=gen, dtype=torch.float64)
               for n, d in [(300, 16), (500, 16), (500, 64)])
    bias = torch.randn(8, 300, 500, generator=gen, dtype=torch.float64)
    heads = [torch.nn.Conv2d(8, 8, 1).double() for _ in range(2)]
    talking_heads = (heads[0].weight, heads[0].bias, heads[1].weight, heads[1].bias)
    calls = _count_row_blocks(monkeypatch)
    rows = _bias.CPU_BLOCK_BYTES // (8 * 500 * 8)  # 9.6 MB of float64 maps: 65 rows a block
    with torch.no_grad():
        logits = q @ k.transpose(-2, -1) * 0.25 + bias
        for mixing, want in [(None, logits.softmax(-1) @ v),
                             (talking_heads, heads[1](heads[0](logits).softmax(-1)) @ v)]:
            calls.clear()
            got = _bias.explicit_attention(q, k, v, bias, 0.25, mixing)
            assert calls == [rows] * 4 + [300 - 4 * rows]
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # with autograd: whole maps, the gradients of the whole-map form (the first head mix's bias included: zero)
    calls.clear()
    q.requires_grad_()
    params = [q, *talking_heads]
    got = _bias.explicit_attention(q, k, v, bias, 0.25, talking_heads)
    want = heads[1](heads[0](q @ k.transpose(-2, -1) * 0.25 + bias).softmax(-1)) @ v
    assert calls == [300]
    weights = torch.randn(got.shape, generator=gen, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((got * weights).sum(), params),
                    torch.autograd.grad((want * weights).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('name', ['efficientformer_l1', 'efficientformerv2_s0'])
def test_models_compute_the_same_in_query_row_blocks(name, monkeypatch):
    """Every attention of the model (V1's, V2's strided and downsample attentions) in blocks of 16 query rows
    (small blocks make a small input use them), two images in channels_last: the features of whole maps."""
    model = randomize_(timm.create_model(name, features_only=True)).double().eval()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 224, 290, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    calls = _count_row_blocks(monkeypatch)
    with torch.no_grad():
        want = model(x)
        whole = len(calls)
        monkeypatch.setattr(_bias, 'CPU_BLOCK_BYTES', 1024)
        calls.clear()
        got = model(x)
    assert len(calls) > whole and set(calls[:-1]) >= {16}
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_classes_are_ours():
    assert isinstance(timm.create_model('efficientformer_l3'), EfficientFormer)
    assert isinstance(timm.create_model('efficientformerv2_l'), EfficientFormerV2)
