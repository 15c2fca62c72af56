"""`make demo` (efficientformer_timm.mm.demo, run in this process): one picture per validation image, and an
"it learned" check that a barely trained model fails."""
import pytest
from PIL import Image

pytestmark = [pytest.mark.mm, pytest.mark.e2e]


def test_demo_rejects_a_model_trained_for_a_few_iterations(tmp_path, capfd):
    from efficientformer_timm.mm.demo import run_demo
    validation_images = 4
    assert run_demo(str(tmp_path), iters=2, n_train=4, n_val=validation_images, size=128) == 1
    out, err = capfd.readouterr()
    assert 'The models did not learn the task: Mask R-CNN + EfficientFormer-L1: coco/bbox_mAP went from' in err
    assert '; Semantic FPN + EfficientFormer-L1: mIoU went from' in err
    for task, framework in (('detection', 'mmdet'), ('segmentation', 'mmseg')):
        # training started from the very model that was evaluated as the untrained one, as `mim train` would
        assert f'Load checkpoint from {tmp_path / task / "initial.pth"}' in out + err
        assert f' mim train {framework} mm_configs/toy/' in out
        pictures = sorted((tmp_path / task / 'pictures').glob('*.png'))
        assert len(pictures) == validation_images
        with Image.open(pictures[0]) as picture:
            width, height = picture.size
        assert width > 2 * height  # input | ground truth | prediction side by side, a title and a legend
