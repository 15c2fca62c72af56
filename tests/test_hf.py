"""efficientformer_timm.hf on transformers 5, against transformers 4.40.2 itself.

4.40.2 cannot be imported next to transformers 5: ``tests/transformers_reference.py`` runs under the interpreter
that has it (``EFT_REFERENCE_PYTHON``, by default the verified stack's ``.venv``), writes folders saved by 4.40.2
with its outputs and preprocessing, and loads folders saved here back in 4.40.2.
"""
import importlib.metadata
import json
import os
import re
import subprocess

import numpy as np
import pytest

# the hf extra, on the newest stack; the verified stack has transformers 4.40.2 (tests/test_transformers.py)
if importlib.metadata.version('transformers').split('.')[0] == '4':
    pytest.skip('needs transformers 5 (the hf extra, .venv-latest); transformers 4.40.2 is tested by '
                'test_transformers.py', allow_module_level=True)

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

import timm
from transformers import (AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification,
                          Mask2FormerConfig, Mask2FormerForUniversalSegmentation, TimmBackboneConfig, UperNetConfig,
                          UperNetForSemanticSegmentation, pipeline)

import efficientformer_timm.hf as hf
from efficientformer_timm.transformers_compat import create_model_from_transformers, model_args_from_transformers_config
from helpers import made_once

pytestmark = pytest.mark.hf

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
REFERENCE_SCRIPT = os.path.join(ROOT, 'tests', 'transformers_reference.py')
CASES = ['l1_teacher_safetensors', 'l1_teacher_bin', 'l3_teacher_safetensors', 'l1_classifier_bin',
         'l3_classifier_safetensors']
EXACT = dict(rtol=0, atol=1e-5)


def _reference_python() -> str:
    python = os.environ.get('EFT_REFERENCE_PYTHON', os.path.join(ROOT, '.venv', 'bin', 'python'))
    if not os.path.isfile(python):
        pytest.fail(f'no interpreter with transformers 4.40.2 at {python}: run `make install` (the verified stack) '
                    'or set EFT_REFERENCE_PYTHON')
    return python


