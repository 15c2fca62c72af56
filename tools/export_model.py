#!/usr/bin/env python
"""Export a whole MMSegmentation segmentor or MMDetection detector from its config and checkpoint to one ONNX file,
then check the file in onnxruntime and OpenVINO against the framework's own prediction
(``efficientformer_timm.export_model``).

    python tools/export_model.py CONFIG CHECKPOINT OUTPUT.onnx [--static HxW] [--check-sizes 333x517 512x384]
                                 [--images FILE ...] [--check-runtimes onnxruntime openvino] [--rtol 1e-5]
                                 [--atol 1e-4] [--score-thr T] [--iou-thr T] [--max-per-img N] [--nms-pre N]
                                 [--opset 20]

The file takes ``image``, normalised with the config's data_preprocessor (mean / std of 0-255 pixel values, in the
channel order printed). A segmentor's file takes a batch (B, 3, H, W) and returns ``logits`` (B, classes, H, W) at
the input size and ``class_map`` (B, H, W), their argmax. A detector's file (RetinaNet, Mask R-CNN) takes
one image (1, 3, H, W) and returns ``boxes`` (N, 4: x1 y1 x2 y2 in input pixels), ``scores`` (N) and ``labels``
(N) after the score threshold and NMS, and for Mask R-CNN ``masks`` (N, H, W, bool) at the input size; its
test-time settings are the config's ``test_cfg``, overridden by ``--score-thr``, ``--iou-thr``, ``--max-per-img``
and ``--nms-pre`` (single-stage heads). H and W are dynamic; ``--static HxW`` makes a file for that size only.
CHECKPOINT is an mmengine checkpoint of CONFIG. The file is checked on random images at each check size, or on
``--images`` (resized to each check size), and written only when in every runtime the logits match within the
tolerance and the class maps agree on 99.9% of the pixels, or every detection above the score threshold matches one
of mmdet's (same label, box IoU >= 0.99, score within 1e-3, masks with IoU >= 0.99 or equal on 99.9% of the pixels).
"""
import argparse
import sys

from efficientformer_timm import CheckpointError
from efficientformer_timm._validate import MIN_INPUT_SIZE
from efficientformer_timm.checkpoint import atomic_output
from efficientformer_timm.export import ATOL, RTOL, RUNTIMES

