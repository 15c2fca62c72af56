"""The tables of README.md and docs/ that come from the code and from saved benchmark runs, so that adding a model, a
config or a run cannot leave the docs behind. ``tools/render_docs.py`` writes them; tests/test_docs.py compares.

A rendered part of a page sits between ``<!-- NAME -->`` and ``<!-- /NAME -->``; docs/performance.md is rendered
whole from the runs ``tools/benchmark.py --json`` saved in docs/results/.
"""
import glob
import json
import os
import re
from typing import Dict, List

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from efficientformer_timm.variants import MODEL_NAMES

from _targets import target_lines

# timm's published ImageNet top-1 of the snap_dist_in1k weights (not measured here)
TIMM_TOP1 = {'efficientformer_l1': 80.50, 'efficientformer_l3': 82.56, 'efficientformer_l7': 83.40,
             'efficientformerv2_s0': 76.10, 'efficientformerv2_s1': 79.68, 'efficientformerv2_s2': 82.16,
             'efficientformerv2_l': 83.64}

# the saved runs of docs/performance.md, in page order: file stem -> (title, what the table shows)
PERFORMANCE_RUNS = {
    'inference': ('Inference, L1 and V2-S0, batch 1',
                  "The `features_only` backbone in eval without gradients against timm's built-in model (224 only: "
                  "it cannot run other sizes), the authors' dense backbone and timm's resnet50 features."),
    'inference_models': ('Inference, the other five models, batch 1', 'The same comparison for L3, L7, V2-S1, '
                         'V2-S2 and V2-L at segmentation and detection sizes.'),
    'train': ('Training step, L1 and V2-S0',
              "One training step (forward and backward of the mean of every output) at the mm configs' input sizes, "
              "with the authors' output norms (GroupNorm for V1, none for V2). `mm_backbone` is the backbone as the "
              'configs build it (channels_last, gradients back in channels_last).'),
    'deploy': ('Deployment runtimes',
               'The fused `features_only` network exported by `tools/export_onnx.py --fuse-bn` (dynamic sizes, '
               '`_onnxruntime` / `_openvino`) and for the measured size only (`--static`: `..._static`), '
               'run in onnxruntime and OpenVINO on the same threads, beside the PyTorch fast path and resnet50 '
               'features exported the same way (`resnet50_onnxruntime` / `resnet50_openvino`).'),
    'ablations': ('Design choices',
                  "What the model's own choices are worth, each against the alternative it replaced, on the same "
                  'network: the bias cache, the authors\' bias scheme, the pooling mixer as a convolution, the '
                  'explicit attention on CPU.'),
}
RESULTS_DIR = os.path.join('docs', 'results')


def replace_section(text: str, name: str, content: str) -> str:
    """``text`` with what stands between ``<!-- name -->`` and ``<!-- /name -->`` replaced by ``content``."""
    pattern = re.compile(rf'(<!-- {re.escape(name)} -->\n).*?(<!-- /{re.escape(name)} -->)', re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f'no <!-- {name} --> ... <!-- /{name} --> section')
    return pattern.sub(lambda m: m.group(1) + content.rstrip('\n') + '\n' + m.group(2), text, count=1)


def _gmacs(model: torch.nn.Module, height: int, width: int) -> float:
    """Multiply-accumulates of one forward, counted on the meta device (shapes only, no arithmetic)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, height, width, device='meta'))
    return counter.get_total_flops() / 2e9


def models_table() -> str:
    """Parameters and GMACs of the seven models (torch.utils.flop_counter, MACs = FLOPs / 2) with timm's top-1."""
    lines = ['| model | params (M) | GMACs @224 | backbone params (M) | backbone GMACs @224 | backbone GMACs '
             '@800x1333 | top-1 (timm\'s) |', '|---|---|---|---|---|---|---|']
    for name in MODEL_NAMES:
        with torch.device('meta'):
            classifier = timm.create_model(name).eval()
            backbone = timm.create_model(name, features_only=True).eval()
        params = [sum(p.numel() for p in m.parameters()) / 1e6 for m in (classifier, backbone)]
        lines.append(f'| {name} | {params[0]:.2f} | {_gmacs(classifier, 224, 224):.2f} | {params[1]:.2f} | '
                     f'{_gmacs(backbone, 224, 224):.2f} | {_gmacs(backbone, 800, 1333):.1f} | {TIMM_TOP1[name]:.2f} |')
    return '\n'.join(lines) + '\n'