def _run_reference(command: str, folder) -> str:
    done = subprocess.run([_reference_python(), REFERENCE_SCRIPT, command, str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


@pytest.fixture(scope='session')
def reference(tmp_path_factory):
    return made_once(tmp_path_factory, 'transformers_4.40.2', lambda path: _run_reference('make', path))


def _assert_outputs_equal(out, expected: dict):
    for name, value in expected.items():
        got = out[name]
        if isinstance(value, tuple):
            assert len(got) == len(value), name
            for a, b in zip(got, value):
                torch.testing.assert_close(a, b, **EXACT)
        else:
            torch.testing.assert_close(got, value, **EXACT)


def _run(model, pixel_values):
    with torch.no_grad():
        return model.eval()(pixel_values, output_hidden_states=True, output_attentions=True)


@pytest.mark.parametrize('case', CASES)
def test_from_pretrained_of_440_folders(reference, case):
    folder = reference / case
    model, info = AutoModelForImageClassification.from_pretrained(folder, output_loading_info=True)
    assert type(model).__name__ == json.loads((folder / 'config.json').read_text())['architectures'][0]
    assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys']
    ref = torch.load(folder / 'reference.pt')
    expected = dict(ref['outputs'])
    last_hidden_state = expected.pop('last_hidden_state')
    _assert_outputs_equal(_run(model, ref['pixel_values']), expected)

    base = AutoModel.from_pretrained(folder)
    assert isinstance(base, hf.EfficientFormerModel)
    out = _run(base, ref['pixel_values'])
    torch.testing.assert_close(out.last_hidden_state, last_hidden_state, **EXACT)


def test_reference_counts_every_layer_norm_eps(reference):
    """The reference weights make the LayerNorm eps visible: timm's 1e-5 instead of 4.40.2's 1e-12 fails."""
    folder = reference / 'l1_teacher_safetensors'
    ref = torch.load(folder / 'reference.pt')
    model = hf.EfficientFormerForImageClassificationWithTeacher.from_pretrained(folder, layer_norm_eps=1e-5)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(_run(model, ref['pixel_values']).logits, ref['outputs']['logits'], **EXACT)


def test_save_pretrained_loads_in_440(reference, tmp_path):
    """Folders written here (loaded ones and fresh models; transformers 5 writes model.safetensors) load in 4.40.2
    with every key and equal outputs."""
    pixel_values = torch.randn(2, 3, 224, 224)
    models = {case: AutoModelForImageClassification.from_pretrained(reference / case) for case in CASES[2:]}
    fresh = hf.EfficientFormerConfig(architectures=['EfficientFormerForImageClassificationWithTeacher'],
                                     num_labels=5)
    models['fresh_teacher'] = AutoModelForImageClassification.from_config(fresh)
    models['base_model'] = AutoModel.from_config(hf.EfficientFormerConfig(depths=[2, 2, 4, 3], num_meta3d_blocks=2))
    for name, model in models.items():
        for p in model.parameters():  # trained-looking values, not the initialisation
            p.data.add_(torch.randn_like(p) * 0.01)
        model.save_pretrained(tmp_path / name)
        out = _run(model, pixel_values)
        outputs = {n: out[n] for n in ('logits', 'cls_logits', 'distillation_logits', 'hidden_states', 'attentions')
                   if n in out}
        outputs['last_hidden_state'] = _run(getattr(model, 'efficientformer', model), pixel_values).last_hidden_state
        torch.save({'pixel_values': pixel_values, 'outputs': outputs}, tmp_path / name / 'expected.pt')
    assert (tmp_path / 'base_model' / 'model.safetensors').exists()
    assert '4.40.2 loads' in _run_reference('check', tmp_path)


def test_any_input_size_agrees_with_the_timm_model(reference):
    folder = reference / 'l3_teacher_safetensors'
    model = hf.EfficientFormerForImageClassificationWithTeacher.from_pretrained(folder).eval()
    timm_model = create_model_from_transformers(folder).eval()
    for size in [(64, 64), (320, 256), (97, 181)]:
        x = torch.randn(1, 3, *size)
        out = _run(model, x)
        last_hidden_state = _run(model.efficientformer, x).last_hidden_state
        grid = -(-size[0] // 32) * -(-size[1] // 32)
        assert last_hidden_state.shape == (1, grid, 512)
        assert out.attentions[0].shape == (1, 8, grid, grid)
        with torch.no_grad():
            cls_logits, dist_logits = timm_model.forward_cls_and_dist(x)
            torch.testing.assert_close(out.cls_logits, cls_logits, **EXACT)
            torch.testing.assert_close(out.distillation_logits, dist_logits, **EXACT)
            torch.testing.assert_close(last_hidden_state, timm_model.forward_features(x), **EXACT)
            for a, b in zip(out.hidden_states, timm_model.forward_hidden_states(x)):
                torch.testing.assert_close(a, b, **EXACT)


def test_return_dict_false_tuples(reference):
    folder = reference / 'l1_teacher_bin'
    ref = torch.load(folder / 'reference.pt')
    x = ref['pixel_values']
    teacher = hf.EfficientFormerForImageClassificationWithTeacher.from_pretrained(folder).eval()
    with torch.no_grad():
        logits, cls_logits, dist_logits, hidden_states = teacher(x, output_hidden_states=True, return_dict=False)
        torch.testing.assert_close(logits, ref['outputs']['logits'], **EXACT)
        torch.testing.assert_close(dist_logits, ref['outputs']['distillation_logits'], **EXACT)
        assert len(hidden_states) == 8
        last, attentions = teacher.efficientformer(x, output_attentions=True, return_dict=False)
        torch.testing.assert_close(last, ref['outputs']['last_hidden_state'], **EXACT)
        torch.testing.assert_close(attentions[0], ref['outputs']['attentions'][0], **EXACT)
        classifier = hf.EfficientFormerForImageClassification(teacher.config).eval()
        loss, logits = classifier(x, labels=torch.tensor([1, 2]), return_dict=False)
        assert loss.ndim == 0 and logits.shape == (2, 10)


def test_losses_as_440_chooses_them():
    x = torch.randn(2, 3, 96, 96)
    regression = hf.EfficientFormerForImageClassification(hf.EfficientFormerConfig(num_labels=1))
    out = regression(x, labels=torch.tensor([0.5, -1.0]))
    assert regression.config.problem_type == 'regression'
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(), torch.tensor([0.5, -1.0])))

    single = hf.EfficientFormerForImageClassification(hf.EfficientFormerConfig(num_labels=4))
    out = single(x, labels=torch.tensor([3, 0]))
    assert single.config.problem_type == 'single_label_classification'
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, torch.tensor([3, 0])))
    out.loss.backward()
    assert single.efficientformer.patch_embed.convolution1.weight.grad.abs().sum() > 0

    multi = hf.EfficientFormerForImageClassification(hf.EfficientFormerConfig(num_labels=4))
    targets = torch.tensor([[1., 0., 1., 0.], [0., 0., 0., 1.]])
    out = multi(x, labels=targets)
    assert multi.config.problem_type == 'multi_label_classification'
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, targets))


