#!/usr/bin/env python
"""Side-by-side speed of the EfficientFormer features_only backbone, in one process, interleaved run by run.

    python tools/benchmark.py [--models efficientformer_l1 ...] [--sizes 224 512 800x1333] [--threads 2]
                              [--repeats 15] [--device cpu|cuda] [--dtype fp32|fp16|bf16] [--compile] [--profile]
                              [--train [--cases 512x512:4 800x1333:2]] [--keep-freed-memory]
                              [--json FILE.json] [--plot FILE.png]

Inference (default): for each model and input size it times (eval, no grad) batch 1 (latency) and batch 8
(throughput):
  ours        this package's features model (resized attention biases cached per grid)
  ours_fused  the same with BatchNorm and the MLP layer scales folded into the convolutions (``fuse_bn=True``;
              on CPU the convolutional MLPs run as oneDNN kernels with GELU and the residual add fused in)
  ours_fused_channels_last  fused, run in channels_last memory format
  ours_fused_compiled  (with --compile) fused, through torch.compile (inductor; compile time not timed)
  resize_table_every_forward  ours with the small offset table resized at every forward (no cache)
  pytorch_average_pooling  (V1) ours with the pooling mixers' average computed by PyTorch's average pooling, as
              timm does, instead of a depthwise convolution
  scaled_dot_product_attention  (V1) ours with the attention through ``scaled_dot_product_attention`` at every
              grid size (what CUDA runs on large grids; on CPU its math path) instead of the explicit form
  authors_dense_bias  ours with the bias made as in the authors' mmdet / mmseg code (the fixed-grid option
              for 800 px at detection sizes, 512 at segmentation sizes, 224 otherwise): the full (N0, N0) matrix
              resized bicubically to (N, N) at every forward
  authors_backbone  the authors' dense backbone: their bias as above and their arithmetic (explicit softmax
              attention, V2's talking heads as 1x1 convolutions, the scale and the bias as separate passes over
              the attention maps, contiguous outputs, V1's pooling mixer as PyTorch's average pooling)
  mm_backbone the OpenMMLab backbone as the mm configs build it (channels_last, fused in eval)
  timm_builtin  timm 1.0.31's own implementation (224 only: it cannot run other sizes)
  resnet50    timm's resnet50 features_only, the usual Mask R-CNN / Semantic FPN backbone (and in channels_last)

--train: one training step (train mode, forward and backward of the mean of every output) at the input sizes
and batches of the mm configs (--cases SIZE:BATCH), with the output norms of the authors' dense backbones:
  ours, ours_channels_last, mm_backbone (as the configs build it), mm_backbone_plain (channels_last=False),
  authors_dense_bias, authors_backbone, resnet50, resnet50_channels_last, scaled_dot_product_attention (V1),
  and with --compile
  mm_backbone_compiled (its network's forward through torch.compile, inductor, static shapes: one compile per
  input size; the compile time is printed, not timed)

Each repeat runs every variant once in turn; medians are reported with ratios to ``ours``, peak memory
(CUDA: max_memory_allocated; CPU: allocations seen by the torch profiler) and the process's minor page faults
per step (memory the step touches for the first time since the system handed it out). Both modes also report
the FLOPs of our backbone's step (torch.utils.flop_counter; a training step counts forward and backward), the
GFLOP/s each variant running that network achieves and the machine's fp32 matmul GFLOP/s measured in the same
run. The performance targets are checked against the figures of the run. On a device other than the CPU,
inference first checks each variant's outputs against the same model on the CPU (fp32, TF32 off; in the JSON as
``cpu_checks``). --profile prints where the time goes: for inference the top operators of one step in the torch
profiler; for training the mean of 3 steps timed by hooks, forward by module type and backward by autograd node
(the profiler's per-operator overhead inflates CPU backward kernels several-fold).
--keep-freed-memory has glibc keep freed memory for reuse, as ``EfficientFormerRunner`` does on machines without
CUDA (needs the ``mm`` extra). --json writes the rows, --plot draws time against input size per variant
(matplotlib).
"""
import argparse
import collections
import copy
import json
import math
import os
import platform
import resource
import statistics
import time
import types
from datetime import datetime, timezone

