"""tools/benchmark.py runs every variant it names, in both modes, and writes files only when asked; its variants
(tools/_benchmark_lib.py) and the reproduction of the authors' backbone (tools/_authors.py) compute what the model
computes; the targets (tools/_targets.py) compare what they name."""
import copy
import json
import os
import re
import subprocess
import sys

import pytest
import timm
import torch
from PIL import Image

import _authors as authors
import _benchmark_lib as benchmark
from _targets import target_lines
from efficientformer_timm.efficientformer import Attention, WindowAveragePooling
from efficientformer_timm.efficientformer_v2 import Attention2d
from helpers import randomize_

BENCHMARK = os.path.join(os.path.dirname(__file__), '..', 'tools', 'benchmark.py')
QUICK = ['--repeats', '1', '--warmup', '0', '--threads', '1']


def _run(args, cwd):
    out = subprocess.run([sys.executable, BENCHMARK, *QUICK, *args], cwd=cwd, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'profiler_start' not in out.stderr  # the torch profiler's log lines stay out of the tables
    return out.stdout


@pytest.mark.mm  # the mm_backbone variants
def test_training_steps_with_json_and_plot(tmp_path):
    log = _run(['--models', 'efficientformerv2_s0', '--train', '--cases', '64x96:2', '--json', 'rows.json', '--plot',
                'times.png', '--profile', '--keep-freed-memory', '--ablations'], tmp_path)
    written = json.loads((tmp_path / 'rows.json').read_text())
    assert written['machine']['keep_freed_memory'] and ', freed memory kept; fp32 2048^3 matmul' in log
    capability = written['machine']['cpu_capability']
    assert capability == torch.backends.cpu.get_cpu_capability() and f'({capability} kernels)' in log
    rows = written['results']
    assert [r['variant'] for r in rows] == ['ours', 'ours_channels_last', 'mm_backbone', 'authors_backbone',
                                           'resnet50', 'resnet50_channels_last',
                                           'resize_table_every_forward', 'authors_dense_bias']  # V2: no V1 ablation
    assert written['command'] == ' '.join(['python', 'tools/benchmark.py', *QUICK, '--models', 'efficientformerv2_s0',
                                           '--train', '--cases', '64x96:2', '--json', 'rows.json', '--plot',
                                           'times.png', '--profile', '--keep-freed-memory', '--ablations'])
    assert all(r['mode'] == 'train' and r['size'] == '64x96' and r['batch'] == 2 and r['median_ms'] > 0
               and r['peak_mb'] > 0 and r['page_faults_per_step'] >= 0 for r in rows)
    # every variant but resnet50 runs our network: the same training FLOPs, each at its own rate
    flops = {r['gflops'] for r in rows if not r['variant'].startswith('resnet50')}
    assert len(flops) == 1 and flops.pop() > 0
    for r in rows:
        if r['variant'].startswith('resnet50'):
            assert 'gflops' not in r
        else:
            rate = r['gflops'] / r['median_ms'] * 1e3
            assert r['achieved_gflops_per_s'] == pytest.approx(rate)
            assert r['fraction_of_matmul'] == pytest.approx(rate / written['machine']['matmul_fp32_gflops'])
    for variant in ('mm_backbone', 'authors_backbone'):  # forward modules and backward nodes of a training step
        line = re.search(rf'# breakdown training step efficientformerv2_s0 64x96 batch 2 {variant}, mean of 3 steps: '
                         r'forward ([0-9]+) ms \((.*)\); backward ([0-9]+) ms \((.*)\)$', log, re.MULTILINE)
        assert 'Conv2d' in line.group(2) and 'ConvolutionBackward0' in line.group(4)
    with Image.open(tmp_path / 'times.png') as picture:
        assert picture.format == 'PNG'


@pytest.mark.mm
def test_compiled_mm_backbone_trains_like_the_mm_backbone(monkeypatch, capsys):
    """--train --compile's variant: a compiled training step, with the mm backbone's outputs and gradients, timed
    by the benchmark's training loop after its first (compiling) step. The backbones are depth-reduced V2-S0 (every
    kind of block, fewer of them): inductor's compile time grows with the blocks."""
    create_model = timm.create_model
    small = dict(depths=(1, 1, 2, 2), num_vit=1, mlp_ratios=4)
    monkeypatch.setattr(timm, 'create_model', lambda name, **kwargs: create_model(
        name, **(dict(kwargs, **small) if name == 'efficientformerv2_s0' else kwargs)))
    eager = randomize_(benchmark.mm_backbone('efficientformerv2_s0')).train()
    compiled = benchmark.compiled_mm_backbone('efficientformerv2_s0').train()
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(2, 3, 64, 96)

    def step(model):
        out = model(x)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in out).backward()
        return out, {k: p.grad for k, p in model.named_parameters()}

    graphs = torch._dynamo.utils.counters['stats']
    results = [step(eager)]
    graphs_before = graphs['unique_graphs']
    results.append(step(compiled))
    assert graphs['unique_graphs'] > graphs_before  # dynamo compiled the network's forward
    for got, want in zip(results[1][0], results[0][0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # absolute tolerance on the scale of all gradients: a convolution bias ahead of a train-mode BatchNorm has a
    # gradient of zero up to rounding, which a relative check would compare noise against noise
    scale = max(grad.abs().max().item() for grad in results[0][1].values())
    for key, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][key], grad, rtol=1e-3, atol=1e-4 * scale, msg=key)

    # --train --compile: the loop times the compiled variant after printing its first step (here compiled already)
    monkeypatch.setattr(benchmark, 'compiled_mm_backbone', lambda name: compiled)
    rows = benchmark.run_train(['efficientformerv2_s0'], [((64, 96), 2)], torch.device('cpu'),
                               dict(matmul_fp32_gflops=100.), names=['mm_backbone_compiled'], repeats=1, warmup=0,
                               compile_model=True)
    assert [r['variant'] for r in rows] == ['ours', 'mm_backbone_compiled']
    assert re.search(r'# efficientformerv2_s0 64x96 batch 2 mm_backbone_compiled: first step \(compiling\) '
                     r'[0-9.]+ s', capsys.readouterr().out)


