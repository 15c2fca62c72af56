"""Side-by-side speed of the EfficientFormer features backbone against what users compare it with: the pieces of
``tools/benchmark.py`` (variants, interleaved timing, FLOP rates, peak memory, profiles, the device check). Unix
only: page faults come from ``resource``.

Variants, each a module that maps an image batch to a list of feature maps:
  ours        this package's features model (resized attention biases cached per grid)
  ours_fused  the same with BatchNorm and the MLP layer scales folded into the convolutions (``fuse_bn=True``)
  ours_fused_channels_last  fused, run in channels_last memory format
  ours_fused_compiled  (``compile_model``) fused, through torch.compile (inductor)
  mm_backbone the OpenMMLab backbone as the mm configs build it (channels_last, fused in eval; needs the ``mm``
              extra)
  authors_backbone  the authors' dense backbone (``_authors``)
  timm_builtin  timm's own implementation (224 only: it cannot run other sizes)
  resnet50    timm's resnet50 features_only, the usual Mask R-CNN / Semantic FPN backbone (and in channels_last)
With ``runtimes`` (CPU): the exported files in onnxruntime / OpenVINO, on the benchmark's threads:
  ours_<runtime>      the file ``tools/export_onnx.py --fuse-bn`` writes (dynamic sizes)
  ours_<runtime>_static  the same fused network exported for the measured size only (``--static``: the attention
              biases folded by the runtime at load)
  resnet50_<runtime>  resnet50's features exported the same way (dynamic sizes)
Training (``build_train_variants``): ours, ours_channels_last, mm_backbone, authors_backbone, resnet50,
resnet50_channels_last, and mm_backbone_compiled (``compile_model``: its network's forward through torch.compile,
static shapes).

``ABLATIONS`` are the variants that measure a design choice of the model against the alternative it replaced:
  resize_table_every_forward  ours without the eval bias cache
  authors_dense_bias  ours with the authors' bias scheme alone (their fixed grid, resized at every forward)
  pytorch_average_pooling  (V1) the pooling mixer as PyTorch's average pooling instead of a depthwise convolution
  scaled_dot_product_attention  (V1) the attention through ``scaled_dot_product_attention`` at every grid size
"""
import collections
import copy
import json
import math
import os
import resource
import statistics
import tempfile
import time

import timm
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from efficientformer_timm.efficientformer import Attention, WindowAveragePooling
from efficientformer_timm.export import RuntimeFeatures, export_onnx, onnxruntime_session, outputs_match
from efficientformer_timm.fuse import fuse_batchnorm
from efficientformer_timm.variants import V1_MODEL_NAMES

from _authors import (authors_backbone, authors_dense_bias, average_pooling_mixer, bias_every_forward,
                      replace_forwards)
from _cli import parse_size

ABLATIONS = ('resize_table_every_forward', 'authors_dense_bias', 'pytorch_average_pooling',
             'scaled_dot_product_attention')


class ChannelsLast(torch.nn.Module):
    """Runs ``model`` in channels_last memory format (the input conversion is timed too)."""

    def __init__(self, model):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x):
        return self.model(x.contiguous(memory_format=torch.channels_last))


def builtin_features(name):
    """timm's own implementation, bypassing the registry entry this package replaced."""
    module = timm.models.efficientformer_v2 if 'v2' in name else timm.models.efficientformer
    return getattr(module, name)(features_only=True)


def mm_backbone(name, **kwargs):
    """The OpenMMLab backbone as the mm configs build it (None without the `mm` extra)."""
    try:
        from efficientformer_timm.mm import EfficientFormerBackbone
    except ImportError:
        return None
    return EfficientFormerBackbone(name, **kwargs)


def compiled_mm_backbone(name):
    """The mm backbone with its network's forward (``forward_intermediates``, what the backbone calls) through
    torch.compile with static shapes (None without the `mm` extra)."""
    backbone = mm_backbone(name)
    if backbone is not None:
        backbone.model.forward_intermediates = torch.compile(backbone.model.forward_intermediates, dynamic=False)
    return backbone


def _sdpa_attention(self, x, grid):
    """V1 attention through ``scaled_dot_product_attention`` at every grid size."""
    B, N, _ = x.shape
    q, k, v = self._qkv(x)
    x = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.attention_bias(grid, q.dtype),
                                                         scale=self.scale)
    return self.proj(x.transpose(1, 2).reshape(B, N, self.val_attn_dim))