import timm
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

import efficientformer_timm  # noqa: F401
from efficientformer_timm._bias import GridAttentionBias
from efficientformer_timm.efficientformer import Attention, WindowAveragePooling
from efficientformer_timm.efficientformer_v2 import Attention2d, Attention2dDownsample
from efficientformer_timm.fuse import fuse_batchnorm
from efficientformer_timm.variants import MODEL_NAMES, V1_MODEL_NAMES

# The torch profiler (CPU peak memory, --profile) logs every start and stop, and on a machine without a GPU an
# error about counting GPUs, on stderr between the table's rows: silent unless KINETO_LOG_LEVEL says otherwise.
os.environ.setdefault('KINETO_LOG_LEVEL', '6')

DEFAULT_MODELS = list(MODEL_NAMES)


def parse_size(text):
    h, _, w = text.partition('x')
    return int(h), int(w or h)


def builtin_features(name):
    """timm's own implementation, bypassing the registry entry this package replaced."""
    module = timm.models.efficientformer_v2 if 'v2' in name else timm.models.efficientformer
    return getattr(module, name)(features_only=True)


class ChannelsLast(torch.nn.Module):
    """Runs ``model`` in channels_last memory format (the input conversion is timed too)."""

    def __init__(self, model):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x):
        return self.model(x.contiguous(memory_format=torch.channels_last))


def authors_dense_resolution(size):
    """The input size the authors' dense configs made their bias grid for: 800 (detection), 512 (segmentation)."""
    return 800 if max(size) >= 800 else 512 if max(size) >= 512 else 224


def authors_dense_bias_features(name, size, **kwargs):
    """Features with the authors' mmdet / mmseg attention bias: the fixed-grid option of the model, with the bias
    matrix resized at every forward as their code does (no eval cache)."""
    features = timm.create_model(name, features_only=True, feature_cls='getter', **kwargs)
    features.model.use_fixed_grid_attention_bias(authors_dense_resolution(size))
    return resize_every_forward(features)


def _authors_attention(self, x, grid):
    """V1 attention as the authors' backbone computes it: explicit softmax attention at every grid size."""
    B, N, _ = x.shape
    q, k, v = self._qkv(x)
    attn = ((q @ k.transpose(-2, -1)) * self.scale + self.attention_bias(grid, q.dtype)).softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(B, N, self.val_attn_dim))


def _authors_attention2d(self, x):
    """V2 attention as the authors' backbonev2.py computes it: talking heads as 1x1 convolutions, the scale and
    the bias as separate passes over the (B, heads, N, N) maps, a contiguous output."""
    B, _, H, W = x.shape
    q, k, v, v_local = self._qkv(x)
    h, w = v_local.shape[-2:]
    attn = (q @ k) * self.scale + self.attention_bias((h, w), q.dtype)
    attn = self.talking_head2(self.talking_head1(attn).softmax(dim=-1))
    x = (attn @ v).transpose(2, 3).reshape(B, self.dh, h, w) + v_local
    if self.stride_conv is not None:
        x = torch.nn.functional.interpolate(x, size=(H, W), mode='bilinear', align_corners=False)
    return self.proj(self.act(x))


def _authors_attention2d_downsample(self, x):
    """V2's downsample attention as the authors' backbonev2.py computes it."""
    B, _, H, W = x.shape
    q, k, v, v_local = self._qkv(x)
    h, w = v_local.shape[-2:]
    attn = ((q @ k) * self.scale + self.attention_bias((H, W), q.dtype)).softmax(dim=-1)
    x = (attn @ v).transpose(2, 3).reshape(B, self.dh, h, w) + v_local
    return self.proj(self.act(x))


def _sdpa_attention(self, x, grid):
    """V1 attention through ``scaled_dot_product_attention`` at every grid size."""
    B, N, _ = x.shape
    q, k, v = self._qkv(x)
    x = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.attention_bias(grid, q.dtype),
                                                         scale=self.scale)
    return self.proj(x.transpose(1, 2).reshape(B, N, self.val_attn_dim))