@pytest.mark.mm
def test_inference_writes_nothing_unless_asked(tmp_path):
    log = _run(['--models', 'efficientformerv2_s0', '--sizes', '64', '--batches', '1', '--profile'], tmp_path)
    assert os.listdir(tmp_path) == []
    for variant in ('ours', 'ours_fused_channels_last'):
        profile = re.search(rf'# profile efficientformerv2_s0 64x64 batch 1 {variant}: (.*)', log).group(1)
        assert 'convolution' in profile and 'backward' not in profile
    variants = [line.split('|')[4].strip() for line in log.splitlines() if line.startswith('| efficientformerv2_s0')]
    # what users compare: no ablation without --ablations
    assert variants == ['ours', 'ours_fused', 'ours_fused_channels_last', 'authors_backbone', 'resnet50',
                        'resnet50_channels_last', 'mm_backbone']


def _outputs_and_gradients(model, x):
    """Float64 forward and backward, with a loss that weights every output element differently."""
    model.double()
    out = model(x.clone().requires_grad_())
    sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in out).backward()
    return out, {k: p.grad for k, p in model.named_parameters()}


def _assert_same_outputs_and_gradients(got, want):
    for a, b in zip(got[0], want[0]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    for key, grad in want[1].items():
        torch.testing.assert_close(got[1][key], grad, rtol=1e-8, atol=1e-9, msg=key)


# L1 at 512 x 320: the authors' 16 x 16 bias grid resized to its attention's 16 x 10 tokens, its pooling mixers;
# V2-S0 at an odd size: the strided attention, its upsampling and the downsample attention
@pytest.mark.parametrize('name,size', [('efficientformer_l1', (512, 320)), ('efficientformerv2_s0', (224, 290))])
def test_authors_backbone_computes_what_the_model_computes(name, size):
    ours = randomize_(authors.authors_dense_bias(name, size, feature_norm=True)).train()
    theirs = authors.authors_backbone(name, size, feature_norm=True).train()
    theirs.load_state_dict(ours.state_dict())
    talking_head_calls, average_pool_calls = [], []
    for module in theirs.modules():
        if isinstance(module, Attention2d):
            module.talking_head1.register_forward_hook(lambda *args: talking_head_calls.append(1))
        if isinstance(module, torch.nn.AvgPool2d):
            module.register_forward_hook(lambda *args: average_pool_calls.append(1))
    x = torch.randn(1, 3, *size, dtype=torch.float64)
    _assert_same_outputs_and_gradients(_outputs_and_gradients(theirs, x), _outputs_and_gradients(ours, x))
    if name.startswith('efficientformerv2'):  # their talking heads ran as the convolution modules
        assert len(talking_head_calls) == sum(isinstance(m, Attention2d) for m in theirs.modules()) > 0
    else:  # their pooling mixers ran PyTorch's average pooling
        assert len(average_pool_calls) == sum(isinstance(m, WindowAveragePooling) for m in theirs.modules()) > 0


def test_sdpa_variant_computes_what_the_model_computes(monkeypatch):
    """The benchmark's scaled_dot_product_attention ablation: SDPA in every V1 attention, the model's outputs and
    gradients (L3: four attention blocks, here on a 10 x 12 grid)."""
    ours = randomize_(timm.create_model('efficientformer_l3', features_only=True, feature_norm=True)).train()
    theirs = benchmark.sdpa_attention(copy.deepcopy(ours))
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention',
                        lambda *args, **kwargs: calls.append(1) or sdpa(*args, **kwargs))
    x = torch.randn(1, 3, 320, 384, dtype=torch.float64)
    want = _outputs_and_gradients(ours, x)
    assert not calls
    _assert_same_outputs_and_gradients(_outputs_and_gradients(theirs, x), want)
    assert len(calls) == sum(isinstance(m, Attention) for m in ours.modules()) == 4