def sdpa_attention(model):
    """V1's attention through ``scaled_dot_product_attention`` instead of the explicit form."""
    return replace_forwards(model, {Attention: _sdpa_attention})


def ablation_variants(name, size, ours, **kwargs):
    """The ablation variants of ``ours`` (copies; V1's two only for V1 models)."""
    variants = {'resize_table_every_forward': bias_every_forward(copy.deepcopy(ours)),
                'authors_dense_bias': authors_dense_bias(name, size, **kwargs)}
    if name in V1_MODEL_NAMES:
        variants['pytorch_average_pooling'] = average_pooling_mixer(copy.deepcopy(ours))
        variants['scaled_dot_product_attention'] = sdpa_attention(copy.deepcopy(ours))
    return variants


class ExportedFiles:
    """The ONNX files of a run's runtime variants, exported once each into a temporary folder, with the network
    each came from (a later size builds new networks, with other random weights)."""

    def __init__(self):
        self.folder = tempfile.TemporaryDirectory(prefix='efficientformer_benchmark_')
        self.paths, self.networks = {}, {}

    def export(self, key, model, static_size=None):
        """(path, the network it was exported from) of file ``key``, exporting ``model`` the first time."""
        if key not in self.paths:
            path = os.path.join(self.folder.name, f'{key}.onnx')
            export_onnx(model, path, static_size=static_size)
            self.paths[key], self.networks[key] = path, model
        return self.paths[key], self.networks[key]


def runtime_variants(name, size, fused, resnet, runtimes, threads, files, names=None):
    """``ours_<runtime>``, ``ours_<runtime>_static`` and ``resnet50_<runtime>`` for each runtime (``names``: only
    those asked for; a file is exported only when a variant needs it). Each is checked against its PyTorch network
    on one random image (``outputs_match``'s tolerance): the figures are of files that compute what it computes."""
    variants = {}
    x = torch.randn(1, 3, *size)
    for runtime in runtimes:
        wanted = {f'ours_{runtime}': lambda: files.export(f'{name}_fused', fused),
                  f'ours_{runtime}_static': lambda: files.export(f'{name}_fused_{size[0]}x{size[1]}', fused, size),
                  f'resnet50_{runtime}': lambda: files.export('resnet50', resnet)}
        for key, export in wanted.items():
            if names is None or key in names:
                path, network = export()
                variants[key] = RuntimeFeatures(path, runtime, threads)
                with torch.no_grad():
                    diff, share = outputs_match(variants[key](x), network(x))
                if share > 1:
                    raise RuntimeError(f'{key} differs from PyTorch by {diff:.2e} ({share:.3g} of the tolerance)')
    return variants


def build_variants(name, size, device, compile_model=False, ablations=False, runtimes=(), threads=None,
                   files=None, names=None):
    """The inference variants for model ``name`` at input ``size`` (H, W), in eval on ``device``; ``runtimes``
    (CPU only) adds the exported files run in onnxruntime / OpenVINO on ``threads`` threads."""
    ours = timm.create_model(name, features_only=True).eval()
    fused = fuse_batchnorm(copy.deepcopy(ours))
    resnet = timm.create_model('resnet50', features_only=True).eval()
    variants = {'ours': ours, 'ours_fused': fused, 'ours_fused_channels_last': ChannelsLast(copy.deepcopy(fused)),
                'authors_backbone': authors_backbone(name, size),
                'resnet50': resnet, 'resnet50_channels_last': ChannelsLast(copy.deepcopy(resnet))}
    if compile_model:
        variants['ours_fused_compiled'] = torch.compile(copy.deepcopy(fused))
    if size == (224, 224):
        variants['timm_builtin'] = builtin_features(name)
    variants['mm_backbone'] = mm_backbone(name)
    if ablations:
        variants.update(ablation_variants(name, size, ours))
    if runtimes:
        if device.type != 'cpu':
            raise ValueError(f'runtimes {", ".join(runtimes)}: the exported files run on the CPU, not {device}')
        variants.update(runtime_variants(name, size, fused, resnet, runtimes, threads, files or ExportedFiles(), names))
    return _available({k: v.eval() if v is not None else None for k, v in variants.items()}, device)