def _average_pooling_mixer(self, x):
    """V1's pooling mixer as timm and the authors compute it: PyTorch's average pooling."""
    return self.pool(x) - x


AUTHORS_FORWARD = {Attention: _authors_attention, Attention2d: _authors_attention2d,
                   Attention2dDownsample: _authors_attention2d_downsample, WindowAveragePooling: _average_pooling_mixer}


def replace_forwards(model, forwards):
    """Give every module whose type is a key of ``forwards`` that function as its forward."""
    for module in model.modules():
        if type(module) in forwards:
            module.forward = types.MethodType(forwards[type(module)], module)
    return model


def authors_backbone(name, size, **kwargs):
    """The authors' dense backbone: their bias (``authors_dense_bias_features``) and their attention arithmetic."""
    return replace_forwards(authors_dense_bias_features(name, size, **kwargs), AUTHORS_FORWARD)


def average_pooling_mixer(model):
    """V1's pooling mixers computed with PyTorch's average pooling instead of the depthwise convolution."""
    return replace_forwards(model, {WindowAveragePooling: _average_pooling_mixer})


def sdpa_attention(model):
    """V1's attention through ``scaled_dot_product_attention`` instead of the explicit form."""
    return replace_forwards(model, {Attention: _sdpa_attention})


def mm_backbone(name, **kwargs):
    """The OpenMMLab backbone as the mm configs build it (None without the `mm` extra)."""
    try:
        from efficientformer_timm.mm import EfficientFormerBackbone
    except ImportError:
        return None
    return EfficientFormerBackbone(name, **kwargs)


def resize_every_forward(model):
    """Skip the eval bias cache: each forward computes the bias again (the no-cache reference)."""
    for module in model.modules():
        if isinstance(module, GridAttentionBias):
            module.attention_bias = types.MethodType(
                lambda self, grid, dtype: self._compute_attention_bias(grid).to(dtype), module)
    return model


def build_variants(name, size, device, compile_model=False):
    ours = timm.create_model(name, features_only=True).eval()
    fused = fuse_batchnorm(copy.deepcopy(ours))
    resize = resize_every_forward(copy.deepcopy(ours))
    resnet = timm.create_model('resnet50', features_only=True).eval()
    variants = {'ours': ours, 'ours_fused': fused, 'ours_fused_channels_last': ChannelsLast(copy.deepcopy(fused)),
                'resize_table_every_forward': resize,
                'authors_dense_bias': authors_dense_bias_features(name, size),
                'authors_backbone': authors_backbone(name, size),
                'resnet50': resnet, 'resnet50_channels_last': ChannelsLast(copy.deepcopy(resnet))}
    if name in V1_MODEL_NAMES:
        variants['pytorch_average_pooling'] = average_pooling_mixer(copy.deepcopy(ours))
        variants['scaled_dot_product_attention'] = sdpa_attention(copy.deepcopy(ours))
    if compile_model:
        variants['ours_fused_compiled'] = torch.compile(copy.deepcopy(fused))
    if size == (224, 224):
        variants['timm_builtin'] = builtin_features(name)
    variants['mm_backbone'] = mm_backbone(name)
    return _available({k: v.eval() if v is not None else None for k, v in variants.items()}, device)


def compiled_mm_backbone(name):
    """The mm backbone with its network's forward (``forward_intermediates``, what the backbone calls) through
    torch.compile with static shapes (None without the `mm` extra)."""
    backbone = mm_backbone(name)
    if backbone is not None:
        backbone.model.forward_intermediates = torch.compile(backbone.model.forward_intermediates, dynamic=False)
    return backbone