@pytest.mark.parametrize('cls', ['EfficientFormerModel', 'EfficientFormerForImageClassification',
                                 'EfficientFormerForImageClassificationWithTeacher', 'EfficientFormerBackbone'])
def test_returned_hidden_states_and_attentions_are_on_the_autograd_path(cls):
    """transformers' common check (``test_retain_grad_hidden_states_attentions``) for every returned tensor: after
    ``retain_grad()`` the backward pass of the first output reaches each hidden state and attention (saliency
    methods read these gradients), so each is the tensor the output is computed from."""
    config = hf.EfficientFormerConfig(**dict(TINY, depths=[1, 1, 1, 3], num_meta3d_blocks=2), num_labels=3,
                                      out_features=ALL_STAGES)
    model = getattr(hf, cls)(config).train()
    attentions = cls != 'EfficientFormerBackbone'  # the backbone refuses output_attentions
    out = model(torch.randn(2, 3, 96, 64), output_hidden_states=True, output_attentions=attentions)
    returned = list(out.hidden_states) + (list(out.attentions) if attentions else [])
    assert len(out.hidden_states) == (8 if attentions else 5) and len(returned) == (10 if attentions else 5)
    if attentions:
        assert [a.shape for a in out.attentions] == [(2, 2, 6, 6)] * 2
        torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 2, 6))
    for tensor in returned:
        tensor.retain_grad()
    first = out[0][-1] if cls == 'EfficientFormerBackbone' else out[0]  # the backbone's: its feature maps
    first.flatten()[0].backward()
    assert [i for i, tensor in enumerate(returned) if tensor.grad is None or not tensor.grad.abs().sum() > 0] == []


def test_auto_classes_follow_architectures():
    config = AutoConfig.for_model('efficientformer')
    assert isinstance(config, hf.EfficientFormerConfig) and config.hidden_size == 448
    assert type(AutoModelForImageClassification.from_config(config)) is hf.EfficientFormerForImageClassification
    config.architectures = ['EfficientFormerForImageClassificationWithTeacher']
    assert type(AutoModelForImageClassification.from_config(config)) is \
        hf.EfficientFormerForImageClassificationWithTeacher


def test_config_helpers_agree_with_the_classes():
    config = hf.EfficientFormerConfig(depths=[4, 4, 12, 6], hidden_sizes=[64, 128, 320, 512], dim=512,
                                      num_meta3d_blocks=4, num_labels=3, num_channels=4)
    name, kwargs = model_args_from_transformers_config(config)
    assert name == 'efficientformer_l3' and kwargs['in_chans'] == 4 and kwargs['layer_norm_eps'] == 1e-12
    model = hf.EfficientFormerForImageClassification(config).eval()
    timm_model = timm.create_model(name, **dict(kwargs, distillation=False)).eval()
    missing, unexpected = timm_model.load_state_dict(model.efficientformer.body.state_dict(), strict=False)
    assert sorted(missing) == ['head.bias', 'head.weight'] and not unexpected
    timm_model.head.load_state_dict(model.classifier.state_dict())
    x = torch.randn(1, 4, 160, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, timm_model(x), **EXACT)


def test_documented_defaults_differences():
    config = hf.EfficientFormerConfig()
    assert config.hidden_dropout_prob == 0.0 and config.layer_norm_eps == 1e-12 and config.hidden_size == 448
    processor = hf.EfficientFormerImageProcessor()
    assert processor.resample == 3 and list(processor.image_mean) == [0.485, 0.456, 0.406]


