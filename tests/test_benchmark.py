"""tools/benchmark.py runs every variant it names, in both modes, and writes files only when asked."""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

pytestmark = pytest.mark.mm  # the mm_backbone variants

BENCHMARK = os.path.join(os.path.dirname(__file__), '..', 'tools', 'benchmark.py')
QUICK = ['--models', 'efficientformerv2_s0', '--repeats', '1', '--warmup', '0', '--threads', '1']


def _run(args, cwd):
    out = subprocess.run([sys.executable, BENCHMARK, *QUICK, *args], cwd=cwd, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_training_steps_with_json_and_plot(tmp_path):
    log = _run(['--train', '--cases', '64x96:2', '--json', 'rows.json', '--plot', 'times.png'], tmp_path)
    rows = json.loads((tmp_path / 'rows.json').read_text())['results']
    assert [r['variant'] for r in rows] == ['ours', 'ours_channels_last', 'mm_backbone', 'mm_backbone_plain',
                                           'authors_dense_bias', 'resnet50', 'resnet50_channels_last']
    assert all(r['mode'] == 'train' and r['size'] == '64x96' and r['batch'] == 2 and r['median_ms'] > 0
               and r['peak_mb'] > 0 for r in rows)
    assert "| efficientformerv2_s0 64x96 batch 2: mm backbone train step <= 0.70x the authors' dense backbone |" in log
    with Image.open(tmp_path / 'times.png') as picture:
        assert picture.format == 'PNG'


def test_inference_writes_nothing_unless_asked(tmp_path):
    log = _run(['--sizes', '64', '--batches', '1'], tmp_path)
    assert os.listdir(tmp_path) == []
    variants = [line.split('|')[4].strip() for line in log.splitlines() if line.startswith('| efficientformerv2_s0')]
    assert variants == ['ours', 'ours_fused', 'ours_fused_channels_last', 'resize_table_every_forward',
                        'authors_dense_bias', 'resnet50', 'resnet50_channels_last', 'mm_backbone']
