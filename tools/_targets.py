"""The project's inference targets at 800x1333, batch 1, checked against a benchmark run's rows: what
``tools/benchmark.py`` reports after its table and the deploy page lists (``_docs_lib``)."""
from efficientformer_timm.variants import V1_MODEL_NAMES

# model -> (its exported features / resnet50's in the same runtime) at 800x1333, batch 1
RUNTIME_TARGETS = {'efficientformer_l1': 0.40, 'efficientformerv2_s0': 0.35}


def _row(rows, model, size, batch, variant):
    return next((r for r in rows if r['mode'] == 'inference' and (r['model'], r['size'], r['batch'], r['variant'])
                 == (model, size, batch, variant)), None)


def target_lines(rows):
    """(target, measured, met) for each inference target this run's figures can check, at 800x1333 batch 1."""
    lines = []
    for r in rows:
        if r['mode'] != 'inference' or r['size'] != '800x1333' or r['batch'] != 1:
            continue
        model, variant = r['model'], r['variant']
        if variant == 'ours' and model == 'efficientformer_l1':
            resnet = _row(rows, model, r['size'], 1, 'resnet50')
            if resnet:
                ratio = r['median_ms'] / resnet['median_ms']
                lines.append(('L1 plain features <= 0.45x resnet50', f'{ratio:.2f}x', ratio <= 0.45))
        if variant == 'ours_fused_channels_last':
            share = 0.70 if model in V1_MODEL_NAMES else 0.50
            lines.append((f'{model} PyTorch fast path (fused, channels_last) >= {share:.2f} of the matmul GFLOP/s',
                          f"{r['fraction_of_matmul']:.3f}", r['fraction_of_matmul'] >= share))
        for runtime in ('onnxruntime', 'openvino'):
            if variant != f'ours_{runtime}':
                continue
            resnet = _row(rows, model, r['size'], 1, f'resnet50_{runtime}')
            if resnet and model in RUNTIME_TARGETS:
                ratio = r['median_ms'] / resnet['median_ms']
                lines.append((f'{model} in {runtime} <= {RUNTIME_TARGETS[model]:.2f}x resnet50 in {runtime}',
                              f"{ratio:.2f}x ({r['median_ms']:.0f} / {resnet['median_ms']:.0f} ms)",
                              ratio <= RUNTIME_TARGETS[model]))
            fast = _row(rows, model, r['size'], 1, 'ours_fused_channels_last')
            if fast:
                ratio = r['median_ms'] / fast['median_ms']
                lines.append((f'{model} in {runtime} <= 0.80x the PyTorch fast path',
                              f"{ratio:.2f}x ({r['median_ms']:.0f} / {fast['median_ms']:.0f} ms)", ratio <= 0.80))
    return lines


def report_targets(rows):
    """The inference targets, checked against this run's figures (those it measured)."""
    lines = target_lines(rows)
    if lines:
        print('\n| target (800x1333, batch 1) | measured | met |\n|---|---|---|')
        for target, measured, met in lines:
            print(f'| {target} | {measured} | {"yes" if met else "no"} |')