def build_train_variants(name, size, device, compile_model=False):
    norms = dict(feature_norm=name in V1_MODEL_NAMES)  # the authors' dense backbones: GroupNorm for V1, none for V2
    ours = timm.create_model(name, features_only=True, **norms)
    resnet = timm.create_model('resnet50', features_only=True)
    variants = {'ours': ours, 'ours_channels_last': ChannelsLast(copy.deepcopy(ours)),
                'mm_backbone': mm_backbone(name),
                'mm_backbone_plain': mm_backbone(name, channels_last=False, fold_bn_in_eval=False),
                'authors_dense_bias': authors_dense_bias_features(name, size, **norms),
                'authors_backbone': authors_backbone(name, size, **norms),
                'resnet50': resnet, 'resnet50_channels_last': ChannelsLast(copy.deepcopy(resnet))}
    if name in V1_MODEL_NAMES:
        variants['scaled_dot_product_attention'] = sdpa_attention(copy.deepcopy(ours))
    if compile_model:
        variants['mm_backbone_compiled'] = compiled_mm_backbone(name)
    return _available({k: v.train() if v is not None else None for k, v in variants.items()}, device)


def _available(variants, device):
    missing = [k for k, v in variants.items() if v is None]
    if missing:
        print(f'# not measured: {", ".join(missing)} (needs the OpenMMLab stack: pip install -e ".[mm]")')
    return {k: v.to(device) for k, v in variants.items() if v is not None}


def select(variants, names):
    """The variants named (all when None); ``ours`` always, as the reference of the ratios."""
    if names is None:
        return variants
    absent = sorted(set(names) - set(variants))
    if absent:
        print(f'# not measured here: {", ".join(absent)} (this mode and size has {", ".join(variants)})')
    return {k: v for k, v in variants.items() if k == 'ours' or k in names}


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def infer(model, x, autocast_dtype):
    with torch.no_grad(), torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        model(x)