def test_training_flops_count_a_grouped_convolution_backward_once():
    """torch's flop counter counts a grouped convolution's weight gradient as a dense one (here 8x too many)."""
    class Depthwise(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)

        def forward(self, x):
            return [self.conv(x)]

    x = torch.randn(2, 8, 16, 16)
    forward = 2 * 2 * 16 * 16 * 8 * 9  # multiply-adds of 8 channels, 3 x 3 taps each, counted as 2
    assert benchmark.count_flops(benchmark.infer, Depthwise(), x) == forward
    # training: the forward and the weight gradient (the input needs none)
    assert benchmark.count_flops(benchmark.train_step, Depthwise(), x) == 2 * forward
    assert benchmark.count_flops(benchmark.train_step, Depthwise(), x.requires_grad_()) == 3 * forward


def test_network_flops_count_the_pooling_mixer_as_average_pooling():
    """The depthwise convolution that computes V1's pooling mixer is not counted: every variant's rate is of the
    same count, the one of timm's arithmetic (average pooling, which the flop counter counts as none)."""
    model = timm.create_model('efficientformer_l1', features_only=True).eval()
    x = torch.randn(1, 3, 64, 96)
    timm_arithmetic = benchmark.count_flops(benchmark.infer, authors.average_pooling_mixer(copy.deepcopy(model)), x)
    assert benchmark.count_network_flops(benchmark.infer, model, x) == timm_arithmetic
    assert benchmark.count_flops(benchmark.infer, model, x) > timm_arithmetic
    mixers = [m for m in model.modules() if type(m) is WindowAveragePooling]
    assert mixers and not any('forward' in vars(m) for m in mixers)  # the model itself keeps its mixers


def test_device_check_accepts_fp32_rounding_and_refuses_wrong_values():
    """The CUDA-vs-CPU check: tolerance relative to each output's scale, so rounding of large activations passes
    and a wrong value in a small output fails."""
    large, small = torch.randn(2, 8, 5, 5, dtype=torch.float64) * 1e6, torch.randn(2, 4, 3, 3, dtype=torch.float64)
    rounded = [large.float().double(), small.float().double()]  # fp32 rounding: about 1e-7 relative
    diff, share = benchmark.outputs_match(rounded, [large, small])
    assert 0 < diff and share < 0.01
    wrong = small.clone()
    wrong[1, 2, 0, 1] += 2e-4 * small.abs().max()
    diff, share = benchmark.outputs_match([large, wrong], [large, small])
    assert diff == pytest.approx(float(2e-4 * small.abs().max())) and share > 1


@pytest.mark.mm  # the mm_backbone variant
def test_device_check_runs_every_inference_variant():
    """check_against_cpu copies every kind of variant (wrappers, the mm backbone with its folded copy, V1's
    variants) to the CPU and compares; here the device is the CPU itself, so each matches."""
    variants = benchmark.build_variants('efficientformer_l1', (224, 224), torch.device('cpu'), ablations=True)
    results = benchmark.check_against_cpu(variants, torch.randn(1, 3, 224, 224))
    assert results.keys() == variants.keys()
    assert {'mm_backbone', 'timm_builtin', 'authors_backbone', *benchmark.ABLATIONS} <= results.keys()
    assert all(share <= 1 for _, share in results.values()), results


