"""Reference values from transformers 4.40.2, the last release with EfficientFormer (run it where 4.40.2 is
installed: the verified stack's .venv). transformers 5 cannot share that environment, so the tests of
``efficientformer_timm.hf`` call this script in a subprocess (its folder, tests/, is then first on the import
path, which is where ``helpers`` comes from).

    python tests/transformers_reference.py make DIR    # folders saved by 4.40.2 + its outputs and preprocessing
    python tests/transformers_reference.py check DIR   # load folders saved elsewhere in 4.40.2, compare outputs

``make`` writes one folder per case in CASES (random weights with every tensor perturbed: layer scales, attention
biases, BatchNorm statistics), each with ``reference.pt`` (the input and 4.40.2's outputs), plus ``photos/`` (real
photographs and crops of them) with ``processors.pt`` (4.40.2's pixel values for each processor in PROCESSORS).
``check`` expects folders with ``expected.pt`` ({'pixel_values', 'outputs'}) and fails naming any missing or
unexpected key or any output that differs.
"""
import argparse
import json
import os
import sys

import torch
from PIL import Image

import transformers
from transformers import (EfficientFormerConfig, EfficientFormerForImageClassification,
                          EfficientFormerForImageClassificationWithTeacher, EfficientFormerImageProcessor,
                          EfficientFormerModel)

from helpers import randomize_  # one perturbation for every parity test

CLASSES = {cls.__name__: cls for cls in (
    EfficientFormerModel, EfficientFormerForImageClassification, EfficientFormerForImageClassificationWithTeacher)}
L3_SHAPED = dict(depths=[4, 4, 12, 6], hidden_sizes=[64, 128, 320, 512], dim=512, num_meta3d_blocks=4,
                 hidden_size=512)
# name: (class, config kwargs, safetensors?)
CASES = {
    'l1_teacher_safetensors': ('EfficientFormerForImageClassificationWithTeacher',
                               dict(hidden_size=448, num_labels=10), True),
    'l1_teacher_bin': ('EfficientFormerForImageClassificationWithTeacher', dict(hidden_size=448, num_labels=10), False),
    'l3_teacher_safetensors': ('EfficientFormerForImageClassificationWithTeacher', dict(L3_SHAPED, num_labels=10),
                               True),
    'l1_classifier_bin': ('EfficientFormerForImageClassification', dict(num_labels=10), False),
    'l3_classifier_safetensors': ('EfficientFormerForImageClassification', dict(L3_SHAPED, num_labels=10), True),
}
PROCESSORS = {
    'default': {},
    # as published with snap-research/efficientformer-l1-300
    'snap_research': dict(size={'shortest_edge': 256}, crop_size={'height': 224, 'width': 224}, resample=3),
    'no_crop_bilinear': dict(size={'height': 192, 'width': 256}, do_center_crop=False, resample=2),
}
OUTPUT_NAMES = ('logits', 'cls_logits', 'distillation_logits', 'last_hidden_state', 'hidden_states', 'attentions')


def outputs_of(model, pixel_values):
    """Every output of the model, and the base model's ``last_hidden_state`` for the heads."""
    with torch.no_grad():
        out = model(pixel_values, output_hidden_states=True, output_attentions=True)
        base = getattr(model, 'efficientformer', model)
        last_hidden_state = base(pixel_values).last_hidden_state
    return dict({name: out[name] for name in OUTPUT_NAMES if name in out}, last_hidden_state=last_hidden_state)


def make(root):
    assert transformers.__version__ == '4.40.2', f'run under transformers 4.40.2, not {transformers.__version__}'
    os.makedirs(root, exist_ok=True)
    for seed, (case, (cls_name, kwargs, safe)) in enumerate(CASES.items()):
        model = randomize_(CLASSES[cls_name](EfficientFormerConfig(**kwargs)), seed=seed).eval()
        folder = os.path.join(root, case)
        model.save_pretrained(folder, safe_serialization=safe)
        pixel_values = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
        torch.save({'pixel_values': pixel_values, 'outputs': outputs_of(model, pixel_values)},
                   os.path.join(folder, 'reference.pt'))
        EfficientFormerImageProcessor(**PROCESSORS['snap_research']).save_pretrained(folder)

    photos = os.path.join(root, 'photos')
    os.makedirs(photos, exist_ok=True)
    import matplotlib.cbook
    names = []
    for sample in ('grace_hopper.jpg', 'Minduka_Present_Blue_Pack.png'):
        with matplotlib.cbook.get_sample_data(sample) as f:
            image = Image.open(f).convert('RGB')
        stem = os.path.splitext(sample)[0]
        # the photograph, a tall crop and a small wide one: up- and downscaling, both aspect ratios
        width, height = image.size
        variants = {'': image, '_tall': image.crop((0, 0, width // 3, height)),
                    '_wide': image.crop((0, height // 2, width, height // 2 + 90))}
        for suffix, variant in variants.items():
            names.append(f'{stem}{suffix}.png')
            variant.save(os.path.join(photos, names[-1]))
    images = [Image.open(os.path.join(photos, name)) for name in names]
    pixels = {
        name: {photo: EfficientFormerImageProcessor(**kwargs)(image, return_tensors='pt')['pixel_values'][0]
               for photo, image in zip(names, images)}
        for name, kwargs in PROCESSORS.items()}
    torch.save({'kwargs': PROCESSORS, 'pixel_values': pixels}, os.path.join(photos, 'processors.pt'))
    for name, kwargs in PROCESSORS.items():
        EfficientFormerImageProcessor(**kwargs).save_pretrained(os.path.join(photos, f'processor_{name}'))
    print(f'4.40.2 references in {root}: {", ".join(CASES)}, {len(names)} photographs')


def check(root):
    assert transformers.__version__ == '4.40.2', f'run under transformers 4.40.2, not {transformers.__version__}'
    failures = []
    folders = sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, 'expected.pt')))
    if not folders:
        sys.exit(f'no folder with expected.pt in {root}')
    for case in folders:
        folder = os.path.join(root, case)
        with open(os.path.join(folder, 'config.json')) as f:
            cls = CLASSES[json.load(f)['architectures'][0]]
        model, info = cls.from_pretrained(folder, output_loading_info=True)
        for kind in ('missing_keys', 'unexpected_keys', 'mismatched_keys', 'error_msgs'):
            if info[kind]:
                failures.append(f'{case}: {kind} {info[kind][:5]}')
        expected = torch.load(os.path.join(folder, 'expected.pt'))
        got = outputs_of(model.eval(), expected['pixel_values'])
        for name, value in expected['outputs'].items():
            values = value if isinstance(value, (tuple, list)) else (value,)
            gots = got[name] if isinstance(got[name], (tuple, list)) else (got[name],)
            if len(values) != len(gots):
                failures.append(f'{case}: {name} has {len(gots)} tensors in 4.40.2, {len(values)} expected')
                continue
            for i, (a, b) in enumerate(zip(gots, values)):
                diff = (a - b).abs().max().item() if a.shape == b.shape else float('inf')
                if diff > 1e-4:
                    failures.append(f'{case}: {name}[{i}] differs by {diff:.3g} (shapes {tuple(a.shape)}, '
                                    f'{tuple(b.shape)})')
    if failures:
        sys.exit('4.40.2 disagrees:\n' + '\n'.join(failures))
    print(f'4.40.2 loads {", ".join(folders)} with no missing or unexpected keys and equal outputs')


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('command', choices=('make', 'check'))
    parser.add_argument('dir')
    args = parser.parse_args()
    torch.set_num_threads(2)
    (make if args.command == 'make' else check)(args.dir)


if __name__ == '__main__':
    main()
