"""Whole segmentors exported to ONNX: the files run in onnxruntime and OpenVINO and compute what the framework's own
prediction computes, at sizes other than the one they were traced at; the tool writes a checked file or nothing."""
import contextlib
import importlib.metadata
import io
import os
import re

import numpy as np
import pytest
import torch
from torch import nn

from efficientformer_timm.export_model import (
    ExportCheckError, ExportedModel, ShapeAdaptiveAvgPool2d, ShapeUpsample, check_segmentor, export_segmentor,
    random_images)
from helpers import made_once, randomize_

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
TOY_SEMFPN = os.path.join(ROOT, 'mm_configs', 'toy', 'semfpn_l1_toy.py')
BOTH = ('onnxruntime', 'openvino')


def _run_tool(*args):
    """tools/export_model.py's main in this process: (exit status, stdout, stderr)."""
    import runpy
    main = runpy.run_path(os.path.join(ROOT, 'tools', 'export_model.py'))['main']
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's own errors
            code = e.code
    return code, out.getvalue(), err.getvalue()


def _random_checkpoint(config, path, seed=0):
    from efficientformer_timm.export_model import load_mm_model
    _, model = load_mm_model(config)
    torch.save({'state_dict': randomize_(model, seed).state_dict()}, path)


def _make_semfpn(folder):
    """The toy Semantic FPN with random weights, exported by the tool and checked at two sizes it was not traced
    at; the tool's output kept beside the file."""
    folder.mkdir()
    _random_checkpoint(TOY_SEMFPN, folder / 'semfpn.pth')
    code, out, err = _run_tool(TOY_SEMFPN, folder / 'semfpn.pth', folder / 'semfpn.onnx',
                               '--check-sizes', '129x161', '192x256')
    assert code == 0, err
    (folder / 'stdout.txt').write_text(out)


@pytest.fixture(scope='session')
def semfpn(tmp_path_factory):
    return made_once(tmp_path_factory, 'export_model_semfpn', _make_semfpn)


def _mmseg_model(folder):
    from efficientformer_timm.export_model import load_mm_model
    return load_mm_model(TOY_SEMFPN, str(folder / 'semfpn.pth'))[1]


@pytest.mark.mm
def test_semfpn_tool_writes_a_file_that_matches_mmseg_at_any_size(semfpn):
    out = (semfpn / 'stdout.txt').read_text()
    for runtime in BOTH:
        for size in ('129x161', '192x256'):
            assert re.search(rf'^{runtime} {size}: max \|logits - mmseg\| = \S+ \(\S+ of the tolerance\), class maps '
                             r'equal on 100\.0000%$', out, re.MULTILINE), out
    assert re.search(r'^wrote .*semfpn\.onnx \(any input size, dynamic batch\); input: RGB pixels, \(x - mean\) / '
                     r'std with mean \[123\.675, 116\.28, 103\.53\], std \[58\.395, 57\.12, 57\.375\]$', out, re.M)
    # a third size and batch, against mmseg's own predict, outside the tool's check
    model = _mmseg_model(semfpn)
    x = torch.randn(3, 3, 97, 333)
    with torch.no_grad():
        samples = model.predict(x)
    got = ExportedModel(str(semfpn / 'semfpn.onnx'))(x)
    assert got['logits'].shape == (3, 4, 97, 333) and got['class_map'].shape == (3, 97, 333)
    expected = torch.stack([s.seg_logits.data for s in samples])
    torch.testing.assert_close(torch.from_numpy(got['logits']), expected, rtol=0, atol=1e-4 * expected.abs().max())
    assert (torch.from_numpy(got['class_map']) == torch.stack([s.pred_sem_seg.data[0] for s in samples])).all()


