"""The speed-ups keep the numbers (fusion, bias cache) and export paths work."""
import copy
import os
import re
import types
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch

from efficientformer_timm._bias import antialiased_bicubic_weights
from efficientformer_timm.checkpoint import timm_to_original
from efficientformer_timm import fuse
from efficientformer_timm.export import check_onnx, export_onnx, onnxruntime_session, outputs_match
from efficientformer_timm.fuse import FoldedMetaBlock2d, FoldedV2Block, fuse_batchnorm, timm_state_dict
from helpers import ALL_MODELS, fewer_blocks, made_once, randomize_

EXPORT_ONNX = os.path.join(os.path.dirname(__file__), '..', 'tools', 'export_onnx.py')


# one V1 and one V2: fusion works on module types, which every variant of a family shares
@pytest.mark.parametrize('name', ['efficientformer_l1', 'efficientformerv2_l'])
def test_fused_model_matches_and_saves_timm_format(name):
    model = randomize_(timm.create_model(name)).eval()
    fused = fuse_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.stages.modules())
    with torch.no_grad():
        for size in [(224, 224), (161, 257)]:
            x = torch.randn(2, 3, *size)
            torch.testing.assert_close(fused(x), model(x), rtol=0, atol=1e-5)
            for a, b in zip(fused.forward_intermediates(x, intermediates_only=True),
                            model.forward_intermediates(x, intermediates_only=True)):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    reloaded = timm.create_model(name).eval()
    reloaded.load_state_dict(timm_state_dict(fused), strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), fused(x), rtol=0, atol=1e-5)


# L1: depths 3, 2, 6, 4 with one attention block: 14 Meta4D blocks (MLP: 1x1 conv + GELU, 1x1 conv + residual);
# V2-S0: depths 2, 2, 6, 4, every block has a convolutional MLP (1x1 + GELU, 3x3 depthwise + GELU, 1x1 + residual)
@pytest.mark.parametrize('name,num_blocks,kernels_per_block', [('efficientformer_l1', 14, 2),
                                                               ('efficientformerv2_s0', 14, 3)])
def test_fused_blocks_run_onednn_kernels_in_cpu_inference_only(name, num_blocks, kernels_per_block, monkeypatch):
    """Fused CPU inference runs each convolutional block's MLP as oneDNN convolutions with the GELU / residual add
    fused in, computing what the unfused model does; with autograd, TorchScript, tracing or autocast the plain
    modules run."""
    calls = []
    onednn_conv = fuse._onednn_conv
    monkeypatch.setattr(fuse, '_onednn_conv', lambda *args, **kw: calls.append(1) or onednn_conv(*args, **kw))
    model = randomize_(timm.create_model(name, features_only=True)).eval()
    fused = fuse_batchnorm(copy.deepcopy(model))
    blocks = [m for m in fused.modules() if isinstance(m, (FoldedMetaBlock2d, FoldedV2Block))]
    assert len(blocks) == num_blocks
    assert not any(b.training for b in blocks)
    x = torch.randn(2, 3, 161, 257)

    def assert_matches(outputs):
        for a, b in zip(outputs, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)

    with torch.no_grad():
        expected = model(x)
        for layout in (torch.contiguous_format, torch.channels_last):
            calls.clear()
            assert_matches(copy.deepcopy(fused).to(memory_format=layout)(x.contiguous(memory_format=layout)))
            assert len(calls) == kernels_per_block * len(blocks)
        calls.clear()
        assert_matches(torch.jit.script(fused)(x))
        assert_matches(torch.jit.trace(fused, x, check_trace=False)(x))
        assert not calls
        assert fuse._onednn_applies(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):  # fp32 tensors under autocast are computed in bf16
            assert not fuse._onednn_applies(x)
    outputs = fused(x)
    assert not calls and all(o.requires_grad for o in outputs)
    assert_matches([o.detach() for o in outputs])


@pytest.mark.parametrize('name,kwargs,halo', [('efficientformer_l1', {}, 0),
                                              ('efficientformerv2_s0', {'output_stride': 16}, 2)])
