#!/usr/bin/env python
"""Render the generated parts of README.md and docs/: the models table (parameters and GMACs, measured from the
code), the config list of docs/openmmlab.md (from mm_configs/), and docs/performance.md with the README's
headline figures (from the benchmark runs saved in docs/results/).

    python tools/render_docs.py           # write the pages
    python tools/render_docs.py --check   # exit 1, naming the pages, when a committed page differs

A run joins the performance page when ``tools/benchmark.py ... --json docs/results/NAME.json`` saves it under one
of the names in ``_docs_lib.PERFORMANCE_RUNS`` (beside this script).
"""
import argparse
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--check', action='store_true', help='compare instead of writing')
    args = parser.parse_args(argv)
    from _docs_lib import render
    stale = []
    for page, text in render(ROOT).items():
        path = os.path.join(ROOT, page)
        current = open(path).read() if os.path.exists(path) else None
        if current == text:
            continue
        stale.append(page)
        if not args.check:
            with open(path, 'w') as f:
                f.write(text)
    if args.check and stale:
        print(f'out of date: {", ".join(stale)} (run python tools/render_docs.py)', file=sys.stderr)
        return 1
    print(f'rendered: {", ".join(stale)}' if stale else 'up to date')
    return 0


if __name__ == '__main__':
    sys.exit(main())
