#!/usr/bin/env python
"""Parameters and GMACs of the seven models, counted with torch.utils.flop_counter (MACs = FLOPs / 2), with timm's
published top-1: the models table of the README (``tools/render_docs.py`` writes it there).

    python tools/model_table.py

Classification model at 224x224 (params include both heads), features_only backbone at 224x224 and 800x1333
(params without heads).
"""
import argparse


def main(argv=None):
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    from _docs_lib import models_table
    print(models_table(), end='')


if __name__ == '__main__':
    main()
