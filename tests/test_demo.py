"""`make demo` (tools/demo.py): one picture per validation image, and an "it learned" check that a barely trained
model fails."""
import os
import subprocess
import sys

import pytest
from PIL import Image

pytestmark = [pytest.mark.mm, pytest.mark.e2e]

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
VALIDATION_IMAGES = 16


def test_demo_rejects_a_model_trained_for_a_few_iterations(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'demo.py'), '--out', str(tmp_path),
                          '--iters', '5'], cwd=ROOT, capture_output=True, text=True, timeout=1500)
    log = out.stdout + out.stderr
    assert out.returncode == 1, log[-4000:]
    assert 'The models did not learn the task: Mask R-CNN + EfficientFormer-L1: coco/bbox_mAP went from' in out.stderr
    assert '; Semantic FPN + EfficientFormer-L1: mIoU went from' in out.stderr
    for task in ('detection', 'segmentation'):
        # training started from the very model that was evaluated as the untrained one
        assert f'Load checkpoint from {tmp_path / task / "initial.pth"}' in log
        pictures = sorted((tmp_path / task / 'pictures').glob('*.png'))
        assert len(pictures) == VALIDATION_IMAGES
        with Image.open(pictures[0]) as picture:
            width, height = picture.size
        assert width > 2 * height  # input | ground truth | prediction side by side, a title and a legend
