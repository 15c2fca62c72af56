"""Every command-line program in tools/ answers --help, and none edits the import path: what a test or a tool
needs lives in the package (or, for the tests, in tests/)."""
import glob
import json
import os
import re
import subprocess
import sys

import pytest

from helpers import made_once

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
TOOLS = sorted(glob.glob(os.path.join(ROOT, 'tools', '*.py')))


def test_every_tool_is_listed():
    assert [os.path.basename(t) for t in TOOLS] == [
        'benchmark.py', 'convert_checkpoint.py', 'demo.py', 'export_onnx.py', 'make_synthetic_data.py',
        'model_table.py', 'render_docs.py', 'run_timm_tests.py']


def _write_help_pages(path):
    """Each tool's exit status, --help output and errors, all run at once (each process imports torch)."""
    runs = {os.path.basename(tool): subprocess.Popen([sys.executable, tool, '--help'], stdout=subprocess.PIPE,
                                                     stderr=subprocess.PIPE, text=True, cwd=ROOT) for tool in TOOLS}
    path.write_text(json.dumps({tool: (run.wait(timeout=300), *run.communicate()) for tool, run in runs.items()}))


@pytest.fixture(scope='session')
def help_pages(tmp_path_factory):
    return json.loads(made_once(tmp_path_factory, 'help_pages.json', _write_help_pages).read_text())


@pytest.mark.parametrize('tool', TOOLS, ids=os.path.basename)
def test_tool_answers_help(tool, help_pages):
    returncode, stdout, stderr = help_pages[os.path.basename(tool)]
    assert returncode == 0, stderr[-3000:]
    assert stdout.startswith(f'usage: {os.path.basename(tool)} ')


def test_no_tool_or_test_edits_the_import_path():
    sources = TOOLS + sorted(glob.glob(os.path.join(ROOT, 'tests', '*.py')))
    offenders = [os.path.relpath(path, ROOT) for path in sources
                 if path != os.path.abspath(__file__) and re.search(r'sys\.path\.(insert|append)|sys\.path\s*\+?=',
                                                                    open(path).read())]
    assert offenders == []
