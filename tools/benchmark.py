#!/usr/bin/env python
"""Side-by-side speed of the EfficientFormer features backbone, in one process, interleaved run by run
(``_benchmark_lib`` beside it lists the variants; ``_targets`` holds the targets a run is checked against).

    python tools/benchmark.py [--models efficientformer_l1 ...] [--sizes 224 512 800x1333] [--threads 2]
                              [--repeats 15] [--device cpu|cuda] [--dtype fp32|fp16|bf16] [--compile] [--profile]
                              [--train [--cases 512x512:4 800x1333:2]] [--keep-freed-memory] [--ablations]
                              [--variants NAME ...] [--runtimes onnxruntime openvino] [--json FILE.json]
                              [--plot FILE.png]

Inference (default) times each model and input size (eval, no grad) at batch 1 (latency) and 8 (throughput):
ours (plain, fused, fused in channels_last, compiled with --compile), the OpenMMLab backbone as the configs build
it, the authors' dense backbone, timm's built-in model (224 only) and resnet50's features; --runtimes adds the
exported files (ours fused, ours for the measured size only, resnet50's) in onnxruntime / OpenVINO, each checked
against its PyTorch network first. --train times one
training step (forward and backward of the mean of every output) at the mm configs' sizes and per-GPU batches.

Each repeat runs every variant once in turn; medians are reported with ratios to ``ours``, peak memory
(CUDA: max_memory_allocated; CPU: allocations seen by the torch profiler), the process's minor page faults per
step, our network's FLOPs (torch.utils.flop_counter) and the rate each variant running it achieves against the
machine's fp32 matmul GFLOP/s measured in the same run. The inference targets are checked against the run. On a
device other than the CPU, inference first checks each variant's outputs against the same model on the CPU (fp32,
TF32 off; in the JSON as ``cpu_checks``). --profile prints where the time goes: the top operators of one
inference step (PyTorch's profiler; onnxruntime's own for its variants), or a training step's forward by module
type and backward by autograd node. --ablations adds the
variants that measure the model's design choices against the alternatives. --keep-freed-memory has glibc keep
freed memory for reuse, as ``EfficientFormerRunner`` does on machines without CUDA (needs the ``mm`` extra).
"""
import argparse
import json
import os
import shlex
import sys

# The torch profiler (CPU peak memory, --profile) logs every start and stop, and on a machine without a GPU an
# error about counting GPUs, on stderr between the table's rows: silent unless KINETO_LOG_LEVEL says otherwise.
os.environ.setdefault('KINETO_LOG_LEVEL', '6')

import torch  # noqa: E402

from efficientformer_timm.variants import MODEL_NAMES  # noqa: E402

import _benchmark_lib as benchmark  # noqa: E402
from _cli import parse_size  # noqa: E402
from _targets import report_targets  # noqa: E402


def parse_case(text):
    """'512x512:4' -> ((512, 512), 4)."""
    size, _, batch = text.partition(':')
    return parse_size(size), int(batch or 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=list(MODEL_NAMES), choices=MODEL_NAMES, metavar='MODEL')
    parser.add_argument('--sizes', nargs='+', type=parse_size,
                        default=[(224, 224), (512, 512), (800, 1333)])
    parser.add_argument('--batches', nargs='+', type=int, default=[1, 8])
    parser.add_argument('--train', action='store_true', help='time training steps instead of inference')
    parser.add_argument('--cases', nargs='+', type=parse_case, default=[((512, 512), 4), ((800, 1333), 2)],
                        help="--train: SIZE:BATCH pairs (default: the mm configs' per-GPU batches)")
    parser.add_argument('--variants', nargs='+', help='measure only these variants (and ours); default: all')
    parser.add_argument('--ablations', action='store_true',
                        help=f'also measure the design ablations ({", ".join(benchmark.ABLATIONS)})')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--repeats', type=int, default=15)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', choices=['fp32', 'fp16', 'bf16'], default='fp32')
    parser.add_argument('--compile', action='store_true',
                        help='add torch.compile of the fused model (inference) or of the mm backbone (--train); '
                             'slow to build')
    parser.add_argument('--profile', action='store_true',
                        help='also print where the time goes: of ours and ours_fused_channels_last (inference), '
                             'of mm_backbone and authors_backbone (--train)')
    parser.add_argument('--keep-freed-memory', action='store_true',
                        help="have glibc keep freed memory for reuse (EfficientFormerRunner's CPU default)")
    parser.add_argument('--runtimes', nargs='+', default=[], choices=['onnxruntime', 'openvino'],
                        help='also time the exported files in these runtimes on --threads threads (inference, CPU)')
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

    machine = benchmark.machine_facts(device, args.threads, args.dtype, args.keep_freed_memory,
                                      max(args.repeats, 10))
    where = machine['gpu'] or f"{machine['cpu']} ({machine['cpu_capability']} kernels)"
    print(f"# {machine['date']} {machine['device']} {where}, {args.threads} threads, "
          f"{args.dtype}{', TF32 convolutions (PyTorch default)' if machine['tf32_convolutions'] else ''}"
          f"{', freed memory kept' if args.keep_freed_memory else ''}; fp32 2048^3 matmul: "
          f"{machine['matmul_fp32_gflops']:.1f} GFLOP/s", flush=True)
    options = dict(autocast_dtype=autocast_dtype, names=args.variants, repeats=args.repeats, warmup=args.warmup,
                   compile_model=args.compile, ablations=args.ablations, profile_steps=args.profile)
    checks = []
    if args.train:
        if args.runtimes:
            parser.error('--runtimes: the exported files are timed for inference, not with --train')
        rows = benchmark.run_train(args.models, args.cases, device, machine, **options)
    else:
        rows = benchmark.run_inference(args.models, args.sizes, args.batches, device, machine, checks=checks,
                                       runtimes=args.runtimes, **options)
    report_targets(rows)
    benchmark.report_checks(checks)
    if args.json:
        with open(args.json, 'w') as f:
            command = shlex.join(['python', 'tools/benchmark.py', *(sys.argv[1:] if argv is None else argv)])
            json.dump(dict(command=command, machine=machine, results=rows, cpu_checks=checks), f, indent=1)
        print(f'wrote {args.json}')
    if args.plot:
        benchmark.plot(rows, args.plot)
        print(f'wrote {args.plot}')


if __name__ == '__main__':
    main()
