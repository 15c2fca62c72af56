#!/usr/bin/env python
"""Run timm's own model tests for the seven EfficientFormer models with this package imported.

The tests are timm's ``tests/test_models.py`` from the source distribution of the installed timm version
(``tools/setup_env.sh`` fetches it into ``~/.cache/efficientformer-timm/timm-src``; ``EFT_CACHE`` moves it).
``pytest -p efficientformer_timm`` imports the package before collection, so every test runs on this package's
models, as a timm user's program would. Tests that need the network are deselected, each with its reason.

    python tools/run_timm_tests.py [extra pytest arguments]
"""
import argparse
import importlib.metadata
import os
import subprocess
import sys

# test name -> why it cannot run here
NEEDS_NETWORK = {
    'test_model_load_pretrained': "downloads timm's published weights from the Hugging Face hub",
}


def timm_source_dir() -> str:
    version = importlib.metadata.version('timm')
    cache = os.environ.get('EFT_CACHE', os.path.expanduser('~/.cache/efficientformer-timm'))
    path = os.path.join(cache, 'timm-src', f'timm-{version}')
    if not os.path.isfile(os.path.join(path, 'tests', 'test_models.py')):
        sys.exit(f'timm {version} tests not found in {path}: run tools/setup_env.sh (make test does), or '
                 f'`pip download --no-deps --no-binary :all: timm=={version}` and unpack it there')
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    extra_args = parser.parse_known_args(argv)[1]  # the rest goes to pytest
    source = timm_source_dir()
    for test, reason in NEEDS_NETWORK.items():
        print(f'deselected {test}: {reason}')
    selection = ' and '.join(['efficientformer'] + [f'not {test}' for test in NEEDS_NETWORK])
    command = [sys.executable, '-m', 'pytest', '-p', 'efficientformer_timm', 'tests/test_models.py',
               '-k', selection, '-q', '-p', 'no:cacheprovider', *extra_args]
    print(f'timm {importlib.metadata.version("timm")} in {source}:', ' '.join(command[1:]), flush=True)
    return subprocess.call(command, cwd=source)


if __name__ == '__main__':
    sys.exit(main())
