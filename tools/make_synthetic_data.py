#!/usr/bin/env python
"""Small synthetic datasets in the real on-disk formats, for the demo and the end-to-end tests.

    python tools/make_synthetic_data.py coco OUT_DIR [--train N] [--val N] [--size S]
    python tools/make_synthetic_data.py ade20k OUT_DIR [--train N] [--val N] [--size S]

coco: OUT_DIR/{train2017,val2017}/*.jpg and OUT_DIR/annotations/instances_{train,val}2017.json with polygon
masks for three shape classes (square, disc, triangle), each of its own jittered hue, of random size and
position on a noisy grey background. ade20k: OUT_DIR/images/{training,validation}/*.jpg and OUT_DIR/annotations/... *.png uint8 label
maps with ADE20K's convention (0 = "other", reduce_zero_label maps it to 255 and class k to k - 1); the same
shapes are labelled 1, 2 and 3.
"""
import argparse
import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ('square', 'disc', 'triangle')
# each class has its own hue (jittered per shape) on a grey background, so that the class of a pixel is visible
# locally: semantic segmentation learns it in a few hundred CPU iterations, not only box-level detection
CLASS_COLOURS = ((200, 50, 50), (50, 170, 60), (60, 80, 210))


def _shape_polygon(kind: str, cx: float, cy: float, r: float):
    if kind == 'square':
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if kind == 'triangle':
        return [(cx, cy - r), (cx + r * math.sqrt(3) / 2, cy + r / 2), (cx - r * math.sqrt(3) / 2, cy + r / 2)]
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 24, endpoint=False)]


def _scene(rng: np.random.Generator, size: int):
    """A noisy background with 1-4 non-overlapping shapes: (image, [(class_idx, polygon)])."""
    base = rng.integers(90, 170)
    pixels = np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    shapes, placed = [], []
    for _ in range(rng.integers(1, 5)):
        for _attempt in range(20):
            r = float(rng.uniform(size * 0.08, size * 0.2))
            cx, cy = rng.uniform(r + 2, size - r - 2, 2)
            if all(math.hypot(cx - px, cy - py) > r + pr + 4 for px, py, pr in placed):
                break
        else:
            continue
        cls = int(rng.integers(0, len(CLASSES)))
        poly = _shape_polygon(CLASSES[cls], float(cx), float(cy), r)
        colour = np.clip(np.array(CLASS_COLOURS[cls]) + rng.integers(-30, 31, 3), 0, 255)
        draw.polygon(poly, fill=tuple(int(c) for c in colour))
        placed.append((cx, cy, r))
        shapes.append((cls, poly))
    return image, shapes


def make_coco(out_dir: str, n_train: int, n_val: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out_dir, 'annotations'), exist_ok=True)
    for split, count in (('train2017', n_train), ('val2017', n_val)):
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            image, shapes = _scene(rng, size)
            file_name = f'{i:06d}.jpg'
            image.save(os.path.join(out_dir, split, file_name), quality=95)
            images.append(dict(id=i + 1, file_name=file_name, width=size, height=size))
            for cls, poly in shapes:
                xs, ys = [p[0] for p in poly], [p[1] for p in poly]
                area = 0.5 * abs(sum(xs[j] * ys[j - 1] - xs[j - 1] * ys[j] for j in range(len(poly))))
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=i + 1, category_id=cls + 1, iscrowd=0, area=area,
                    bbox=[min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                    segmentation=[[c for p in poly for c in p]]))
        categories = [dict(id=i + 1, name=name, supercategory='shape') for i, name in enumerate(CLASSES)]
        with open(os.path.join(out_dir, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories), f)


def make_ade20k(out_dir: str, n_train: int, n_val: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for split, count in (('training', n_train), ('validation', n_val)):
        os.makedirs(os.path.join(out_dir, 'images', split), exist_ok=True)
        os.makedirs(os.path.join(out_dir, 'annotations', split), exist_ok=True)
        for i in range(count):
            image, shapes = _scene(rng, size)
            label = Image.new('L', (size, size), 0)
            draw = ImageDraw.Draw(label)
            for cls, poly in shapes:
                draw.polygon(poly, fill=cls + 1)
            name = f'ADE_{split[:5]}_{i:08d}'
            image.save(os.path.join(out_dir, 'images', split, name + '.jpg'), quality=95)
            label.save(os.path.join(out_dir, 'annotations', split, name + '.png'))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('kind', choices=('coco', 'ade20k'))
    parser.add_argument('out_dir')
    parser.add_argument('--train', type=int, default=64)
    parser.add_argument('--val', type=int, default=16)
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    make = make_coco if args.kind == 'coco' else make_ade20k
    make(args.out_dir, args.train, args.val, args.size, args.seed)
    print(f'wrote {args.kind} synthetic data to {args.out_dir} ({args.train} train, {args.val} val, {args.size}px)')


if __name__ == '__main__':
    main()
