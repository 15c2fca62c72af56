"""Packaging: requirements are ranges whose lower bounds are the verified stack, and installing the package into
an environment that has its dependencies (any newer torch) installs nothing but the package."""
import configparser
import json
import os
import re
import subprocess
import sys

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