@pytest.mark.mm
def test_shape_modules_compute_what_mmseg_upsample_and_adaptive_pooling_compute():
    """The replacements compute what the originals compute at every size; exported with dynamic H, W, mmseg's
    Upsample keeps the export size's output (the trap), the replacement follows the input."""
    from mmseg.models.utils import Upsample
    original = Upsample(scale_factor=2, mode='bilinear', align_corners=False)
    replaced = ShapeUpsample(original)
    for size in [(5, 7), (8, 10), (13, 4)]:
        x = torch.randn(2, 3, *size)
        torch.testing.assert_close(replaced(x), original(x), rtol=0, atol=0)
        for bins in [1, 2, 3, 6, (2, 5), (None, 3)]:
            pool = nn.AdaptiveAvgPool2d(bins)
            torch.testing.assert_close(ShapeAdaptiveAvgPool2d(bins)(x), pool(x), rtol=0, atol=1e-6)
    dims = {'x': {2: torch.export.Dim('h', min=4), 3: torch.export.Dim('w', min=4)}}
    example, other = torch.randn(1, 3, 8, 10), torch.randn(1, 3, 5, 7)
    exported = torch.export.export(replaced, (example,), dynamic_shapes=dims).module()
    torch.testing.assert_close(exported(other), original(other), rtol=0, atol=1e-6)
    # mmseg's int() sizes are no function of the input in a graph: the exporter can only specialise them
    with pytest.raises(torch._dynamo.exc.UserError, match=r'Constraints violated[\s\S]*math\.trunc'):
        torch.export.export(original, (example,), dynamic_shapes=dims)


@pytest.mark.mm
def test_check_names_the_output_that_differs_and_needs_images(semfpn):
    model = _mmseg_model(semfpn)
    from efficientformer_timm.export_model import SegmentationExport
    wrapper = SegmentationExport(model)
    images = random_images([(96, 128)], batch=1)
    assert check_segmentor(wrapper, str(semfpn / 'semfpn.onnx'), images, ['onnxruntime'])[0]['logits_share'] <= 1
    with torch.no_grad():
        model.decode_head.conv_seg.bias.add_(0.01)  # a model the file was not made from
    with pytest.raises(ExportCheckError, match=r'logits differ in onnxruntime at 96x128: max \|onnxruntime - '
                                               r'framework\| = 0\.01'):
        check_segmentor(wrapper, str(semfpn / 'semfpn.onnx'), images, ['onnxruntime'])
    with pytest.raises(ValueError, match='no images to check the exported file on'):
        check_segmentor(wrapper, str(semfpn / 'semfpn.onnx'), [], ['onnxruntime'])


@pytest.mark.mm
def test_tool_refuses_bad_input_and_leaves_nothing(semfpn, tmp_path):
    upernet = os.path.join(ROOT, 'mm_configs', 'upernet_l1_ade20k.py')
    classifier = tmp_path / 'classifier.py'
    classifier.write_text("default_scope = 'mmpretrain'\nmodel = dict(type='ImageClassifier')\n")
    out = tmp_path / 'model.onnx'
    ckpt = semfpn / 'semfpn.pth'
    cases = [
        ((upernet, ckpt, out), r'error: \S+semfpn\.pth is not a checkpoint of \S+upernet_l1_ade20k\.py: tensors \d+ '
                               r'missing, e\.g\. .*; \d+ unexpected, e\.g\. '),
        ((TOY_SEMFPN, ckpt, out, '--images'), 'error: --images names no files: give at least one image file'),
        ((TOY_SEMFPN, tmp_path / 'none.pth', out), r'error: checkpoint \S+none\.pth not found'),
        ((os.path.join(ROOT, 'mm_configs', 'retinanet_l1.py'), ckpt, out),
         r'error: \S+semfpn\.pth is not a checkpoint of \S+retinanet_l1\.py: tensors \d+ missing'),
        ((classifier, ckpt, out),
         r"error: \S+classifier\.py: an mmpretrain config \(default_scope 'mmpretrain'\); this exports mmseg and "
         r'mmdet models'),
        ((TOY_SEMFPN, ckpt, out, '--score-thr', '0.5', '--max-per-img', '10'),
         r'error: --score-thr --max-per-img: detector settings, and \S+semfpn_l1_toy\.py is a segmentor'),
        ((TOY_SEMFPN, ckpt, ckpt), 'error: refusing to overwrite the input'),
    ]
    for args, message in cases:
        code, _, err = _run_tool(*args)
        assert code == 1 and re.search(message, err), (args, err)
    code, _, err = _run_tool(TOY_SEMFPN, ckpt, out, '--static', '128x160', '--check-sizes', '192x256')
    assert code == 2 and '--static: the file runs at that size only' in err
    classifier.unlink()
    assert os.listdir(tmp_path) == []