def training_loss(model, x, autocast_dtype):
    """A training step's forward: the mean of every output (the last step's gradients dropped first)."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        outputs = model(x)
    return sum(o.float().mean() for o in outputs)


def train_step(model, x, autocast_dtype):
    """Forward and backward of the mean of every output."""
    training_loss(model, x, autocast_dtype).backward()


def time_once(step, model, x, device, autocast_dtype):
    sync(device)
    start = time.perf_counter()
    step(model, x, autocast_dtype)
    sync(device)
    return time.perf_counter() - start


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
                         output_padding, groups, output_mask, **kwargs):
    """A convolution's backward: each gradient asked for (input, weight) costs what the forward costs. The
    flop counter's own formula ignores ``groups``, which counts a depthwise convolution's backward as dense."""
    return conv_flop_count(x_shape, w_shape, grad_out_shape, transposed) * (output_mask[0] + output_mask[1])


def count_flops(step, model, x):
    """FLOPs of one ``step`` (``infer``: the forward; ``train_step``: forward and backward)."""
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops})
    with counter:
        step(model, x, None)
    return counter.get_total_flops()


def count_network_flops(step, model, x):
    """FLOPs of one ``step`` of our network, with V1's pooling mixers counted as the flop counter counts average
    pooling (none), whichever way the model computes them: the rates of all variants share one count."""
    return count_flops(step, average_pooling_mixer(copy.deepcopy(model)), x)


def peak_memory_mb(step, model, x, device, autocast_dtype):
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(model, x, autocast_dtype)
        return (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(model, x, autocast_dtype)
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        if not event.cpu_children:
            current += event.cpu_memory_usage
            peak = max(peak, current)
    return peak / 2 ** 20


def print_profile(model, x, autocast_dtype, label, rows=8):
    """Where one inference step spends its time: the top operators by self time, as shares."""
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if x.is_cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        infer(model, x, autocast_dtype)
    key = (lambda e: e.self_device_time_total) if x.is_cuda else (lambda e: e.self_cpu_time_total)
    events = prof.key_averages()
    total = sum(map(key, events))
    top = sorted(events, key=key, reverse=True)[:rows]
    print(f'# profile {label}: ' + ', '.join(f'{e.key} {100 * key(e) / total:.0f}%' for e in top), flush=True)


def print_train_breakdown(model, x, autocast_dtype, label, steps=3, rows=6):
    """Where a training step's time goes, summed over ``steps`` steps and timed by hooks (each synchronizing the
    device): forward by leaf module type (V1's pooling mixer as one), the rest of the forward (additions, attention
    products outside leaf modules) as ``other``, and backward by autograd node."""
    device = x.device
    forward, backward, starts = collections.Counter(), collections.Counter(), {}
    forward_total = backward_total = 0.

    def start(key, *_):
        sync(device)
        starts[key] = time.perf_counter()

    def stop(counter, key, name, *_):
        sync(device)
        counter[name] += time.perf_counter() - starts.pop(key)

    handles = []
    # V1's pooling mixers count as one module (their ``pool`` child runs only in the authors' arithmetic)
    inner = {module.pool for module in model.modules() if isinstance(module, WindowAveragePooling)}
    for module in model.modules():
        if (not any(module.children()) and module not in inner) or isinstance(module, WindowAveragePooling):
            name = type(module).__name__
            handles.append(module.register_forward_pre_hook(lambda m, args: start(m)))
            handles.append(module.register_forward_hook(lambda m, args, out, name=name: stop(forward, m, name)))
    try:
        for _ in range(steps):
            sync(device)
            began = time.perf_counter()
            loss = training_loss(model, x, autocast_dtype)
            sync(device)
            forward_total += time.perf_counter() - began
            nodes, pending, node_handles = set(), [loss.grad_fn], []
            while pending:
                node = pending.pop()
                if node is None or node in nodes:
                    continue
                nodes.add(node)
                node_handles.append(node.register_prehook(lambda grads, node=node: start(node)))
                node_handles.append(node.register_hook(
                    lambda grads_in, grads_out, node=node: stop(backward, node, node.name())))
                pending.extend(next_node for next_node, _ in node.next_functions)
            began = time.perf_counter()
            loss.backward()
            sync(device)
            backward_total += time.perf_counter() - began
            for handle in node_handles:  # the parameters' AccumulateGrad nodes outlive the step
                handle.remove()
    finally:
        for handle in handles:
            handle.remove()
    forward['other'] = forward_total - sum(forward.values())

    def shares(counter, total):
        return ', '.join(f'{k} {100 * v / total:.0f}%' for k, v in counter.most_common(rows))
    print(f'# breakdown {label}, mean of {steps} steps: forward {forward_total / steps * 1e3:.0f} ms '
          f'({shares(forward, forward_total)}); backward {backward_total / steps * 1e3:.0f} ms '
          f'({shares(backward, backward_total)})', flush=True)


def matmul_gflops(device, repeats):
    n = 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def measure(step, variants, x, device, autocast_dtype, repeats, warmup):
    """Median seconds and mean minor page faults (the process's) per step of each variant, interleaved: every
    variant once per repeat."""
    for _ in range(warmup):
        for model in variants.values():
            time_once(step, model, x, device, autocast_dtype)
    times, faults = {k: [] for k in variants}, {k: [] for k in variants}
    for _ in range(repeats):
        for key, model in variants.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            times[key].append(time_once(step, model, x, device, autocast_dtype))
            faults[key].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {k: statistics.median(v) for k, v in times.items()}, {k: statistics.mean(v) for k, v in faults.items()}


def outputs_match(got, expected, rtol=1e-4, atol=1e-5):
    """(max |got - expected| over the outputs, the worst output's difference as a share of its tolerance
    ``atol + rtol * max |expected|``: relative to each output's scale, with a floor for near-zero outputs)."""
    diffs = [float((g.double().cpu() - e.double().cpu()).abs().max()) for g, e in zip(got, expected)]
    tolerances = [atol + rtol * float(e.abs().max()) for e in expected]
    return max(diffs), max(d / t for d, t in zip(diffs, tolerances))


def check_against_cpu(variants, x):
    """Each variant's outputs on ``x``'s device against the same model copied to the CPU, in fp32 with TF32 off
    (what is checked is the device's code path, not a precision choice). Returns {variant: (max |difference|,
    share of the tolerance)}; a share above 1 means the device computes something else."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        results = {}
        for key, model in variants.items():
            reference = copy.deepcopy(getattr(model, '_orig_mod', model)).cpu()  # a compiled model: its module
            with torch.no_grad():
                got, expected = model(x), reference(x.cpu())
            if len(got) != len(expected) or any(g.shape != e.shape for g, e in zip(got, expected)):
                raise RuntimeError(f'{key}: {x.device} gives outputs {[tuple(g.shape) for g in got]}, the CPU '
                                   f'{[tuple(e.shape) for e in expected]}')
            results[key] = outputs_match(got, expected)
        return results
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def run_inference(args, device, autocast_dtype, machine, checks):
    print('| model | size | batch | variant | median ms | ratio to ours | ours GFLOP/s | peak MB | page faults |')
    print('|---|---|---|---|---|---|---|---|---|')
    rows = []
    for name in args.models:
        for size_text in args.sizes:
            size = parse_size(size_text)
            variants = select(build_variants(name, size, device, args.compile), args.variants)
            if device.type != 'cpu':
                for key, (diff, share) in check_against_cpu(variants, torch.randn(1, 3, *size, device=device)).items():
                    checks.append(dict(model=name, size=f'{size[0]}x{size[1]}', variant=key, max_abs_diff=diff,
                                       share_of_tolerance=share))
                    print(f'# {name} {size[0]}x{size[1]} {key}: {device} vs CPU outputs, max |difference| {diff:.2e} '
                          f'({share:.2g} of the tolerance)', flush=True)
            for batch in args.batches:
                x = torch.randn(batch, 3, *size, device=device)
                medians, faults = measure(infer, variants, x, device, autocast_dtype, args.repeats, args.warmup)
                flops = count_network_flops(infer, variants['ours'], x)
                if args.profile:
                    for key in ('ours', 'ours_fused_channels_last') & variants.keys():
                        print_profile(variants[key], x, autocast_dtype,
                                      f'{name} {size[0]}x{size[1]} batch {batch} {key}')
                for key in variants:
                    row = make_row('inference', name, key, x, medians, faults, flops, machine,
                                   peak_memory_mb(infer, variants[key], x, device, autocast_dtype))
                    rows.append(row)
                    achieved = f"{row['achieved_gflops_per_s']:.1f}" if key == 'ours' else ''
                    print(f"| {name} | {row['size']} | {batch} | {key} | {row['median_ms']:.1f} | "
                          f"{row['ratio_to_ours']:.2f} | {achieved} | {row['peak_mb']:.0f} | {faults[key]:.0f} |",
                          flush=True)
    return rows


def make_row(mode, name, key, x, medians, faults, flops, machine, peak_mb):
    """One variant's figures on input ``x``, with the rate at which it runs our network's FLOPs (resnet50 is
    another network: none)."""
    row = dict(mode=mode, model=name, size=f'{x.shape[2]}x{x.shape[3]}', batch=x.shape[0], variant=key,
               median_ms=medians[key] * 1e3, ratio_to_ours=medians[key] / medians['ours'],
               peak_mb=peak_mb, page_faults_per_step=faults[key])
    if not key.startswith('resnet50'):
        row['gflops'] = flops / 1e9
        row['achieved_gflops_per_s'] = flops / row['median_ms'] * 1e3 / 1e9
        row['fraction_of_matmul'] = row['achieved_gflops_per_s'] / machine['matmul_fp32_gflops']
    return row


def run_train(args, device, autocast_dtype, machine):
    print('| model | size | batch | variant | train step median ms | ratio to ours | GFLOP/s (share of matmul) | '
          'peak MB | page faults |')
    print('|---|---|---|---|---|---|---|---|---|')
    rows = []
    for name in args.models:
        for case in args.cases:
            size_text, _, batch = case.partition(':')
            size, batch = parse_size(size_text), int(batch or 1)
            variants = select(build_train_variants(name, size, device, args.compile), args.variants)
            x = torch.randn(batch, 3, *size, device=device)
            if 'mm_backbone_compiled' in variants:
                seconds = time_once(train_step, variants['mm_backbone_compiled'], x, device, autocast_dtype)
                print(f'# {name} {size[0]}x{size[1]} batch {batch} mm_backbone_compiled: first step (compiling) '
                      f'{seconds:.1f} s', flush=True)
            medians, faults = measure(train_step, variants, x, device, autocast_dtype, args.repeats, args.warmup)
            flops = count_network_flops(train_step, variants['ours'], x)
            if args.profile:
                for key in ('mm_backbone', 'authors_backbone') & variants.keys():
                    print_train_breakdown(variants[key], x, autocast_dtype,
                                          f'training step {name} {size[0]}x{size[1]} batch {batch} {key}')
            for key in variants:
                row = make_row('train', name, key, x, medians, faults, flops, machine,
                               peak_memory_mb(train_step, variants[key], x, device, autocast_dtype))
                rows.append(row)
                rate = (f"{row['achieved_gflops_per_s']:.1f} ({row['fraction_of_matmul']:.2f})" if 'gflops' in row
                        else '')
                print(f"| {name} | {row['size']} | {batch} | {key} | {row['median_ms']:.1f} | "
                      f"{row['ratio_to_ours']:.2f} | {rate} | {row['peak_mb']:.0f} | {faults[key]:.0f} |", flush=True)
    return rows


def report_targets(rows):
    """The performance targets, checked against this run's figures (those it measured)."""
    lines = []
    for r in rows:
        if r['mode'] == 'train' and r['variant'] in ('mm_backbone', 'mm_backbone_compiled'):
            ref = next((q for q in rows if q['mode'] == 'train' and q['variant'] == 'authors_backbone'
                        and (q['model'], q['size'], q['batch']) == (r['model'], r['size'], r['batch'])), None)
            if ref:  # 0.70x their time is 1 / 0.70 their rate of the same FLOPs
                ratio = r['median_ms'] / ref['median_ms']
                label = r['variant'].replace('_', ' ')  # 'mm backbone', 'mm backbone compiled'
                rates = (f" ({label} at {r['fraction_of_matmul']:.2f} of the matmul GFLOP/s, the authors' at "
                         f"{ref['fraction_of_matmul']:.2f}: 0.70x needs {ref['fraction_of_matmul'] / 0.70:.2f})")
                lines.append((f"{r['model']} {r['size']} batch {r['batch']}: {label} train step "
                              "<= 0.70x the authors' dense backbone", f'{ratio:.2f}x{rates}', ratio <= 0.70))
        if r['mode'] == 'inference' and r['batch'] == 1 and r['size'] == '800x1333' and r['variant'] == 'ours' \
                and r['model'] == 'efficientformer_l1':
            resnet = next((q for q in rows if q['mode'] == 'inference' and q['variant'] == 'resnet50'
                           and (q['model'], q['size'], q['batch']) == (r['model'], r['size'], 1)), None)
            if resnet:
                ratio = r['median_ms'] / resnet['median_ms']
                lines.append(('L1 plain features at 800x1333 <= 0.45x resnet50', f'{ratio:.2f}x', ratio <= 0.45))
        if r['mode'] == 'inference' and r['variant'] in ('ours_fused_channels_last', 'mm_backbone') \
                and r['size'] == '800x1333':
            lines.append((f"{r['model']} {r['size']} batch {r['batch']} {r['variant']}: >= 0.70 of the matmul "
                          'GFLOP/s', f"{r['fraction_of_matmul']:.3f}", r['fraction_of_matmul'] >= 0.70))
    if lines:
        print('\n| target | measured | met |\n|---|---|---|')
        for target, measured, met in lines:
            print(f'| {target} | {measured} | {"yes" if met else "no"} |')


def report_checks(checks):
    """Whether the device computes what the CPU computes: every variant, model and size of the run."""
    if not checks:
        return
    worst = max(checks, key=lambda c: c['share_of_tolerance'])
    failed = [f"{c['variant']} {c['model']} {c['size']}" for c in checks if c['share_of_tolerance'] > 1]
    print('\n| check | measured | passed |\n|---|---|---|')
    print("| outputs on the device match the CPU's (fp32, TF32 off; max difference <= 1e-5 + 1e-4 x the output's "
          f"largest magnitude) | worst: {worst['variant']} {worst['model']} {worst['size']}, "
          f"{worst['share_of_tolerance']:.2g} of the tolerance | {'no: ' + ', '.join(failed) if failed else 'yes'} |")


def plot(rows, path):
    """Median time against input size (megapixels), one line per variant, one panel per model / mode / batch."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    groups = sorted({(r['model'], r['mode'], r['batch']) for r in rows})
    figure, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.5), squeeze=False)
    for axis, (model, mode, batch) in zip(axes[0], groups):
        group = [r for r in rows if (r['model'], r['mode'], r['batch']) == (model, mode, batch)]
        for variant in dict.fromkeys(r['variant'] for r in group):
            points = sorted((math.prod(parse_size(r['size'])) / 1e6, r['median_ms'])
                            for r in group if r['variant'] == variant)
            axis.plot(*zip(*points), marker='o', label=variant)
        axis.set_title(f'{model}, {"training step" if mode == "train" else "inference"}, batch {batch}')
        axis.set_xlabel('input size (megapixels)')
        axis.set_ylabel('median ms')
        axis.legend(fontsize='small')
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=DEFAULT_MODELS)
    parser.add_argument('--sizes', nargs='+', default=['224', '512', '800x1333'])
    parser.add_argument('--batches', nargs='+', type=int, default=[1, 8])
    parser.add_argument('--train', action='store_true', help='time training steps instead of inference')
    parser.add_argument('--cases', nargs='+', default=['512x512:4', '800x1333:2'],
                        help="--train: SIZE:BATCH pairs (default: the mm configs' per-GPU batches)")
    parser.add_argument('--variants', nargs='+', help='measure only these variants (and ours); default: all')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--repeats', type=int, default=15)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', choices=['fp32', 'fp16', 'bf16'], default='fp32')
    parser.add_argument('--compile', action='store_true',
                        help='add torch.compile of the fused model (inference) or of the mm backbone (--train); '
                             'slow to build')
    parser.add_argument('--profile', action='store_true',
                        help='also print the top operators of one step: of ours and ours_fused_channels_last '
                             '(inference), of mm_backbone and authors_backbone (--train)')
    parser.add_argument('--keep-freed-memory', action='store_true',
                        help="have glibc keep freed memory for reuse (EfficientFormerRunner's CPU default)")
    parser.add_argument('--json', help='write the machine facts and every row to this file')
    parser.add_argument('--plot', help='draw time against input size per variant into this PNG')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    autocast_dtype = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    if args.keep_freed_memory:
        from efficientformer_timm.mm.runner import keep_freed_cpu_memory
        if not keep_freed_cpu_memory():
            parser.error('--keep-freed-memory: the C library is not glibc')

    machine = dict(
        date=datetime.now(timezone.utc).isoformat(timespec='seconds'), device=str(device),
        cpu=platform.processor() or platform.machine(), cpu_capability=torch.backends.cpu.get_cpu_capability(),
        threads=args.threads, dtype=args.dtype,
        torch=torch.__version__, timm=timm.__version__,
        gpu=torch.cuda.get_device_name() if device.type == 'cuda' else None, keep_freed_memory=args.keep_freed_memory,
        tf32_convolutions=torch.backends.cudnn.allow_tf32 if device.type == 'cuda' else None)
    machine['matmul_fp32_gflops'] = matmul_gflops(device, max(args.repeats, 10))
    where = machine['gpu'] or f"{machine['cpu']} ({machine['cpu_capability']} kernels)"
    print(f"# {machine['date']} {machine['device']} {where}, {args.threads} threads, "
          f"{args.dtype}{', TF32 convolutions (PyTorch default)' if machine['tf32_convolutions'] else ''}"
          f"{', freed memory kept' if args.keep_freed_memory else ''}; fp32 2048^3 matmul: "
          f"{machine['matmul_fp32_gflops']:.1f} GFLOP/s", flush=True)
    checks = []
    if args.train:
        rows = run_train(args, device, autocast_dtype, machine)
    else:
        rows = run_inference(args, device, autocast_dtype, machine, checks)
    report_targets(rows)
    report_checks(checks)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(machine=machine, results=rows, cpu_checks=checks), f, indent=1)
        print(f'wrote {args.json}')
    if args.plot:
        plot(rows, args.plot)
        print(f'wrote {args.plot}')


if __name__ == '__main__':
    main()
