#!/usr/bin/env python
"""`make demo`: the main job on built-in synthetic data, no downloads.

1. writes a small COCO-format instance set and an ADE20K-layout semantic set (tools/make_synthetic_data.py);
2. trains Mask R-CNN with the EfficientFormer-L1 backbone (mm_configs/toy/maskrcnn_l1_toy.py, inheriting the
   real mm_configs/maskrcnn_l1.py) with `mim train mmdet` on the CPU, evaluates with COCO metrics and checks it
   learned, then draws its detections on a validation image with mmdet's visualizer;
3. does the same for Semantic FPN (`mim train mmseg`, mIoU, mmseg's visualizer).
Outputs go to demo_out/.
"""
import glob
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
OUT = os.path.join(ROOT, 'demo_out')
MIM = shutil.which('mim', path=os.path.dirname(sys.executable)) or 'mim'
sys.path.insert(0, os.path.join(ROOT, 'tools'))

# a run counts as learned when the metric is clearly above what an untrained model scores (~0)
MIN_BBOX_MAP = 0.1
MIN_MIOU = 30.0


def _banner(text):
    print(f'\n=== {text} ===', flush=True)


def _final_metrics(work_dir):
    scalars = sorted(glob.glob(os.path.join(work_dir, '*', 'vis_data', 'scalars.json')))[-1]
    rows = [json.loads(line) for line in open(scalars)]
    return [r for r in rows if 'iter' not in r or 'mIoU' in r or 'coco/bbox_mAP' in r][-1]


def _train(framework, config, env, work_dir):
    """Train with mim; returns the final checkpoint."""
    cmd = [MIM, 'train', framework, config, '--work-dir', work_dir]
    print('$', ' '.join(cmd), flush=True)
    subprocess.run(cmd, env=env, cwd=ROOT, check=True)  # mmengine's log streams progress to the terminal
    with open(os.path.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def detection(env):
    from make_synthetic_data import make_coco
    data = os.path.join(OUT, 'toy_coco') + '/'
    if not os.path.isdir(data):
        make_coco(data, n_train=64, n_val=16, size=256)
    env = dict(env, TOY_COCO_ROOT=data)
    config = os.path.join(ROOT, 'mm_configs', 'toy', 'maskrcnn_l1_toy.py')
    work_dir = os.path.join(OUT, 'maskrcnn_l1')
    _banner('Mask R-CNN + EfficientFormer-L1: training on synthetic COCO (CPU, 300 iterations)')
    checkpoint = _train('mmdet', config, env, work_dir)
    metrics = _final_metrics(work_dir)
    bbox_map, segm_map = metrics['coco/bbox_mAP'], metrics['coco/segm_mAP']

    os.environ['TOY_COCO_ROOT'] = data  # the config reads its data root when parsed
    import mmcv
    from mmdet.apis import inference_detector, init_detector
    from mmdet.visualization import DetLocalVisualizer
    model = init_detector(config, checkpoint, device='cpu')
    image_path = os.path.join(data, 'val2017', '000000.jpg')
    result = inference_detector(model, image_path)
    visualizer = DetLocalVisualizer()
    visualizer.dataset_meta = model.dataset_meta
    picture = os.path.join(OUT, 'maskrcnn_l1_detections.png')
    visualizer.add_datasample('detections', mmcv.imread(image_path, channel_order='rgb'), result,
                              draw_gt=False, show=False, pred_score_thr=0.5, out_file=picture)
    return bbox_map, segm_map, picture


def segmentation(env):
    from make_synthetic_data import make_ade20k
    data = os.path.join(OUT, 'toy_ade20k')
    if not os.path.isdir(data):
        make_ade20k(data, n_train=64, n_val=16, size=256)
    env = dict(env, TOY_ADE20K_ROOT=data)
    config = os.path.join(ROOT, 'mm_configs', 'toy', 'semfpn_l1_ade20k_toy.py')
    work_dir = os.path.join(OUT, 'semfpn_l1')
    _banner('Semantic FPN + EfficientFormer-L1: training on synthetic ADE20K (CPU, 100 iterations)')
    checkpoint = _train('mmseg', config, env, work_dir)
    miou = _final_metrics(work_dir)['mIoU']

    os.environ['TOY_ADE20K_ROOT'] = data
    import mmcv
    from mmseg.apis import inference_model, init_model
    from mmseg.visualization import SegLocalVisualizer
    model = init_model(config, checkpoint, device='cpu')
    image_path = sorted(glob.glob(os.path.join(data, 'images', 'validation', '*.jpg')))[0]
    result = inference_model(model, image_path)
    visualizer = SegLocalVisualizer()
    visualizer.dataset_meta = model.dataset_meta
    picture = os.path.join(OUT, 'semfpn_l1_segmentation.png')
    visualizer.add_datasample('segmentation', mmcv.imread(image_path, channel_order='rgb'), result,
                              draw_gt=False, show=False, out_file=picture)
    return miou, picture


def main():
    os.makedirs(OUT, exist_ok=True)
    # mim and mmengine import pkg_resources: keep its deprecation notice out of the training log
    env = dict(os.environ, PYTHONWARNINGS='ignore:pkg_resources is deprecated')
    bbox_map, segm_map, det_picture = detection(env)
    miou, seg_picture = segmentation(env)
    _banner('Summary (synthetic validation sets)')
    print(f'Mask R-CNN L1:    bbox mAP {bbox_map:.3f}  mask mAP {segm_map:.3f}  -> {det_picture}')
    print(f'Semantic FPN L1:  mIoU {miou:.2f}  -> {seg_picture}')
    failed = []
    if bbox_map < MIN_BBOX_MAP:
        failed.append(f'bbox mAP {bbox_map:.3f} < {MIN_BBOX_MAP}')
    if miou < MIN_MIOU:
        failed.append(f'mIoU {miou:.2f} < {MIN_MIOU}')
    if failed:
        print('The demo models did not learn enough: ' + '; '.join(failed), file=sys.stderr)
        return 1
    print('Both models learned: metrics are clearly above an untrained model\'s (about 0).')
    return 0


if __name__ == '__main__':
    sys.exit(main())