# UperNet on a narrow ResNet-18: a config without an EfficientFormer backbone, exported the same way
RESNET_UPERNET = """
_base_ = ['mmseg::_base_/models/upernet_r50.py', 'mmseg::_base_/default_runtime.py']
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    pretrained=None,
    backbone=dict(depth=18, base_channels=8, stem_channels=8, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=[8, 16, 32, 64], channels=16, num_classes=3, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=32, channels=8, num_classes=3, norm_cfg=norm_cfg))
"""


@pytest.mark.mm
def test_upernet_pooling_checked_at_two_sizes_and_a_static_file(tmp_path):
    """UperNet's pyramid pooling (adaptive pooling to 1, 2, 3, 6 bins) at sizes whose maps do not divide into its
    bins, in both runtimes; a static file for one size refuses others."""
    config = tmp_path / 'upernet_r18.py'
    config.write_text(RESNET_UPERNET)
    _random_checkpoint(str(config), tmp_path / 'upernet.pth')
    code, out, err = _run_tool(config, tmp_path / 'upernet.pth', tmp_path / 'upernet.onnx',
                               '--check-sizes', '200x264', '129x161')
    assert code == 0, err
    assert out.startswith('note: the backbone is ResNetV1c, not EfficientFormer: exported and checked the same way')
    assert len(re.findall(r'^(onnxruntime|openvino) (200x264|129x161): max \|logits - mmseg\| = \S+ \(\S+ of the '
                          r'tolerance\), class maps equal on 100\.0000%$', out, re.M)) == 4, out
    code, out, err = _run_tool(config, tmp_path / 'upernet.pth', tmp_path / 'static.onnx', '--static', '128x160',
                               '--check-runtimes', 'onnxruntime')
    assert code == 0 and 'wrote' in out and '(128x160 inputs, dynamic batch)' in out, err
    for runtime in BOTH:
        with pytest.raises(ValueError, match=r'static\.onnx was exported for 128x160 inputs only \(static\), '
                                             r'got 129x161'):
            ExportedModel(str(tmp_path / 'static.onnx'), runtime)(torch.randn(1, 3, 129, 161))


def test_smp_model_exports_at_any_multiple_of_its_stride(tmp_path):
    """smp's FPN on a `tu-` encoder: dynamic H, W in multiples of its output stride, checked against smp's
    predict in both runtimes at two sizes; other sizes refused."""
    import segmentation_models_pytorch as smp  # the test extra: a missing one fails
    # the encoder's timm arguments pass through: L1 with one block of each kind, a shorter trace
    model = randomize_(smp.FPN('tu-efficientformer_l1', encoder_weights=None, classes=3, depths=(1, 1, 1, 2),
                               num_vit=1)).eval()
    blocks = [type(m).__name__ for m in model.encoder.modules() if 'MetaBlock' in type(m).__name__]
    assert sorted(blocks) == ['GridMetaBlock2d'] * 4 + ['MetaBlock1d']
    with pytest.raises(ValueError, match='this model needs H and W multiples of 32'):
        export_segmentor(model, str(tmp_path / 'never.onnx'), static_size=(100, 160))
    path = str(tmp_path / 'fpn.onnx')
    wrapper = export_segmentor(model, path)
    rows = check_segmentor(wrapper, path, random_images([(160, 224), (96, 320)]), BOTH)
    assert [(r['runtime'], r['size']) for r in rows] == [(rt, s) for rt in BOTH for s in ('160x224', '96x320')]
    assert all(r['logits_share'] <= 1 and r['agreement'] >= 0.999 for r in rows)
    assert os.listdir(tmp_path) == ['fpn.onnx']


