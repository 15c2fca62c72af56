"""The docs cannot rot: every Python block of README.md and docs/*.md runs (each on its own, in a fresh folder),
every relative link and file path they name exists, and the generated tables match what the code and the saved
benchmark runs give.

A block that needs what a test run has not (the network, a dataset, a GPU) carries a comment on the line before
its fence, ``<!-- docs-test: skip (REASON) -->``, and is reported as skipped with that reason. ``<!-- docs-test:
needs hf -->`` / ``needs mm`` blocks run where transformers 5 / the OpenMMLab stack is installed.
"""
import glob
import importlib.metadata
import importlib.util
import os
import re

import pytest
import torch

from _docs_lib import headline, render

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
PAGES = ['README.md'] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))
FENCE = re.compile(r'(?:^<!-- docs-test: (?P<mark>[^>]*?) -->\n)?^```python\n(?P<code>.*?)^```$',
                   re.MULTILINE | re.DOTALL)


def _transformers_major():
    try:
        return int(importlib.metadata.version('transformers').split('.')[0])
    except importlib.metadata.PackageNotFoundError:
        return None


NEEDS = {'hf': (_transformers_major() == 5 and importlib.util.find_spec('efficientformer_timm.hf') is not None,
                'needs transformers 5 (the hf extra)'),
         'mm': (importlib.util.find_spec('mmdet') is not None, 'needs the OpenMMLab stack (the mm extra)')}


def python_blocks(page):
    """(line number, mark or None, code) of each Python block of ``page``."""
    text = open(os.path.join(ROOT, page)).read()
    return [(text.count('\n', 0, m.start('code')), m.group('mark'), m.group('code')) for m in FENCE.finditer(text)]


BLOCKS = [pytest.param(page, code, mark, id=f'{page}:{line}') for page in PAGES
          for line, mark, code in python_blocks(page)]


def test_pages_have_python_blocks():
    assert {page for page, *_ in (b.values for b in BLOCKS)} >= {'README.md', 'docs/checkpoints.md',
                                                                 'docs/transformers.md', 'docs/openmmlab.md'}


@pytest.mark.parametrize('page,code,mark', BLOCKS)
def test_python_block_runs(page, code, mark, tmp_path, monkeypatch):
    if mark is not None:
        kind, _, detail = mark.partition(' ')
        if kind == 'skip':
            pytest.skip(detail.strip('()'))
        assert kind == 'needs' and detail in NEEDS, f'unknown docs-test mark {mark!r}'
        available, reason = NEEDS[detail]
        if not available:
            pytest.skip(reason)
    # the snippet sees the repository's configs as a user in a checkout does, and writes into a folder of its own
    os.symlink(os.path.join(ROOT, 'mm_configs'), tmp_path / 'mm_configs')
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        exec(compile(code, f'{page} block', 'exec'), {'__name__': '__docs__'})
    finally:
        torch.set_num_threads(threads)


LINK = re.compile(r'\]\((?!https?://|mailto:)([^)\s]+)\)')
PATH = re.compile(r'`((?:tools|tests|docs|mm_configs|efficientformer_timm)/[\w./-]*[\w/])`')


def _anchors(page):
    """GitHub's anchors of the headings of ``page``."""
    headings = re.findall(r'^#+ (.+)$', open(os.path.join(ROOT, page)).read(), re.MULTILINE)
    return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-') for h in headings}


@pytest.mark.parametrize('page', PAGES)
def test_links_and_paths_exist(page):
    text = open(os.path.join(ROOT, page)).read()
    folder = os.path.dirname(os.path.join(ROOT, page))
    missing = []
    for target in LINK.findall(text):
        path, _, anchor = target.partition('#')
        full = os.path.normpath(os.path.join(folder, path)) if path else os.path.join(ROOT, page)
        if not os.path.exists(full):
            missing.append(target)
        elif anchor and full.endswith('.md') and anchor not in _anchors(os.path.relpath(full, ROOT)):
            missing.append(target)
    missing += [p for p in PATH.findall(text) if not os.path.exists(os.path.join(ROOT, p))]
    assert missing == [], f'{page} names what does not exist'


def test_generated_tables_are_current():
    """README's models table and headline figures, docs/openmmlab.md's config list and docs/performance.md are what
    tools/render_docs.py writes from the code, mm_configs/ and docs/results/."""
    for page, text in render(ROOT).items():
        assert open(os.path.join(ROOT, page)).read() == text, f'{page} is out of date: run python tools/render_docs.py'


def _run(*rows):
    return {'results': [dict(model=model, size=size, batch=batch, variant=variant, median_ms=ms)
                        for model, size, batch, variant, ms in rows]}


def test_headline_compares_each_side_at_its_best_and_names_both():
    """PyTorch: the fast path against resnet50 in channels_last (not the plain resnet50 of the same run); a runtime:
    the two files exported alike; a run without one side says which instead of comparing with another variant."""
    inference = [(model, '800x1333', 1, variant, ms) for model in ('efficientformer_l1', 'efficientformerv2_s0')
                 for variant, ms in (('ours', 800.), ('ours_fused_channels_last', 450.), ('resnet50', 1800.),
                                     ('resnet50_channels_last', 1500.))]
    deploy = [('efficientformer_l1', '800x1333', 1, variant, ms) for variant, ms in (
        ('ours_onnxruntime', 450.), ('ours_onnxruntime_static', 300.), ('resnet50_onnxruntime', 1000.),
        ('ours_openvino', 400.), ('resnet50_openvino', 1600.))]
    train = [('efficientformer_l1', '512x512', 2, 'mm_backbone', 800.), ('efficientformer_l1', '512x512', 2,
                                                                         'authors_backbone', 1000.)]
    runs = dict(inference=_run(*inference), deploy=_run(*deploy), train=_run(*train))
    lines = headline(runs).splitlines()[2:]
    assert [line.rsplit(' | ', 1)[1] for line in lines] == [
        '0.30x (450 / 1500 ms) |', '0.30x (450 / 1500 ms) |', '0.45x (450 / 1000 ms) |', '0.25x (400 / 1600 ms) |',
        '0.80x (800 / 1000 ms) |']
    assert lines[0].startswith('| efficientformer_l1 features at 800x1333, PyTorch, ours fused, both channels_last: '
                              '`ours_fused_channels_last` / `resnet50_channels_last` | ')
    assert lines[2].startswith('| efficientformer_l1 features at 800x1333, onnxruntime, both files with dynamic '
                              'sizes: `ours_onnxruntime` / `resnet50_onnxruntime` | ')
    assert lines[4].startswith('| efficientformer_l1 training step at 512x512, batch 2: `mm_backbone` / '
                              '`authors_backbone` | ')

    runs['inference'] = _run(*[row for row in inference if row[3] != 'resnet50_channels_last'])
    lines = headline(runs).splitlines()[2:]
    assert lines[0].endswith(' | not in the saved run: resnet50_channels_last |')
    assert '1800' not in headline(runs)