def test_fused_mlps_in_row_bands_compute_what_whole_maps_do(name, kwargs, halo, monkeypatch):
    """Channels_last fused inference runs large MLPs a band of rows of one image at a time (V2's read with a halo
    for the depthwise convolution, two rows where output_stride dilates it): one-row bands here, batch 2, an odd
    size, the unfused model's features."""
    model = randomize_(timm.create_model(name, features_only=True, **kwargs)).eval()
    fast = fuse_batchnorm(copy.deepcopy(model)).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 97, 131)
    inputs = []
    onednn_conv = fuse._onednn_conv
    monkeypatch.setattr(fuse, '_onednn_conv',
                        lambda x, *args, **kw: inputs.append(x.shape) or onednn_conv(x, *args, **kw))
    monkeypatch.setattr(fuse, 'MLP_BAND_BYTES', 1)
    with torch.no_grad():
        for a, b in zip(fast(x.contiguous(memory_format=torch.channels_last)), model(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    first_convs = inputs[::3] if halo else inputs[::2]  # each band's first convolution reads the band and its halo
    assert {shape[0] for shape in inputs} == {1} and max(shape[2] for shape in first_convs) == 1 + 2 * halo
    assert len(inputs) > 2 * 97 // 4  # at least the bands of both images of the first stage


def test_fuse_bn_option_loads_then_fuses(tmp_path):
    source = randomize_(timm.create_model('efficientformer_l1')).eval()
    torch.save(source.state_dict(), tmp_path / 'l1.pth')
    fused = timm.create_model('efficientformer_l1', features_only=True, fuse_bn=True, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'l1.pth')))
    assert not fused.training
    x = torch.randn(1, 3, 256, 320)
    with torch.no_grad():
        for a, b in zip(fused(x), source.forward_intermediates(x, intermediates_only=True)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize('name', ['efficientformer_l1', 'efficientformerv2_s1'])
def test_cached_bias_equals_resize_every_forward(name):
    model = randomize_(timm.create_model(name, features_only=True)).eval()
    reference = copy.deepcopy(model)
    for m in reference.modules():  # the reference computes the bias at every forward
        if hasattr(m, 'attention_bias_cache'):
            m.attention_bias = types.MethodType(lambda self, grid, dtype: self._compute_attention_bias(grid).to(dtype), m)
    x = torch.randn(1, 3, 320, 480)
    with torch.no_grad():
        model(x)  # fills the cache
        for a, b in zip(model(x), reference(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(not m.attention_bias_cache for m in reference.modules() if hasattr(m, 'attention_bias_cache'))


@pytest.mark.parametrize('name', ALL_MODELS)
def test_scripted_traced_and_fused_models_equal_eager(name):
    """Every variant (widths, numbers of attention blocks) through TorchScript, torch.jit.trace, FX and BatchNorm
    fusion (contiguous and channels_last), classification and features_only, at a small odd size (TorchScript at most
    128 pixels a side, as timm's own tests script). Fewer blocks a stage: these paths work per kind of block."""
    small = fewer_blocks(name)
    model = randomize_(timm.create_model(name, drop_path_rate=0., **small)).eval()
    weights = dict(pretrained=True, pretrained_cfg_overlay=dict(state_dict=model.state_dict()), **small)
    features = timm.create_model(name, features_only=True, **weights).eval()
    fx_features = timm.create_model(name, features_only=True, feature_cls='fx', **weights).eval()
    x = torch.randn(2, 3, 97, 126)
    with torch.no_grad():
        logits, maps = model(x), features(x)
        assert [tuple(m.shape[-2:]) for m in maps] == [(25, 32), (13, 16), (7, 8), (4, 4)]
        for variant in (torch.jit.script(model), torch.jit.trace(model, x, check_trace=False),
                        torch.fx.symbolic_trace(model), fuse_batchnorm(copy.deepcopy(model))):
            torch.testing.assert_close(variant(x), logits, rtol=0, atol=1e-5)
        fused = fuse_batchnorm(copy.deepcopy(features))
        for variant, inputs in [(torch.jit.script(features), x), (torch.jit.trace(features, x, check_trace=False), x),
                                (fx_features, x), (fused, x),
                                (copy.deepcopy(fused).to(memory_format=torch.channels_last),
                                 x.contiguous(memory_format=torch.channels_last))]:
            for a, b in zip(variant(inputs), maps, strict=True):
                if a.dim() == 3:  # V1's last stage as FX extracts it: its (B, N, C) tokens
                    a = a.transpose(1, 2).reshape(b.shape)
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize('table', [7, 4])
def test_bias_resize_matrices_equal_torch_antialiased_bicubic(table):
    values = torch.randn(8, table, table)
    for size in [(2, 2), (2, 9), (3, 5), (7, 7), (11, 4), (25, 42), (40, 17)]:
        expected = torch.nn.functional.interpolate(
            values[None], size=size, mode='bicubic', align_corners=False, antialias=True)[0]
        got = antialiased_bicubic_weights(table, size[0]) @ values @ antialiased_bicubic_weights(table, size[1]).T
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(antialiased_bicubic_weights(table, table), torch.eye(table), rtol=0, atol=0)


def test_onnx_export_tool_writes_a_checked_file_or_nothing(tmp_path):
    """tools/export_onnx.py: weights in the authors' layout, BatchNorm folded, every output checked in onnxruntime
    against PyTorch at the check sizes; a check that fails leaves no file behind."""
    state = randomize_(timm.create_model('efficientformer_l1')).state_dict()
    torch.save(timm_to_original(state), tmp_path / 'weights.pth')
    out = tmp_path / 'features.onnx'
    args = [sys.executable, EXPORT_ONNX, 'efficientformer_l1', str(out), '--checkpoint', str(tmp_path / 'weights.pth')]
    optimized = tmp_path / 'features.optimized.onnx'
    done = subprocess.run(args + ['--fuse-bn', '--check-sizes', '96x700', '129x161', '--check-runtimes', 'onnxruntime',
                                  'openvino', '--onnxruntime-optimized', str(optimized), '--opset', '18'],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for runtime in ('onnxruntime', 'openvino'):  # the file, then the graph onnxruntime optimized, checked
        assert len(re.findall(rf'^96x700: outputs 2x48x24x175, 2x96x12x88, 2x224x6x44, 2x448x3x22; max \|{runtime} - '
                              r'torch\| = \S+ \(\S+ of the tolerance\)$', done.stdout, re.MULTILINE)) == \
            (2 if runtime == 'onnxruntime' else 1), done.stdout
    assert '129x161: outputs' in done.stdout and out.is_file() and optimized.is_file()
    optimized.unlink()
    import onnx
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert 'Erf' in ops and 'Gelu' not in ops  # opset 18 spells GELU out
    # the fused graph computes what the unfused model with those weights computes
    model = timm.create_model('efficientformer_l1', features_only=True, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'weights.pth'))).eval()
    assert max(share for *_, share in check_onnx(model, str(out), [(160, 224)])) <= 1
    out.unlink()

    # exact equality asked of the first stage's graph: the check fails and leaves nothing
    strict = subprocess.run(args + ['--out-indices', '0', '--check-sizes', '64', '--atol', '0', '--rtol', '0'],
                            capture_output=True, text=True, cwd=tmp_path)
    assert strict.returncode == 1 and 'not written' in strict.stderr
    assert sorted(os.listdir(tmp_path)) == ['weights.pth']
    # a static file runs at its size only: other check sizes are refused before any export
    refused = subprocess.run(args + ['--static', '320x480', '--check-sizes', '224'], capture_output=True, text=True)
    assert refused.returncode == 2 and '--static: the file runs at that size only' in refused.stderr


@pytest.fixture(scope='session')
def v2_onnx(tmp_path_factory):
    """V2-S0's features with large activations in its last two stages (up to about 1e7), exported once per run:
    the dynamic-size graph the ONNX tests share."""
    model = randomize_(timm.create_model('efficientformerv2_s0', features_only=True)).eval()
    with torch.no_grad():
        model.stages_2.blocks[-1].ls2.gamma.mul_(1e6)
        model.stages_3.blocks[-1].ls2.gamma.mul_(1e6)
    return model, str(made_once(tmp_path_factory, 'v2_s0.onnx', lambda path: export_onnx(model, str(path))))


def test_onnx_export_runs_any_size_in_onnxruntime(v2_onnx):
    """The dynamic-size file at three sizes and batches; its biases are gathered from the resized offset tables
    with small indices (Gather, no GatherND with an index the size of the bias)."""
    import onnx
    import onnxruntime
    model, path = v2_onnx
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert 'Gather' in ops and 'GatherND' not in ops
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    assert [i.name for i in session.get_inputs()] == ['image']
    assert [o.name for o in session.get_outputs()] == ['feature0', 'feature1', 'feature2', 'feature3']
    for batch, height, width in [(1, 224, 224), (3, 333, 517), (2, 96, 700)]:
        x = torch.randn(batch, 3, height, width)
        with torch.no_grad():
            expected = model(x)
        got = session.run(None, {'image': x.numpy()})
        assert [g.shape for g in got] == [tuple(e.shape) for e in expected]
        # stages 0 and 1 hold activations of order 1: the absolute tolerance of an unscaled model
        for g, e in zip(got[:2], expected[:2]):
            np.testing.assert_allclose(g, e.numpy(), rtol=0, atol=1e-4)
        assert outputs_match(got, expected, rtol=1e-5, atol=1e-4)[1] <= 1


def test_onnx_file_runs_in_openvino_and_onnxruntime_optimized(v2_onnx, tmp_path):
    """The dynamic-size file compiles in OpenVINO and matches PyTorch at several sizes; the graph onnxruntime writes
    after its optimizations matches too."""
    model, path = v2_onnx
    sizes = [(224, 224), (333, 517), (96, 700)]
    results = check_onnx(model, path, sizes, batch=1, runtime='openvino')
    assert [shapes[-1] for _, shapes, _, _ in results] == [(1, 176, 7, 7), (1, 176, 11, 17), (1, 176, 3, 22)]
    assert max(share for *_, share in results) <= 1
    optimized = str(tmp_path / 'optimized.onnx')
    onnxruntime_session(path, threads=1, optimized_path=optimized)
    assert max(share for *_, share in check_onnx(model, optimized, sizes[:2], batch=1)) <= 1


def test_static_export_of_a_dilated_model(tmp_path):
    """--static HxW (opset 20, the default) of V2-S0 at output_stride 8 (its attention downsample with full-grid
    queries, its stride-2 attention dilated): GELU as Gelu nodes, the biases computed from constants only (onnxruntime
    folds them when it loads the file: no gather left in the graph it runs), the dynamic batch kept; checked in both
    runtimes at two batches; other sizes refused."""
    import onnx
    model = randomize_(timm.create_model(  # depth-reduced: every kind of block, fewer of them
        'efficientformerv2_s0', features_only=True, output_stride=8, depths=(1, 1, 2, 2), num_vit=1,
        mlp_ratios=4)).eval()
    path = str(tmp_path / 'static.onnx')
    export_onnx(model, path, static_size=(160, 224))
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert 'Gelu' in ops and 'Erf' not in ops and 'Gather' in ops
    optimized = str(tmp_path / 'optimized.onnx')
    onnxruntime_session(path, threads=1, optimized_path=optimized)
    assert not {node.op_type for node in onnx.load(optimized).graph.node} & {'GatherND', 'Gather', 'Range'}
    for runtime in ('onnxruntime', 'openvino'):
        for batch in (1, 3):
            results = check_onnx(model, path, [(160, 224)], batch, runtime=runtime)
            assert results[0][1] == [(batch, 32, 40, 56), (batch, 48, 20, 28), (batch, 96, 20, 28), (batch, 176, 20, 28)]
            assert results[0][3] <= 1
    with pytest.raises(ValueError, match=r'exported for 160x224 inputs only \(--static\), got 224x224'):
        check_onnx(model, path, [(224, 224)], batch=1, runtime='openvino')


def test_onnx_check_is_relative_to_each_output_scale(v2_onnx):
    """Large activations differ from PyTorch by more than any fixed absolute tolerance in fp32, yet the graph is
    right: the check accepts it. The same file checked against other weights is refused."""
    model, path = v2_onnx
    sizes = [(224, 224), (160, 224)]
    results = check_onnx(model, path, sizes)
    assert max(diff for _, _, diff, _ in results) > 1e-4  # an absolute tolerance would refuse this correct graph
    assert max(ratio for _, _, _, ratio in results) <= 1
    other = copy.deepcopy(model)
    with torch.no_grad():
        for param in other.stages_3.parameters():
            param.mul_(1.01)
    assert max(ratio for _, _, _, ratio in check_onnx(other, path, sizes)) > 1


# dynamo, AOTAutograd and inductor's dynamic-shape code generation (one graph for every size) for L1 and V2-S0
# (talking heads, the attention downsample, the gather of the bias from its resized table); `make test` runs them on
# the newest torch, where inductor changes (on the verified stack the benchmark's training test runs inductor with
# static shapes)
@pytest.mark.parametrize('name,backend', [('efficientformer_l1', 'inductor'), ('efficientformerv2_s0', 'inductor')])
def test_torch_compile_dynamic_shapes(name, backend):
    from torch._dynamo.utils import counters
    # depth-reduced: compile time grows with the number of blocks, while every kind of block is still compiled
    small = dict(depths=(1, 1, 2, 2), num_vit=1, **(dict(mlp_ratios=4) if 'v2' in name else {}))
    model = randomize_(timm.create_model(name, features_only=True, **small)).eval()
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, dynamic=True, backend=backend)
    with torch.no_grad():
        for size in [(256, 320), (333, 517), (224, 224)]:
            x = torch.randn(2, 3, *size)
            for a, b in zip(compiled(x), model(x)):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert counters['stats']['unique_graphs'] == 1  # one graph serves every size: no recompilation


def test_explicit_attention_matches_scaled_dot_product_attention(monkeypatch):
    """On CPU V1's attention takes the explicit form at every grid size (q scaled, the bias added in place to the
    (B, heads, N, N) maps): the outputs and gradients of scaled_dot_product_attention, which CUDA runs on large
    grids. 18 x 19 tokens: 117k query-key pairs, above SDPA_MIN_PAIRS."""
    from efficientformer_timm import _bias
    sdpa = torch.nn.functional.scaled_dot_product_attention
    calls = []
    monkeypatch.setattr(_bias.F, 'scaled_dot_product_attention', lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    tokens = 18 * 19
    assert tokens * tokens >= _bias.SDPA_MIN_PAIRS
    shapes = [(2, 8, tokens, 32), (2, 8, tokens, 32), (2, 8, tokens, 128), (8, tokens, tokens)]
    inputs = [torch.randn(shape, dtype=torch.float64) for shape in shapes]
    results = []
    for attend in (_bias.biased_attention, sdpa):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = attend(*leaves, scale=32 ** -0.5)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results.append([out.detach()] + [t.grad for t in leaves])
    assert not calls  # the model's path did not go through SDPA on CPU
    for name, got, want in zip(['output', 'q', 'k', 'v', 'bias'], *results):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=name)


def test_deploy_page_snippet_runs_as_written(v2_onnx, tmp_path, capsys):
    """docs/deploy.md's snippet (features of an image file in onnxruntime and OpenVINO), on the shared export and a
    picture made here."""
    from PIL import Image
    page = open(os.path.join(os.path.dirname(__file__), '..', 'docs', 'deploy.md')).read()
    block = re.search(r'## Run\n.*?```python\n(.*?)```', page, re.S).group(1)
    picture = tmp_path / 'street.jpg'
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 900, 3), dtype=np.uint8)).save(picture)
    namespace = {}
    exec(block.replace('"l1.onnx"', repr(v2_onnx[1])).replace('street.jpg', str(picture)), namespace)
    shapes = capsys.readouterr().out.strip().rsplit('] ', 1)[0]  # then the largest onnxruntime / OpenVINO difference
    assert shapes == '[(1, 32, 200, 334), (1, 48, 100, 167), (1, 96, 50, 84), (1, 176, 25, 42)'
    expected = v2_onnx[0](torch.from_numpy(namespace['x']))
    assert outputs_match(namespace['features_ov'], expected)[1] <= 1
    assert outputs_match(namespace['features'], expected)[1] <= 1