def _transformers_major():
    try:
        return int(importlib.metadata.version('transformers').split('.')[0])
    except importlib.metadata.PackageNotFoundError:
        return None


@pytest.mark.hf
@pytest.mark.skipif(_transformers_major() != 5, reason='needs transformers 5 (the hf extra)')
def test_transformers_upernet_on_the_package_backbone_exports(tmp_path):
    from transformers import UperNetConfig, UperNetForSemanticSegmentation
    import efficientformer_timm.hf as hf
    backbone = hf.EfficientFormerConfig(depths=[1, 1, 1, 2], hidden_sizes=[16, 32, 48, 64], dim=64, key_dim=8,
                                        num_attention_heads=2, num_meta3d_blocks=1,
                                        out_features=['stage1', 'stage2', 'stage3', 'stage4'])
    model = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone, hidden_size=32,
                                                         auxiliary_channels=16, num_labels=5))
    randomize_(model).eval()
    path = str(tmp_path / 'upernet.onnx')
    wrapper = export_segmentor(model, path)
    rows = check_segmentor(wrapper, path, random_images([(200, 264), (129, 161)]), BOTH)
    assert len(rows) == 4 and all(r['logits_share'] <= 1 and r['agreement'] >= 0.999 for r in rows)
    assert np.array_equal(ExportedModel(path)(torch.zeros(1, 3, 64, 64))['class_map'].shape, (1, 64, 64))


@pytest.mark.mm
def test_deploy_page_segmentation_snippet_runs_as_written(semfpn, tmp_path, capsys, monkeypatch):
    """docs/deploy.md's snippet (an image file to the normalised input, classes and their picture), on the shared
    file and a picture made here, gives mmseg's prediction for that input."""
    from PIL import Image
    page = open(os.path.join(ROOT, 'docs', 'deploy.md')).read()
    block = re.search(r'## Whole segmentors\n.*?```python\n(.*?)```', page, re.S).group(1)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(
        tmp_path / 'room.jpg')
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(block.replace('"semfpn.onnx"', repr(str(semfpn / 'semfpn.onnx'))), namespace)
    assert capsys.readouterr().out.startswith('(1, 4, 480, 640) (1, 480, 640) [')
    assert Image.open(tmp_path / 'room_classes.png').size == (640, 480)
    with torch.no_grad():
        sample = _mmseg_model(semfpn).predict(torch.from_numpy(namespace['x']))[0]
    assert (torch.from_numpy(namespace['class_map'][0]) == sample.pred_sem_seg.data[0]).float().mean() >= 0.999


# Detectors: RetinaNet L1 with a narrow neck and head, and the toy Mask R-CNN L1, random weights, exported once each
TOY_RETINANET = f"""
_base_ = [{os.path.join(ROOT, 'mm_configs', 'retinanet_l1.py')!r}]
model = dict(backbone=dict(init_cfg=None), neck=dict(out_channels=32),
             bbox_head=dict(in_channels=32, feat_channels=32, stacked_convs=1, num_classes=3))
"""
TOY_MASKRCNN = os.path.join(ROOT, 'mm_configs', 'toy', 'maskrcnn_l1_toy.py')
DETECTION_ROW = (r'^(onnxruntime|openvino) (96x128|160x224): (\d+) of (\d+) mmdet detections matched \((\d+) in the '
                 r'file\), worst box IoU (\S+), score difference (\S+)')