def _photos(reference):
    data = torch.load(reference / 'photos' / 'processors.pt')
    names = next(iter(data['pixel_values'].values())).keys()
    return data, {name: Image.open(reference / 'photos' / name) for name in names}


def test_image_processor_is_pixel_identical_on_photographs(reference):
    data, photos = _photos(reference)
    for processor_name, kwargs in data['kwargs'].items():
        processor = hf.EfficientFormerImageProcessorPil(**kwargs)
        from_folder = AutoImageProcessor.from_pretrained(reference / 'photos' / f'processor_{processor_name}')
        assert type(from_folder) is hf.EfficientFormerImageProcessorPil  # 4.40.2's folders keep its exact pixels
        expected = data['pixel_values'][processor_name]
        for name, image in photos.items():
            for p in (processor, from_folder):
                pixels = p(image, return_tensors='pt')['pixel_values'][0]
                torch.testing.assert_close(pixels, expected[name], rtol=0, atol=1e-6)
        # numpy and torch input, a list of images, numpy output
        arrays = [np.array(image) for image in photos.values()]
        batch = processor(arrays, return_tensors='np')['pixel_values']
        assert isinstance(batch, np.ndarray) and batch.shape[0] == len(arrays)
        tensors = [torch.from_numpy(a).permute(2, 0, 1) for a in arrays]
        for pixels, name in zip(processor(tensors, return_tensors='pt')['pixel_values'], photos):
            torch.testing.assert_close(pixels, expected[name], rtol=0, atol=1e-6)


def test_torchvision_backend_is_close_to_pil(reference):
    data, photos = _photos(reference)
    fast = AutoImageProcessor.from_pretrained(reference / 'photos' / 'processor_snap_research', backend='torchvision')
    assert type(fast) is hf.EfficientFormerImageProcessor and hf.EfficientFormerImageProcessorFast is type(fast)
    for name, image in photos.items():
        pixels = fast(image, return_tensors='pt')['pixel_values'][0]
        torch.testing.assert_close(pixels, data['pixel_values']['snap_research'][name], rtol=0, atol=0.1)


def test_pipelines(reference):
    folder = reference / 'l1_teacher_safetensors'
    image = Image.open(reference / 'photos' / 'grace_hopper.png')
    classify = pipeline('image-classification', model=str(folder))
    top = classify(image, top_k=3)
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        probs = model(**processor(image, return_tensors='pt')).logits.softmax(-1)[0]
    best = probs.topk(3)
    assert [t['label'] for t in top] == [model.config.id2label[i] for i in best.indices.tolist()]
    np.testing.assert_allclose([t['score'] for t in top], best.values.numpy(), rtol=1e-5)

    features = pipeline('image-feature-extraction', model=str(folder), return_tensors=True)(image)
    with torch.no_grad():
        expected = AutoModel.from_pretrained(folder)(**processor(image, return_tensors='pt')).last_hidden_state
    torch.testing.assert_close(features, expected, **EXACT)


def test_bad_configs_and_folders(reference, tmp_path):
    # configs hold any value, as 4.40.2's did; the models refuse what their blocks cannot run
    with pytest.raises(ValueError, match="hidden_act='relu' is not supported"):
        hf.EfficientFormerModel(hf.EfficientFormerConfig(hidden_act='relu'))
    with pytest.raises(ValueError, match='use_layer_scale'):
        hf.EfficientFormerForImageClassification(hf.EfficientFormerConfig(use_layer_scale=False))

    vit = tmp_path / 'vit'
    vit.mkdir()
    (vit / 'config.json').write_text(json.dumps({'model_type': 'vit', 'hidden_size': 768}))
    with pytest.raises(ValueError, match="holds a 'vit' config, not an EfficientFormer one"):
        hf.EfficientFormerConfig.from_pretrained(vit)
    with pytest.raises(ValueError, match="'vit' config"):
        hf.EfficientFormerForImageClassification.from_pretrained(vit)

    partial = tmp_path / 'partial'
    source = reference / 'l3_classifier_safetensors'
    partial.mkdir()
    (partial / 'config.json').write_text((source / 'config.json').read_text())
    weights = load_file(source / 'model.safetensors')
    dropped = [k for k in weights if re.search(r'last_stage\.meta3D_layers\.blocks\.3\.', k)]
    save_file({k: v for k, v in weights.items() if k not in dropped}, partial / 'model.safetensors',
              metadata={'format': 'pt'})
    with pytest.raises(ValueError, match=r'lacks \d+ backbone weights.*meta3D_layers\.blocks\.3'):
        AutoModelForImageClassification.from_pretrained(partial)