def configs_table(root: str) -> str:
    """Every config under ``root``/mm_configs with the first sentence of its leading comment."""
    lines = ['| config | what it is |', '|---|---|']
    for folder in ('', 'released', 'mmpretrain', 'toy'):
        for path in sorted(glob.glob(os.path.join(root, 'mm_configs', folder, '*.py'))):
            with open(path) as f:
                comment = ' '.join(line[1:].strip() for line in f.read().split('_base_')[0].splitlines()
                                   if line.startswith('#'))
            what = comment.split('. ')[0].rstrip('.')
            lines.append(f'| `{os.path.relpath(path, root)}` | {what} |')
    return '\n'.join(lines) + '\n'


def load_runs(root: str) -> Dict[str, dict]:
    """The saved benchmark runs of docs/results, by file stem; every file must be one of PERFORMANCE_RUNS."""
    stems = {os.path.splitext(os.path.basename(p))[0]: p for p in glob.glob(os.path.join(root, RESULTS_DIR, '*.json'))}
    unknown = sorted(set(stems) - set(PERFORMANCE_RUNS))
    if unknown:
        raise ValueError(f'{unknown} in {RESULTS_DIR}: not runs of docs/performance.md ({", ".join(PERFORMANCE_RUNS)})')
    runs = {}
    for stem in PERFORMANCE_RUNS:  # in page order
        if stem in stems:
            with open(stems[stem]) as f:
                runs[stem] = json.load(f)
    return runs


def _machine_line(machine: dict) -> str:
    memory = ', freed memory kept' if machine.get('keep_freed_memory') else ''
    where = machine['gpu'] or f"{machine['cpu']} ({machine['cpu_capability']} kernels)"
    return (f"{machine['date'][:10]}, {where}, {machine['threads']} threads, {machine['dtype']}{memory}; torch "
            f"{machine['torch']}, timm {machine['timm']}; fp32 2048^3 matmul {machine['matmul_fp32_gflops']:.0f} "
            'GFLOP/s')


def _ms(value: float) -> str:
    return f'{value:.1f}' if value < 100 else f'{value:.0f}'


