"""Every command-line program in tools/ answers --help, and none edits the import path: what a tool needs lives in
the package or beside it in tools/ (pytest's `pythonpath` setting gives the tests tools/), what a test needs in
tests/."""
import glob
import json
import os
import re
import subprocess
import sys

import pytest

from helpers import made_once

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
# the commands; tools/_*.py are the modules they import (as siblings: a script's folder is on its import path)
TOOLS = sorted(t for t in glob.glob(os.path.join(ROOT, 'tools', '*.py')) if not os.path.basename(t).startswith('_'))


def test_every_tool_is_listed():
    assert [os.path.basename(t) for t in TOOLS] == [
        'benchmark.py', 'convert_checkpoint.py', 'demo.py', 'export_model.py', 'export_onnx.py',
        'make_synthetic_data.py', 'model_table.py', 'render_docs.py', 'run_timm_tests.py']


def _write_help_pages(path):
    """Each tool's exit status, --help output and errors, all run at once (each process imports torch)."""
    runs = {os.path.basename(tool): subprocess.Popen([sys.executable, tool, '--help'], stdout=subprocess.PIPE,
                                                     stderr=subprocess.PIPE, text=True, cwd=ROOT) for tool in TOOLS}
    pages = {}
    for tool, run in runs.items():
        stdout, stderr = run.communicate(timeout=300)  # reads both pipes while waiting: a full pipe cannot block it
        pages[tool] = (run.returncode, stdout, stderr)
    path.write_text(json.dumps(pages))


@pytest.fixture(scope='session')
def help_pages(tmp_path_factory):
    return json.loads(made_once(tmp_path_factory, 'help_pages.json', _write_help_pages).read_text())


@pytest.mark.parametrize('tool', TOOLS, ids=os.path.basename)
def test_tool_answers_help(tool, help_pages):
    returncode, stdout, stderr = help_pages[os.path.basename(tool)]
    assert returncode == 0, stderr[-3000:]
    assert stdout.startswith(f'usage: {os.path.basename(tool)} ')


# a tool as it runs for a user without the OpenMMLab stack: its packages cannot be imported
_WITHOUT_OPENMMLAB = """
import runpy, sys
sys.modules.update(dict.fromkeys(['mmengine', 'mmcv', 'mmdet', 'mmseg']))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def test_converting_a_detector_without_the_openmmlab_stack_exits_1_naming_the_extra(tmp_path):
    import timm
    import torch
    from efficientformer_timm.checkpoint import timm_to_original
    backbone = timm_to_original(timm.create_model('efficientformer_l1').state_dict())
    torch.save({'state_dict': {**{'backbone.' + k: v for k, v in backbone.items()},
                               'decode_head.conv_seg.weight': torch.zeros(150, 128, 1, 1)}}, tmp_path / 'semfpn.pth')
    run = subprocess.run([sys.executable, '-c', _WITHOUT_OPENMMLAB, os.path.join(ROOT, 'tools', 'convert_checkpoint.py'),
                          str(tmp_path / 'semfpn.pth'), str(tmp_path / 'out.pth')], capture_output=True, text=True)
    assert run.returncode == 1, run.stderr[-3000:]
    assert re.search(r'^error: \S*semfpn\.pth is a detector / segmenter checkpoint: converting it needs the OpenMMLab '
                     r'stack \(install the package with its `mm` extra', run.stderr, re.M), run.stderr[-3000:]
    assert 'Traceback' not in run.stderr
    assert sorted(os.listdir(tmp_path)) == ['semfpn.pth']


def test_no_tool_or_test_edits_the_import_path():
    sources = sorted(glob.glob(os.path.join(ROOT, 'tools', '*.py')) + glob.glob(os.path.join(ROOT, 'tests', '*.py')))
    offenders = [os.path.relpath(path, ROOT) for path in sources
                 if path != os.path.abspath(__file__) and re.search(r'sys\.path\.(insert|append)|sys\.path\s*\+?=',
                                                                    open(path).read())]
    assert offenders == []


def test_export_checks_share_one_tolerance(help_pages):
    """One rule for "matches PyTorch": ``outputs_match`` without tolerance arguments, ``check_onnx``,
    ``check_segmentor`` and both export tools' flags all accept max |got - expected| up to 1e-4 + 1e-5 x
    max |expected|, and no more."""
    import inspect
    import torch
    from efficientformer_timm.export import check_onnx, outputs_match
    expected = [torch.tensor([10.0, -3.0], dtype=torch.float64)]  # tolerance 1e-4 + 1e-5 x 10 = 2e-4
    for diff, accepted in [(1.99e-4, True), (2.01e-4, False)]:
        share = outputs_match([expected[0] + torch.tensor([0.0, diff], dtype=torch.float64)], expected)[1]
        assert (share <= 1) == accepted and share == pytest.approx(diff / 2e-4)
    check_defaults = inspect.signature(check_onnx).parameters
    assert (check_defaults['rtol'].default, check_defaults['atol'].default) == (1e-5, 1e-4)
    from efficientformer_timm.export_model import check_segmentor
    segmentor_defaults = inspect.signature(check_segmentor).parameters
    assert (segmentor_defaults['rtol'].default, segmentor_defaults['atol'].default) == (1e-5, 1e-4)
    for tool in ('export_onnx.py', 'export_model.py'):  # the whole-model tool checks logits by the same rule
        returncode, stdout, _ = help_pages[tool]
        assert returncode == 0
        help_text = ' '.join(stdout.split())
        defaults = [re.search(rf' --{flag} {flag.upper()} .*?default: ([^)]*)\)', help_text).group(1)
                    for flag in ('rtol', 'atol')]
        assert defaults == ['1e-05', '0.0001'], tool
