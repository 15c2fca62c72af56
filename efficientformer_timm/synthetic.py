"""Small synthetic datasets in the real on-disk formats, for the demo, the end-to-end tests and trying a config
without downloading COCO or ADE20K (``tools/make_synthetic_data.py`` is the command line).

``make_coco(out_dir, ...)``: OUT_DIR/{train2017,val2017}/*.jpg and OUT_DIR/annotations/instances_{train,val}2017.json
with polygon masks for three shape classes (square, disc, triangle). ``make_ade20k(out_dir, ...)``: the ADE20K
folder layout, OUT_DIR/images/{training,validation}/*.jpg and OUT_DIR/annotations/{training,validation}/*.png, with
uint8 label maps where every pixel counts: 0 = background, 1 = square, 2 = disc, 3 = triangle.

Each scene holds 2-4 non-overlapping shapes of at least two classes, of random size and position on a noisy grey
background. In the coco set a shape's colour is random, so only its shape tells the class: the detector has to
learn shapes. In the ade20k set each class has its own range of hues (as sky or grass have theirs), so a
pixel's class shows locally, but every background pixel counts too. Either way a few training iterations only
find where the objects are.
"""
import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw

__all__ = ['CLASSES', 'make_coco', 'make_ade20k']

CLASSES = ('square', 'disc', 'triangle')
# the centre of each class's hue range (PIL's 0-255 hue scale) in the ade20k set: red, green, blue
CLASS_HUES = (0, 85, 170)


def _shape_polygon(kind: str, cx: float, cy: float, r: float):
    """A shape inside the circle of radius r; all three of the same area (that of the triangle inscribed in the
    circle), so that no class has fewer pixels than the others."""
    area = 3 * math.sqrt(3) / 4 * r * r
    if kind == 'square':
        h = math.sqrt(area) / 2
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if kind == 'triangle':
        return [(cx, cy - r), (cx + r * math.sqrt(3) / 2, cy + r / 2), (cx - r * math.sqrt(3) / 2, cy + r / 2)]
    d = math.sqrt(area / math.pi)
    return [(cx + d * math.cos(a), cy + d * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 24, endpoint=False)]


def _scene(rng: np.random.Generator, size: int, class_hues: bool):
    """A noisy background with 2-4 non-overlapping shapes of at least two classes: (image, [(class_idx, polygon)])."""
    base = rng.integers(90, 170)
    pixels = np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    count = int(rng.integers(2, 5))
    classes = list(rng.permutation(len(CLASSES))) + list(rng.integers(0, len(CLASSES), count))
    shapes, placed = [], []
    for cls in classes[:count]:
        for _attempt in range(50):
            r = float(rng.uniform(size * 0.1, size * 0.22))
            cx, cy = rng.uniform(r + 2, size - r - 2, 2)
            if all(math.hypot(cx - px, cy - py) > r + pr + 4 for px, py, pr in placed):
                break
        else:
            continue
        poly = _shape_polygon(CLASSES[cls], float(cx), float(cy), r)
        hue = (CLASS_HUES[cls] + int(rng.integers(-20, 21))) % 256 if class_hues else int(rng.integers(0, 256))
        colour = Image.new('HSV', (1, 1), (hue, int(rng.integers(120, 256)), int(rng.integers(120, 256))))
        draw.polygon(poly, fill=colour.convert('RGB').getpixel((0, 0)))
        placed.append((cx, cy, r))
        shapes.append((int(cls), poly))
    return image, shapes


def make_coco(out_dir: str, n_train: int = 64, n_val: int = 16, size: int = 256, seed: int = 0) -> None:
    """A COCO-format detection / instance segmentation set of ``size`` x ``size`` scenes in ``out_dir``."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out_dir, 'annotations'), exist_ok=True)
    for split, count in (('train2017', n_train), ('val2017', n_val)):
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            image, shapes = _scene(rng, size, class_hues=False)
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


def make_ade20k(out_dir: str, n_train: int = 64, n_val: int = 16, size: int = 256, seed: int = 0) -> None:
    """An ADE20K-layout semantic segmentation set of ``size`` x ``size`` scenes in ``out_dir``."""
    rng = np.random.default_rng(seed)
    for split, count in (('training', n_train), ('validation', n_val)):
        os.makedirs(os.path.join(out_dir, 'images', split), exist_ok=True)
        os.makedirs(os.path.join(out_dir, 'annotations', split), exist_ok=True)
        for i in range(count):
            image, shapes = _scene(rng, size, class_hues=True)
            label = Image.new('L', (size, size), 0)
            draw = ImageDraw.Draw(label)
            for cls, poly in shapes:
                draw.polygon(poly, fill=cls + 1)
            name = f'ADE_{split[:5]}_{i:08d}'
            image.save(os.path.join(out_dir, 'images', split, name + '.jpg'), quality=95)
            label.save(os.path.join(out_dir, 'annotations', split, name + '.png'))