def build_train_variants(name, size, device, compile_model=False, ablations=False):
    """The training variants for model ``name`` at input ``size``, in train mode on ``device``, with the output
    norms of the authors' dense backbones (GroupNorm for V1, none for V2)."""
    norms = dict(feature_norm=name in V1_MODEL_NAMES)
    ours = timm.create_model(name, features_only=True, **norms)
    resnet = timm.create_model('resnet50', features_only=True)
    variants = {'ours': ours, 'ours_channels_last': ChannelsLast(copy.deepcopy(ours)),
                'mm_backbone': mm_backbone(name),
                'authors_backbone': authors_backbone(name, size, **norms),
                'resnet50': resnet, 'resnet50_channels_last': ChannelsLast(copy.deepcopy(resnet))}
    if compile_model:
        variants['mm_backbone_compiled'] = compiled_mm_backbone(name)
    if ablations:
        variants.update(ablation_variants(name, size, ours, **norms))
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
    """Peak memory the step allocates through PyTorch (None for a file run in another runtime, whose memory
    PyTorch does not see)."""
    if isinstance(model, RuntimeFeatures):
        return None
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
    """Where one inference step spends its time: the top operators by self time, as shares. A step runs first: the
    first one at a new size also computes the attention biases, which eval then caches."""
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if x.is_cuda else [ProfilerActivity.CPU]
    infer(model, x, autocast_dtype)
    with profile(activities=activities) as prof:
        infer(model, x, autocast_dtype)
    key = (lambda e: e.self_device_time_total) if x.is_cuda else (lambda e: e.self_cpu_time_total)
    events = prof.key_averages()
    total = sum(map(key, events))
    top = sorted(events, key=key, reverse=True)[:rows]
    print(f'# profile {label}: ' + ', '.join(f'{e.key} {100 * key(e) / total:.0f}%' for e in top), flush=True)


def print_onnxruntime_profile(model, x, label, rows=8):
    """Where onnxruntime spends one run of ``model`` (a ``RuntimeFeatures`` on onnxruntime): its profiler's node
    times of the second run (the first allocates) summed by operator type, in the graph it runs after its own
    fusions and layout changes, as shares."""
    session = onnxruntime_session(model.path, model.session.get_session_options().intra_op_num_threads, profile=True)
    for _ in range(2):
        session.run(None, {'image': x.numpy()})
    path = session.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    last_run = max(e['ts'] for e in events if e.get('name') == 'model_run')
    times = collections.Counter()
    for event in events:
        if event.get('cat') == 'Node' and event['name'].endswith('_kernel_time') and event['ts'] >= last_run:
            times[event['args']['op_name']] += event['dur']
    total = sum(times.values())
    print(f'# profile {label} (onnxruntime): ' + ', '.join(
        f'{op} {100 * t / total:.0f}%' for op, t in times.most_common(rows)), flush=True)


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


def cpu_name() -> str:
    """The processor's model name (Linux's /proc/cpuinfo), else what the platform module says."""
    import platform
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts(device, threads, dtype, keep_freed_memory=False, matmul_repeats=10):
    """What a run's figures depend on: date, device, CPU and its kernels, threads, dtype, versions, and the
    device's fp32 2048^3 matmul GFLOP/s measured now (the yardstick of the FLOP rates)."""
    from datetime import datetime, timezone
    facts = dict(
        date=datetime.now(timezone.utc).isoformat(timespec='seconds'), device=str(device),
        cpu=cpu_name(), cpu_capability=torch.backends.cpu.get_cpu_capability(),
        threads=threads, dtype=dtype, torch=torch.__version__, timm=timm.__version__,
        gpu=torch.cuda.get_device_name() if device.type == 'cuda' else None, keep_freed_memory=keep_freed_memory,
        tf32_convolutions=torch.backends.cudnn.allow_tf32 if device.type == 'cuda' else None)
    facts['matmul_fp32_gflops'] = matmul_gflops(device, matmul_repeats)
    return facts