def test_new_head_for_fine_tuning_is_allowed(reference):
    """A base folder loaded into a classifier initialises the new head, as transformers does (not an error)."""
    folder = reference / 'l1_teacher_bin'
    model, info = hf.EfficientFormerForImageClassification.from_pretrained(
        folder, id2label={0: 'cat', 1: 'dog', 2: 'bird'}, ignore_mismatched_sizes=True, output_loading_info=True)
    assert model.classifier.out_features == 3
    new_head = list(info['missing_keys']) + [m[0] for m in info['mismatched_keys']]
    assert new_head and all(k.startswith('classifier.') for k in new_head)


def test_docs_examples_run_as_written(reference, capsys):
    """The transformers documentation's examples (docs/transformers.md), with the hub id and the picture pointed at
    local files."""
    page = open(os.path.join(ROOT, 'docs', 'transformers.md')).read()
    section = page.split("## transformers' EfficientFormer classes, on transformers 5")[1].split('\n## ')[0]
    blocks = re.findall(r'```python\n(.*?)```', section, re.S)
    assert len(blocks) == 3
    folder, photo = reference / 'l1_teacher_safetensors', reference / 'photos' / 'grace_hopper.png'
    results = []
    for block in blocks:
        namespace = {}
        exec(block.replace('snap-research/efficientformer-l1-300', str(folder)).replace('cat.jpg', str(photo)),
             namespace)
        results.append(namespace)
    assert results[0]['last_hidden_states'].shape == (1, 49, 448)
    assert capsys.readouterr().out.strip() == results[1]['model'].config.id2label[results[1]['predicted_label']]
    assert results[2]['outputs'].loss.ndim == 0
    assert results[2]['model'].classifier.weight.grad is not None


TINY = dict(depths=[1, 1, 1, 2], hidden_sizes=[16, 32, 48, 64], dim=64, key_dim=8, num_attention_heads=2,
            num_meta3d_blocks=1)
ALL_STAGES = ['stage1', 'stage2', 'stage3', 'stage4']


def test_config_takes_what_440_took_and_models_honour_it(tmp_path):
    config = hf.EfficientFormerConfig(**TINY, batch_norm_eps=1.0, hidden_size=100, num_labels=3)
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert (reloaded.batch_norm_eps, reloaded.hidden_size) == (1.0, 100)
    model = hf.EfficientFormerModel(reloaded).eval()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.eps == 1.0 for m in norms)
    name, kwargs = model_args_from_transformers_config(dict(config.to_dict(), architectures=['EfficientFormerModel']))
    timm_model = timm.create_model(name, **dict(kwargs, num_classes=0)).eval()
    timm_model.load_state_dict(model.body.state_dict())
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x).last_hidden_state, timm_model.forward_features(x), **EXACT)
    assert hf.EfficientFormerForImageClassification(reloaded).classifier.in_features == 64  # reads hidden_sizes[-1]
    with pytest.raises(ValueError, match='hidden_size=100 as its input width.*hidden_sizes\\[-1\\]=64'):
        hf.EfficientFormerForImageClassificationWithTeacher(reloaded)


def test_both_processor_backends_round_trip(reference, tmp_path):
    for cls in (hf.EfficientFormerImageProcessor, hf.EfficientFormerImageProcessorPil):
        folder = tmp_path / cls.__name__
        cls(size={'shortest_edge': 200}).save_pretrained(folder)
        reloaded = AutoImageProcessor.from_pretrained(folder)
        assert type(reloaded) is cls and reloaded.size == {'shortest_edge': 200}
        assert type(AutoImageProcessor.from_pretrained(folder, backend='torchvision')) is \
            hf.EfficientFormerImageProcessor
    # 4.40.2's folder: PIL (its exact pixels) unless torchvision is asked for
    folder = reference / 'photos' / 'processor_snap_research'
    assert type(AutoImageProcessor.from_pretrained(folder)) is hf.EfficientFormerImageProcessorPil
    assert type(AutoImageProcessor.from_pretrained(folder, backend='pil')) is hf.EfficientFormerImageProcessorPil


