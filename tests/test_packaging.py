"""Packaging: requirements are ranges whose lower bounds are the verified stack; installing the package into an
environment that has its dependencies (any newer torch) installs nothing but the package; a non-editable install
works outside the checkout (the configs ship inside it); the package's imports form no cycle, the checkpoint layouts
below the adapters that use them."""
import ast
import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


def _requirements(section_text: str):
    return [line.strip() for line in section_text.splitlines() if line.strip() and not line.strip().startswith('%')]


def _pins():
    with open(os.path.join(ROOT, 'tools', 'constraints.txt')) as f:
        return dict(line.strip().split('==') for line in f if '==' in line and not line.startswith('#'))


def test_requirements_are_ranges_from_the_verified_stack():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, 'setup.cfg'))
    pins = _pins()
    core = _requirements(cfg['options']['install_requires'])
    assert [re.split(r'[<>=]', r)[0] for r in core] == ['torch', 'timm', 'safetensors']
    for requirement in core + _requirements(cfg['options.extras_require']['mm']):
        if '>=' not in requirement:
            assert '==' not in requirement, requirement
            continue
        name, lowest = re.match(r'([\w-]+)>=([\w.]+)', requirement).groups()
        assert pins[name] == lowest, f'{requirement}: the verified stack has {name}=={pins[name]}'


def test_installing_keeps_the_installed_torch(tmp_path):
    """Resolved offline against this environment (whatever torch it has): pip would install the package only."""
    report = tmp_path / 'report.json'
    done = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--dry-run', '--no-index', '--no-build-isolation', '--quiet',
         '--report', str(report), ROOT], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    installs = [item['metadata']['name'] for item in json.loads(report.read_text())['install']]
    assert installs == ['efficientformer-timm']


PACKAGE = 'efficientformer_timm'


def _modules():
    """{module name: its source path} of every module of the package (folders with an ``__init__.py``; the shipped
    configs are data)."""
    modules = {}
    for folder, dirs, files in os.walk(os.path.join(ROOT, PACKAGE)):
        dirs[:] = [d for d in dirs if os.path.isfile(os.path.join(folder, d, '__init__.py'))]
        package = os.path.relpath(folder, ROOT).replace(os.sep, '.')
        for file in files:
            if file.endswith('.py'):
                name = package if file == '__init__.py' else f'{package}.{file[:-3]}'
                modules[name] = os.path.join(folder, file)
    return modules


def _imports(name, path, modules):
    """The package's modules that ``name`` imports, at any level of its source (inside functions too)."""
    package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:  # relative: from the package, one folder up per dot after the first
                parent = package.split('.')[:len(package.split('.')) - node.level + 1]
                base = '.'.join(parent + ([base] if base else []))
            # `from package import module` imports that module; `from module import name`, the module
            targets = [f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name inside a module: the module
                target = target.rpartition('.')[0]
            if target and target != name:
                found.add(target)
    return found


def _import_graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph):
    """One import cycle of ``graph`` as [a, b, ..., a], or None."""
    state = {}

    def visit(node, path):
        state[node] = 'open'
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 'open':
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 'done'
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_import_graph_finds_imports_inside_functions():
    graph = _import_graph()
    assert {'efficientformer_timm.checkpoint', 'efficientformer_timm.variants'} <= graph[
        'efficientformer_timm.mm.released']
    assert 'efficientformer_timm.mm.released' in graph['efficientformer_timm.convert']  # inside convert_file
    assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == ['a', 'b', 'c', 'a']


def test_package_imports_have_no_cycle():
    cycle = _cycle(_import_graph())
    assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_checkpoint_layouts_import_neither_the_adapters_nor_transformers():
    """``efficientformer_timm.checkpoint`` knows the weight layouts; the OpenMMLab adapter and the transformers code
    build on it, never the other way round."""
    graph = _import_graph()
    above = ('efficientformer_timm.mm', 'efficientformer_timm.hf', 'efficientformer_timm.transformers_compat')
    offenders = sorted(f'{name} imports {target}' for name, targets in graph.items()
                       if name.startswith('efficientformer_timm.checkpoint')
                       for target in targets if any(target == a or target.startswith(a + '.') for a in above))
    assert offenders == []


# run outside the checkout against the package installed into argv[1]: the authors' Semantic FPN V2-S0 (random
# weights in their layout) converts, and the model the shipped config builds loads the result, every tensor equal
_INSTALLED_PACKAGE_CONVERTS = textwrap.dedent("""
    import os, re, sys
    import torch
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.runner import load_checkpoint
    import efficientformer_timm
    from efficientformer_timm.checkpoint import timm_to_original
    from efficientformer_timm.convert import convert_file
    from efficientformer_timm.mm.configs import config_path

    target = os.path.realpath(sys.argv[1])
    assert os.path.realpath(efficientformer_timm.__file__).startswith(target + os.sep), efficientformer_timm.__file__
    config = config_path('released/semfpn_v2_s0_ade20k.py')
    assert config.startswith(target + os.sep), config
    init_default_scope('mmseg')
    model = MODELS.build(Config.fromfile(config).model)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    backbone = {k[len('backbone.model.'):]: v for k, v in state.items() if k.startswith('backbone.model.')}
    authors = {'backbone.' + re.sub(r'(attention_biases|attention_bias_idxs)$', r'\\1_seg', k): v
               for k, v in timm_to_original(backbone).items()}
    authors.update({k: v for k, v in state.items() if not k.startswith('backbone.')})
    torch.save({'state_dict': authors}, 'authors.pth')
    assert convert_file('authors.pth', 'converted.pth') == config
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    load_checkpoint(model, 'converted.pth', strict=True)
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    print('converted and loaded', len(state), 'tensors')
""")


def _package_files(root):
    return sorted(os.path.relpath(os.path.join(folder, f), root) for folder, _, files in
                  os.walk(os.path.join(root, PACKAGE), followlinks=True) for f in files if f.endswith('.py'))


@pytest.mark.mm
def test_non_editable_install_converts_and_builds_outside_the_checkout(tmp_path):
    """``pip install .`` (not editable) into a folder: every module and config of the source tree is there, and from
    another folder the installed package converts one of the authors' segmenters with its shipped released config
    (whose bases inherit the top-level and _base_ configs, and mmseg's) and builds the model that loads it."""
    source, target, elsewhere = tmp_path / 'source', tmp_path / 'installed', tmp_path / 'elsewhere'
    ignore = shutil.ignore_patterns('__pycache__', '*.egg-info', 'build')
    shutil.copytree(os.path.join(ROOT, PACKAGE), source / PACKAGE, symlinks=True, ignore=ignore)
    shutil.copytree(os.path.join(ROOT, 'mm_configs'), source / 'mm_configs', ignore=ignore)
    for name in ('setup.cfg', 'pyproject.toml', 'README.md'):
        shutil.copy(os.path.join(ROOT, name), source)
    done = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-build-isolation', '--no-index',
                           '--quiet', '--target', str(target), str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    installed = _package_files(target)
    assert installed == _package_files(ROOT)
    assert 'efficientformer_timm/configs/_base_/semfpn_efficientformer_ade20k_40k.py' in installed
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, '-c', _INSTALLED_PACKAGE_CONVERTS, str(target)], capture_output=True,
                          text=True, cwd=elsewhere, env=dict(os.environ, PYTHONPATH=str(target)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r'converted and loaded \d+ tensors', done.stdout)