def _detection_rows(out, masks=False):
    rows = re.findall(DETECTION_ROW + (r', worst mask IoU (\S+) \(pixels equal (\S+)%\)$' if masks else '$'), out,
                      re.M)
    assert [(r[0], r[1]) for r in rows] == [(rt, s) for rt in BOTH for s in ('96x128', '160x224')], out
    for row in rows:
        matched, detections, in_file = map(int, row[2:5])
        assert 0 < matched == detections == in_file, out
        assert float(row[5]) >= 0.99 and float(row[6]) <= 1e-3, out
        # a small mask's IoU is decided by a pixel or two: IoU >= 0.99 or 99.9% of the pixels equal
        assert not masks or float(row[7]) >= 0.99 or float(row[8]) >= 99.9, out
    return rows


def _make_detector(folder, config, *flags, scale=None):
    """A detector config with random weights (``scale``: factors for the named layers' weights, so that random
    scores spread out instead of saturating at one and random mask probabilities stay clear of the threshold),
    exported by the tool with ``flags`` and checked at 96x128 and
    160x224; the tool's output kept beside the file."""
    from efficientformer_timm.export_model import load_mm_model
    folder.mkdir()
    _, model = load_mm_model(str(config), scopes=('mmdet',))
    randomize_(model)
    with torch.no_grad():
        for name, factor in (scale or {}).items():
            model.get_submodule(name).weight.mul_(factor)
    torch.save({'state_dict': model.state_dict()}, folder / 'model.pth')
    code, out, err = _run_tool(config, folder / 'model.pth', folder / 'model.onnx', '--check-sizes', '96x128',
                               '160x224', *flags)
    assert code == 0, err
    (folder / 'stdout.txt').write_text(out)


def _make_retinanet(folder):
    folder.mkdir()
    (folder / 'retinanet.py').write_text(TOY_RETINANET)
    _make_detector(folder / 'made', folder / 'retinanet.py', '--score-thr', '0.9')


@pytest.fixture(scope='session')
def retinanet(tmp_path_factory):
    return made_once(tmp_path_factory, 'export_model_retinanet', _make_retinanet)


@pytest.fixture(scope='session')
def maskrcnn(tmp_path_factory):
    return made_once(tmp_path_factory, 'export_model_maskrcnn', lambda folder: _make_detector(
        folder, TOY_MASKRCNN, '--score-thr', '0.55', scale={'roi_head.bbox_head.fc_cls': 0.2,
                                                            'roi_head.bbox_head.fc_reg': 0.2,
                                                            'roi_head.mask_head.conv_logits': 5}))


def _mmdet_wrapper(config, folder, **settings):
    from efficientformer_timm.export_model import DetectionExport, load_mm_model
    return DetectionExport(load_mm_model(str(config), str(folder / 'model.pth'), scopes=('mmdet',))[1], **settings)


@pytest.mark.mm
def test_retinanet_tool_writes_a_file_that_matches_mmdet_predict_at_any_size(retinanet):
    """Every detection of mmdet's predict above the threshold matched one to one in both runtimes at two sizes
    the file was not traced at, with the config's test settings and the threshold given on the command line."""
    out = (retinanet / 'made' / 'stdout.txt').read_text()
    _detection_rows(out)
    assert re.search(r'^wrote \S+model\.onnx \(any input size, one image per run; outputs boxes scores labels; '
                     r'score_thr 0\.9, max_per_img 100, nms_pre 1000, iou_thr 0\.5\); input: RGB pixels', out, re.M)
    # a third size, against mmdet's own predict, outside the tool's check: the file's outputs as documented
    wrapper = _mmdet_wrapper(retinanet / 'retinanet.py', retinanet / 'made', score_thr=0.9)
    x = torch.randn(1, 3, 112, 200, generator=torch.Generator().manual_seed(3))
    got = ExportedModel(str(retinanet / 'made' / 'model.onnx'))(x)
    expected = wrapper.reference(x)
    assert len(expected['scores']) > 0 and got['boxes'].shape == (len(expected['scores']), 4)
    assert got['labels'].dtype == np.int64 and got['scores'].dtype == np.float32
    order = np.argsort(-got['scores'], kind='stable')
    assert np.allclose(got['scores'][order], expected['scores'].numpy(), atol=1e-4)
    assert (got['scores'] > 0.9).all() and (got['boxes'][:, 2:] <= [200, 112]).all() and (got['boxes'] >= 0).all()