from _cli import parse_size


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='an mmseg or mmdet config file, e.g. mm_configs/semfpn_l1_ade20k.py')
    parser.add_argument('checkpoint', help="the trained model: an mmengine checkpoint of the config, or the authors'")
    parser.add_argument('output', help='the .onnx file to write')
    parser.add_argument('--static', type=parse_size, metavar='HxW', help='a file for this input size only')
    parser.add_argument('--check-sizes', type=parse_size, nargs='+', metavar='HxW',
                        default=[parse_size(s) for s in ('333x517', '512x384')],
                        help='sizes the file is checked at (default: 333x517 512x384; with --static: that size)')
    parser.add_argument('--images', nargs='*', metavar='FILE',
                        help='image files to check on (resized to each check size; default: random images)')
    parser.add_argument('--check-runtimes', nargs='+', default=list(RUNTIMES), choices=RUNTIMES,
                        help='runtimes the file is checked in (default: both)')
    parser.add_argument('--rtol', type=float, default=RTOL,
                        help="accepted logits difference relative to their largest magnitude (default: %(default)s)")
    parser.add_argument('--atol', type=float, default=ATOL,
                        help='accepted absolute logits difference on top (default: %(default)s)')
    parser.add_argument('--score-thr', type=float, help="detectors: the score threshold (default: the config's)")
    parser.add_argument('--iou-thr', type=float, help="detectors: the NMS IoU threshold (default: the config's)")
    parser.add_argument('--max-per-img', type=int, help="detectors: the most detections kept (default: the config's)")
    parser.add_argument('--nms-pre', type=int,
                        help="single-stage detectors: candidates kept per level before NMS (default: the config's)")
    parser.add_argument('--opset', type=int, default=20, help='ONNX opset')
    args = parser.parse_args(argv)
    if args.static:
        if args.check_sizes != parser.get_default('check_sizes') and args.check_sizes != [args.static]:
            parser.error('--static: the file runs at that size only; leave out --check-sizes')
        args.check_sizes = [args.static]
    small = [f'{h}x{w}' for h, w in args.check_sizes + [args.static or (MIN_INPUT_SIZE,) * 2]
             if min(h, w) < MIN_INPUT_SIZE]
    if small:
        parser.error(f'sizes {" ".join(small)}: at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}')

    overrides = dict(score_thr=args.score_thr, iou_thr=args.iou_thr, max_per_img=args.max_per_img,
                     nms_pre=args.nms_pre)
    from efficientformer_timm.export_model import (
        ExportCheckError, check_detector, check_segmentor, export_detector, export_segmentor, load_mm_model,
        normalised_image, preprocessing, random_images)
    try:
        if args.images is not None and not args.images:
            raise ValueError('--images names no files: give at least one image file, or leave --images out to '
                             'check on random images')
        cfg, model = load_mm_model(args.config, args.checkpoint, scopes=('mmseg', 'mmdet'))
        detector = cfg.default_scope == 'mmdet'
        given = [f'--{k.replace("_", "-")}' for k, v in overrides.items() if v is not None]
        if given and not detector:
            raise ValueError(f'{" ".join(given)}: detector settings, and {args.config} is a segmentor')
        backbone = type(getattr(model, 'backbone', None)).__name__
        if backbone != 'EfficientFormerBackbone':
            print(f'note: the backbone is {backbone}, not EfficientFormer: exported and checked the same way')
        pre = preprocessing(cfg)
        if args.images:
            images = [normalised_image(path, size, **pre) for size in args.check_sizes for path in args.images]
        else:
            images = random_images(args.check_sizes, batch=1 if detector else 2)
        with atomic_output(args.output, inputs=(args.checkpoint, args.config)) as tmp:
            if detector:
                wrapper = export_detector(model, tmp, args.static, args.opset, **overrides)
                for row in check_detector(wrapper, tmp, images, args.check_runtimes):
                    masks = (f', worst mask IoU {row["mask_iou"]:.4f} (pixels equal {row["mask_agreement"]:.4%})'
                             if 'mask_iou' in row else '')
                    print(f'{row["runtime"]} {row["size"]}: {row["matched"]} of {row["detections"]} mmdet detections '
                          f'matched ({row["file"]} in the file), worst box IoU {row["box_iou"]:.4f}, score difference '
                          f'{row["score_diff"]:.1e}{masks}')
            else:
                wrapper = export_segmentor(model, tmp, args.static, args.opset)
                rows = check_segmentor(wrapper, tmp, images, args.check_runtimes, rtol=args.rtol, atol=args.atol)
                for row in rows:
                    print(f'{row["runtime"]} {row["size"]}: max |logits - {wrapper.framework}| = '
                          f'{row["logits_diff"]:.2e} ({row["logits_share"]:.2g} of the tolerance), class maps equal '
                          f'on {row["agreement"]:.4%}')
    except ExportCheckError as e:
        print(f'error: {e}; {args.output} not written', file=sys.stderr)
        return 1
    except (CheckpointError, FileNotFoundError, ValueError, TypeError, ImportError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    shape = f'{args.static[0]}x{args.static[1]} inputs' if args.static else 'any input size'
    if detector:
        settings = ', '.join(f'{k} {v}' for k, v in wrapper.settings().items())
        print(f'wrote {args.output} ({shape}, one image per run; outputs {" ".join(wrapper.output_names)}; '
              f'{settings})', end='')
    else:
        print(f'wrote {args.output} ({shape}, dynamic batch)', end='')
    print(f'; input: {pre["channels"]} pixels, (x - mean) / std with mean {pre["mean"]}, std {pre["std"]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