def test_backbone_loads_classification_folders_at_any_size(reference, tmp_path):
    folder = reference / 'l1_teacher_safetensors'
    # (AutoBackbone.from_pretrained of transformers 5.25 asks the hub whether the name exists, even for a folder)
    backbone = hf.EfficientFormerBackbone.from_pretrained(folder, out_features=ALL_STAGES).eval()
    assert type(backbone) is hf.EfficientFormerBackbone and backbone.channels == [48, 96, 224, 448]
    model = hf.EfficientFormerModel.from_pretrained(folder).eval()
    x = torch.randn(1, 3, 333, 517)
    with torch.no_grad():
        out = backbone(x, output_hidden_states=True)
        expected = model.body.forward_intermediates(x, intermediates_only=True)
    assert [tuple(m.shape[-2:]) for m in out.feature_maps] == [(84, 130), (42, 65), (21, 33), (11, 17)]
    for got, want in zip(out.feature_maps, expected):
        torch.testing.assert_close(got, want, **EXACT)
    assert len(out.hidden_states) == 5 and out.hidden_states[0].shape == (1, 48, 84, 130)
    backbone.save_pretrained(tmp_path)
    again = hf.EfficientFormerBackbone.from_pretrained(tmp_path).eval()
    assert again.out_features == ALL_STAGES and type(AutoBackbone.from_config(again.config)) is hf.EfficientFormerBackbone
    with torch.no_grad():
        torch.testing.assert_close(again(x).feature_maps[-1], out.feature_maps[-1], **EXACT)
    with pytest.raises(ValueError, match=r"\['stage5'\] are not stages.*'stem', 'stage1'"):
        hf.EfficientFormerConfig(out_features=['stage3', 'stage5'])


@pytest.mark.parametrize('size', [(512, 512), (333, 517)])
def test_upernet_and_mask2former_train_on_the_backbone(size):
    backbone_config = hf.EfficientFormerConfig(**TINY, out_features=ALL_STAGES)
    x = torch.randn(2, 3, *size)
    upernet = UperNetForSemanticSegmentation(UperNetConfig(
        backbone_config=backbone_config, hidden_size=32, auxiliary_channels=16, num_labels=5)).train()
    assert type(upernet.backbone) is hf.EfficientFormerBackbone
    out = upernet(pixel_values=x, labels=torch.randint(0, 5, (2, *size)))
    out.loss.backward()
    assert out.logits.shape == (2, 5, *size)
    assert upernet.backbone.body.stem.conv1.weight.grad.abs().sum() > 0

    mask2former = Mask2FormerForUniversalSegmentation(Mask2FormerConfig(
        backbone_config=backbone_config, hidden_dim=32, mask_feature_size=32, feature_size=32, encoder_layers=1,
        decoder_layers=2, num_queries=8, encoder_feedforward_dim=64, dim_feedforward=64, num_attention_heads=2,
        num_labels=4, train_num_points=64)).train()
    out = mask2former(pixel_values=x, mask_labels=[torch.randint(0, 2, (2, *size)).float(),
                                                   torch.randint(0, 2, (1, *size)).float()],
                      class_labels=[torch.tensor([0, 3]), torch.tensor([1])])
    out.loss.backward()
    assert out.masks_queries_logits.shape == (2, 8, -(-size[0] // 4), -(-size[1] // 4))
    assert mask2former.model.pixel_level_module.encoder.body.stem.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize('name,widths', [('efficientformer_l1', [96, 224, 448]), ('efficientformerv2_s0', [48, 96, 176])])
def test_timm_backbone_by_name_at_any_size(name, widths):
    """transformers' generic TimmBackbone builds this package's models by their timm names."""
    backbone = AutoBackbone.from_config(TimmBackboneConfig(backbone=name, use_pretrained_backbone=False,
                                                           out_indices=(1, 2, 3))).eval()
    assert backbone.channels == widths
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 333, 517)).feature_maps
    assert [tuple(m.shape[-2:]) for m in maps] == [(42, 65), (21, 33), (11, 17)]