@pytest.mark.mm
def test_check_detector_names_the_detection_that_differs_and_needs_images(retinanet):
    from efficientformer_timm.export_model import check_detector
    path = str(retinanet / 'made' / 'model.onnx')
    wrapper = _mmdet_wrapper(retinanet / 'retinanet.py', retinanet / 'made', score_thr=0.9)
    images = random_images([(96, 128)], batch=1)
    assert check_detector(wrapper, path, images, ['onnxruntime'])[0]['matched'] > 0
    with pytest.raises(ValueError, match='no images to check the exported file on'):
        check_detector(wrapper, path, [], ['onnxruntime'])
    with torch.no_grad():  # a model the file was not made from: every score moves
        wrapper.model.bbox_head.retina_cls.bias.add_(0.05)
    message = (r'detections differ in onnxruntime at 96x128 \(image 0\): a detection of the framework \(label \d, '
               r'score 0\.9\d+, box \[.*\]\) has no match in the file \(same label, box IoU >= 0\.99 or corners within '
               r'0\.05 px, score within 0\.001\): the nearest of label \d there has box IoU ')
    with pytest.raises(ExportCheckError, match=message):
        check_detector(wrapper, path, images, ['onnxruntime'])


@pytest.mark.mm
def test_maskrcnn_tool_writes_boxes_and_masks_that_match_mmdet_predict(maskrcnn):
    out = (maskrcnn / 'stdout.txt').read_text()
    _detection_rows(out, masks=True)
    assert re.search(r'^wrote \S+model\.onnx \(any input size, one image per run; outputs boxes scores labels masks; '
                     r'score_thr 0\.55, max_per_img 100, mask_thr_binary 0\.5, iou_thr 0\.5\)', out, re.M), out
    wrapper = _mmdet_wrapper(TOY_MASKRCNN, maskrcnn, score_thr=0.55)
    x = torch.randn(1, 3, 112, 200, generator=torch.Generator().manual_seed(3))
    got = ExportedModel(str(maskrcnn / 'model.onnx'), 'openvino')(x)
    expected = wrapper.reference(x)
    assert got['masks'].dtype == np.bool_ and got['masks'].shape == (len(expected['scores']), 112, 200)
    assert 0 < got['masks'].sum() and len(expected['scores']) > 0
    order = np.argsort(-got['scores'], kind='stable')
    assert np.allclose(got['scores'][order], expected['scores'].numpy(), atol=1e-4)
    agreement = (torch.from_numpy(got['masks'][order]) == expected['masks']).double().mean()
    assert agreement >= 0.999


@pytest.mark.mm
def test_detector_tool_refuses_bad_input_and_leaves_nothing(retinanet, semfpn, tmp_path):
    out = tmp_path / 'model.onnx'
    cases = [
        ((retinanet / 'retinanet.py', semfpn / 'semfpn.pth', out),
         r'error: \S+semfpn\.pth is not a checkpoint of \S+retinanet\.py: tensors \d+ missing'),
        ((TOY_MASKRCNN, retinanet / 'made' / 'model.pth', out),
         r'error: \S+model\.pth is not a checkpoint of \S+maskrcnn_l1_toy\.py: tensors \d+ missing'),
        ((TOY_MASKRCNN, tmp_path / 'none.pth', out), r'error: checkpoint \S+none\.pth not found'),
        ((retinanet / 'retinanet.py', retinanet / 'made' / 'model.pth', out, '--images'),
         'error: --images names no files'),
    ]
    for args, message in cases:
        code, _, err = _run_tool(*args)
        assert code == 1 and re.search(message, err), (args, err)
    assert os.listdir(tmp_path) == []
    from efficientformer_timm.export_model import DetectionExport, load_mm_model
    with pytest.raises(ValueError, match='nms_pre: a two-stage detector takes it in its RPN settings'):
        DetectionExport(load_mm_model(TOY_MASKRCNN, scopes=('mmdet',))[1], nms_pre=100)
    for runtime in BOTH:  # one image per run
        with pytest.raises(ValueError, match=r'model\.onnx takes batches of 1 image\(s\), got 2'):
            ExportedModel(str(retinanet / 'made' / 'model.onnx'), runtime)(torch.randn(2, 3, 96, 128))