def results_table(rows: List[dict]) -> str:
    """One line per model, size and batch; per variant the median ms and, in brackets, its ratio to ``ours``."""
    variants = list(dict.fromkeys(r['variant'] for r in rows))
    cases = list(dict.fromkeys((r['model'], r['size'], r['batch']) for r in rows))
    by_key = {(r['model'], r['size'], r['batch'], r['variant']): r for r in rows}
    lines = ['| model @ size, batch | ' + ' | '.join(variants) + ' |', '|---' * (len(variants) + 1) + '|']
    for model, size, batch in cases:
        cells = []
        for variant in variants:
            row = by_key.get((model, size, batch, variant))
            cells.append('-' if row is None else _ms(row['median_ms']) if variant == 'ours'
                         else f"{_ms(row['median_ms'])} ({row['ratio_to_ours']:.2f})")
        lines.append(f'| {model} @ {size}, {batch} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def performance_page(root: str) -> str:
    """docs/performance.md: one table per saved run, each with its command and machine."""
    parts = ['# Performance', '',
             '<!-- Generated by `python tools/render_docs.py` from the runs in docs/results/: do not edit. -->', '',
             '`tools/benchmark.py` runs every variant in one process, interleaved run by run, and reports medians. '
             "Each cell is the median time in ms and, in brackets, its ratio to `ours` (this package's "
             '`features_only` model, plain). Compare ratios within a table: a machine\'s speed drifts between '
             'runs. `ours_fused` folds BatchNorm and the layer scales into the convolutions (`fuse_bn=True`), '
             '`_channels_last` runs in that memory format, `mm_backbone` is the OpenMMLab backbone as the configs '
             "build it, `authors_backbone` the authors' dense backbone (`tools/_authors.py`).", '']
    for stem, run in load_runs(root).items():
        title, what = PERFORMANCE_RUNS[stem]
        parts += [f'## {title}', '', what, '', '```bash', run['command'], '```', '',
                  _machine_line(run['machine']) + ':', '', results_table(run['results'])]
    return '\n'.join(parts).rstrip('\n') + '\n'


def _rows(run: dict) -> Dict[tuple, dict]:
    return {(r['model'], r['size'], r['batch'], r['variant']): r for r in run['results']}


def _ratio(label: str, rows: Dict[tuple, dict], case: tuple, ours: str, other: str) -> str:
    """A headline line: variant ``ours`` against variant ``other`` of one case (model, size, batch) of one run, or
    which of the two the run lacks."""
    absent = [variant for variant in (ours, other) if case + (variant,) not in rows]
    if absent:
        return f'| {label} | not in the saved run: {", ".join(absent)} |'
    a, b = rows[case + (ours,)]['median_ms'], rows[case + (other,)]['median_ms']
    return f'| {label} | {a / b:.2f}x ({_ms(a)} / {_ms(b)} ms) |'


def headline(runs: Dict[str, dict]) -> str:
    """The README's figures from the saved runs, each a ratio of two variants of one run, named in its label: in
    PyTorch each side at its best (the fast path against resnet50 in channels_last), in a runtime the two files
    exported the same way (dynamic sizes), in training the mm backbone against the authors' backbone."""
    lines = ['| figure (CPU) | measured |', '|---|---|']
    inference = _rows(runs['inference'])
    for model in ('efficientformer_l1', 'efficientformerv2_s0'):
        lines.append(_ratio(f'{model} features at 800x1333, PyTorch, ours fused, both channels_last: '
                            '`ours_fused_channels_last` / `resnet50_channels_last`',
                            inference, (model, '800x1333', 1), 'ours_fused_channels_last', 'resnet50_channels_last'))
    deploy = _rows(runs['deploy'])
    for runtime in ('onnxruntime', 'openvino'):
        lines.append(_ratio(f'efficientformer_l1 features at 800x1333, {runtime}, both files with dynamic sizes: '
                            f'`ours_{runtime}` / `resnet50_{runtime}`',
                            deploy, ('efficientformer_l1', '800x1333', 1), f'ours_{runtime}', f'resnet50_{runtime}'))
    model, size, batch = next((r['model'], r['size'], r['batch']) for r in runs['train']['results'])
    lines.append(_ratio(f'{model} training step at {size}, batch {batch}: `mm_backbone` / `authors_backbone`',
                        _rows(runs['train']), (model, size, batch), 'mm_backbone', 'authors_backbone'))
    return '\n'.join(lines) + '\n'


def deploy_targets(root: str) -> str:
    """The deployment targets against the saved deployment run (``_targets.target_lines``)."""
    run = load_runs(root)['deploy']
    lines = ['| target (800x1333, batch 1) | measured | met |', '|---|---|---|']
    for target, measured, met in target_lines(run['results']):
        lines.append(f'| {target} | {measured} | {"yes" if met else "no"} |')
    return '\n'.join(lines) + f"\n\n{_machine_line(run['machine'])}; `{run['command']}`\n"


def render(root: str) -> Dict[str, str]:
    """{page path relative to ``root``: its rendered text} for every page with generated parts."""
    pages = {}
    with open(os.path.join(root, 'README.md')) as f:
        readme = replace_section(f.read(), 'models-table', models_table())
    pages['README.md'] = replace_section(readme, 'headline', headline(load_runs(root)))
    with open(os.path.join(root, 'docs', 'openmmlab.md')) as f:
        pages[os.path.join('docs', 'openmmlab.md')] = replace_section(f.read(), 'configs-table', configs_table(root))
    pages[os.path.join('docs', 'performance.md')] = performance_page(root)
    with open(os.path.join(root, 'docs', 'deploy.md')) as f:
        pages[os.path.join('docs', 'deploy.md')] = replace_section(f.read(), 'deploy-targets', deploy_targets(root))
    return pages