def run_inference(models, sizes, batches, device, machine, autocast_dtype=None, names=None, repeats=15, warmup=3,
                  compile_model=False, ablations=False, profile_steps=False, checks=None, runtimes=()):
    """Time every inference variant (``names``: only these, and ours) of each model, size and batch, printing a
    table row per variant; returns the rows. On a device other than the CPU each variant's outputs are first
    checked against the CPU's (appended to ``checks``). ``runtimes``: the exported files in onnxruntime /
    OpenVINO too, on the machine's threads, each checked against the network it was exported from."""
    print('| model | size | batch | variant | median ms | ratio to ours | GFLOP/s (share of matmul) | peak MB | '
          'page faults |')
    print('|---|---|---|---|---|---|---|---|---|')
    rows = []
    files = ExportedFiles() if runtimes else None
    for name in models:
        for size in sizes:
            variants = select(build_variants(name, size, device, compile_model, ablations, runtimes,
                                             machine['threads'], files, names), names)
            if device.type != 'cpu':
                for key, (diff, share) in check_against_cpu(variants, torch.randn(1, 3, *size, device=device)).items():
                    checks.append(dict(model=name, size=f'{size[0]}x{size[1]}', variant=key, max_abs_diff=diff,
                                       share_of_tolerance=share))
                    print(f'# {name} {size[0]}x{size[1]} {key}: {device} vs CPU outputs, max |difference| {diff:.2e} '
                          f'({share:.2g} of the tolerance)', flush=True)
            for batch in batches:
                x = torch.randn(batch, 3, *size, device=device)
                if profile_steps:
                    for key in variants.keys() & {'ours', 'ours_fused_channels_last'}:
                        print_profile(variants[key], x, autocast_dtype,
                                      f'{name} {size[0]}x{size[1]} batch {batch} {key}')
                    for key in sorted(k for k in variants if k.startswith('ours_onnxruntime')):
                        print_onnxruntime_profile(variants[key], x, f'{name} {size[0]}x{size[1]} batch {batch} {key}')
                rows += _time_case('inference', infer, name, variants, x, machine, autocast_dtype, repeats, warmup)
    return rows


def run_train(models, cases, device, machine, autocast_dtype=None, names=None, repeats=15, warmup=3,
              compile_model=False, ablations=False, profile_steps=False):
    """Time a training step of every training variant for each model and (size, batch) case, printing a table row
    per variant; returns the rows. ``profile_steps``: a breakdown of the mm and the authors' backbones' steps."""
    print('| model | size | batch | variant | train step median ms | ratio to ours | GFLOP/s (share of matmul) | '
          'peak MB | page faults |')
    print('|---|---|---|---|---|---|---|---|---|')
    rows = []
    for name in models:
        for size, batch in cases:
            variants = select(build_train_variants(name, size, device, compile_model, ablations), names)
            x = torch.randn(batch, 3, *size, device=device)
            if 'mm_backbone_compiled' in variants:
                seconds = time_once(train_step, variants['mm_backbone_compiled'], x, device, autocast_dtype)
                print(f'# {name} {size[0]}x{size[1]} batch {batch} mm_backbone_compiled: first step (compiling) '
                      f'{seconds:.1f} s', flush=True)
            if profile_steps:
                for key in ('mm_backbone', 'authors_backbone') & variants.keys():
                    print_train_breakdown(variants[key], x, autocast_dtype,
                                          f'training step {name} {size[0]}x{size[1]} batch {batch} {key}')
            rows += _time_case('train', train_step, name, variants, x, machine, autocast_dtype, repeats, warmup)
    return rows


def _time_case(mode, step, name, variants, x, machine, autocast_dtype, repeats, warmup):
    """Time every variant's ``step`` on ``x``, interleaved, and print a table row each; returns the rows. The rate
    column: ours' GFLOP/s for inference, every variant's with its share of the matmul rate for training."""
    medians, faults = measure(step, variants, x, x.device, autocast_dtype, repeats, warmup)
    flops = count_network_flops(step, variants['ours'], x)
    rows = []
    for key in variants:
        row = make_row(mode, name, key, x, medians, faults, flops, machine,
                       peak_memory_mb(step, variants[key], x, x.device, autocast_dtype))
        rows.append(row)
        rate = f"{row['achieved_gflops_per_s']:.1f} ({row['fraction_of_matmul']:.2f})" if 'gflops' in row else ''
        peak = '-' if row['peak_mb'] is None else f"{row['peak_mb']:.0f}"
        print(f"| {name} | {row['size']} | {row['batch']} | {key} | {row['median_ms']:.1f} | "
              f"{row['ratio_to_ours']:.2f} | {rate} | {peak} | {faults[key]:.0f} |", flush=True)
    return rows