@pytest.mark.mm
def test_deploy_page_detection_snippet_runs_as_written(retinanet, tmp_path, capsys, monkeypatch):
    """docs/deploy.md's detection snippet (an image file to the padded normalised input, boxes drawn), on the shared
    RetinaNet file at a small test scale, gives mmdet's detections for that input."""
    from PIL import Image
    page = open(os.path.join(ROOT, 'docs', 'deploy.md')).read()
    block = re.search(r'## Whole detectors\n.*?```python\n(.*?)```', page, re.S).group(1)
    assert 'height = 800 ' in block
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(
        tmp_path / 'street.jpg')
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(block.replace('"retinanet.onnx"', repr(str(retinanet / 'made' / 'model.onnx')))
         .replace('height = 800 ', 'height = 100 '), namespace)
    assert namespace['x'].shape == (1, 3, 128, 160)  # 100x133 padded to multiples of 32
    assert Image.open(tmp_path / 'street_detections.png').size == (133, 100)
    wrapper = _mmdet_wrapper(retinanet / 'retinanet.py', retinanet / 'made', score_thr=0.9)
    expected = wrapper.reference(torch.from_numpy(namespace['x']))
    assert capsys.readouterr().out == f'{len(expected["scores"])} detections\n'
    assert np.allclose(np.sort(namespace['scores'])[::-1], expected['scores'].numpy(), atol=1e-4)


def test_torchvision_retinanet_on_the_package_backbone_exports(tmp_path):
    """torchvision's RetinaNet on efficientformer_fpn_backbone (narrow FPN, random weights): the file, given the
    image as the model's transform hands it on, matches torchvision's own forward one to one in both runtimes at
    two sizes other than the traced one, one of them no multiple of 32 (the padding is in the graph)."""
    from torchvision.models.detection import MaskRCNN, RetinaNet
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from efficientformer_timm.export_model import check_detector, export_torchvision_detector
    from efficientformer_timm.torchvision import efficientformer_fpn_backbone

    def backbone(**kwargs):  # L1 with one block of each kind: a shorter trace, every module type
        return efficientformer_fpn_backbone('efficientformer_l1', out_channels=32, depths=(1, 1, 1, 2), num_vit=1,
                                            **kwargs)

    with pytest.raises(TypeError, match="MaskRCNN .*: of torchvision's detectors only RetinaNet exports"):
        export_torchvision_detector(MaskRCNN(backbone(), num_classes=3).eval(), str(tmp_path / 'never.onnx'))
    model = randomize_(RetinaNet(backbone(returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(32, 32)),
                                 num_classes=3)).eval()
    with torch.no_grad():  # random scores spread out rather than saturating at one; boxes of a sensible size
        model.head.classification_head.cls_logits.weight.mul_(0.1)
        model.head.regression_head.bbox_reg.weight.mul_(0.2)
    path = str(tmp_path / 'retinanet.onnx')
    wrapper = export_torchvision_detector(model, path, score_thr=0.7, max_per_img=150)
    assert wrapper.settings() == dict(score_thr=0.7, max_per_img=150, nms_pre=1000, iou_thr=0.5)
    rows = check_detector(wrapper, path, random_images([(96, 128), (100, 150)], batch=1), BOTH)
    assert [(r['runtime'], r['size']) for r in rows] == [(rt, s) for rt in BOTH for s in ('96x128', '100x150')]
    assert all(0 < r['matched'] == r['detections'] == r['file'] for r in rows), rows
    assert all(r['box_iou'] >= 0.99 and r['score_diff'] <= 1e-3 for r in rows), rows
    assert os.listdir(tmp_path) == ['retinanet.onnx']