def test_runtime_variants_are_checked_files_timed_beside_pytorch(capsys):
    """--runtimes: each exported file runs in its runtime behind the features interface, is checked against the
    network it came from before it is timed, and its row has no PyTorch peak memory (PyTorch does not see it)."""
    small = dict(depths=(1, 1, 2, 2), num_vit=1)
    fused = benchmark.fuse_batchnorm(randomize_(timm.create_model('efficientformer_l1', features_only=True, **small)))
    resnet = timm.create_model('resnet10t', features_only=True).eval()
    files = benchmark.ExportedFiles()
    variants = benchmark.runtime_variants('efficientformer_l1', (96, 128), fused.eval(), resnet,
                                          ('onnxruntime', 'openvino'), 1, files,
                                          names=['ours_onnxruntime', 'ours_openvino', 'resnet50_openvino'])
    assert list(variants) == ['ours_onnxruntime', 'ours_openvino', 'resnet50_openvino']
    assert sorted(files.paths) == ['efficientformer_l1_fused', 'resnet50']  # one file per network, both runtimes
    x = torch.randn(1, 3, 96, 128)
    rows = benchmark._time_case('inference', benchmark.infer, 'efficientformer_l1', dict(ours=fused, **variants), x,
                                dict(matmul_fp32_gflops=50.0), None, repeats=1, warmup=0)
    assert [r['variant'] for r in rows] == ['ours', 'ours_onnxruntime', 'ours_openvino', 'resnet50_openvino']
    assert [r['peak_mb'] is None for r in rows] == [False, True, True, True]
    assert 'gflops' in rows[1] and 'gflops' not in rows[3]
    assert '| efficientformer_l1 | 96x128 | 1 | ours_openvino |' in capsys.readouterr().out

    # a later size builds a new network: the file already exported is checked against the network it came from
    other = benchmark.fuse_batchnorm(randomize_(timm.create_model('efficientformer_l1', features_only=True, **small),
                                                seed=1)).eval()
    again = benchmark.runtime_variants('efficientformer_l1', (64, 160), other, resnet, ('onnxruntime',), 1, files,
                                       names=['ours_onnxruntime'])
    assert again['ours_onnxruntime'].path == variants['ours_onnxruntime'].path
    # a file that does not compute its network is refused before it is timed
    with torch.no_grad():
        files.networks['efficientformer_l1_fused'].model.stages[3].downsample.conv.weight.mul_(2)
    with pytest.raises(RuntimeError, match='ours_onnxruntime differs from PyTorch'):
        benchmark.runtime_variants('efficientformer_l1', (96, 128), other, resnet, ('onnxruntime',), 1, files,
                                   names=['ours_onnxruntime'])


def _rows(model, **ms):
    return [dict(mode='inference', model=model, size='800x1333', batch=1, variant=variant, median_ms=median,
                 fraction_of_matmul=0.6) for variant, median in ms.items()]


def test_target_lines_compare_each_runtime_with_resnet50_and_the_fast_path():
    rows = _rows('efficientformerv2_s0', ours=900., ours_fused_channels_last=500., ours_onnxruntime=330.,
                 resnet50_onnxruntime=1000., ours_openvino=360., resnet50_openvino=1000.)
    lines = {target: (measured, met) for target, measured, met in target_lines(rows)}
    assert lines['efficientformerv2_s0 in onnxruntime <= 0.35x resnet50 in onnxruntime'] == ('0.33x (330 / 1000 ms)',
                                                                                            True)
    assert lines['efficientformerv2_s0 in openvino <= 0.35x resnet50 in openvino'][1] is False
    assert lines['efficientformerv2_s0 in onnxruntime <= 0.80x the PyTorch fast path'] == ('0.66x (330 / 500 ms)', True)
    assert lines['efficientformerv2_s0 PyTorch fast path (fused, channels_last) >= 0.50 of the matmul GFLOP/s'] == \
        ('0.600', True)
    l1 = {t: met for t, _, met in target_lines(_rows('efficientformer_l1', ours_fused_channels_last=1.))}
    assert l1 == {'efficientformer_l1 PyTorch fast path (fused, channels_last) >= 0.70 of the matmul GFLOP/s': False}
