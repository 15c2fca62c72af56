"""Parity with transformers 4.40.2 (weights, outputs, hidden states, preprocessing)."""
import importlib.metadata

import numpy as np
import pytest

# 4.40.2 is the verified stack's reference; the newest stack has transformers 5 (tests/test_hf.py checks it there)
if importlib.metadata.version('transformers').split('.')[0] != '4':
    pytest.skip('needs transformers 4.40.2 (the verified stack, .venv); transformers 5 is tested by test_hf.py',
                allow_module_level=True)

import timm
import torch
from PIL import Image

from transformers import (EfficientFormerConfig, EfficientFormerForImageClassification,  # 4.40.2, the test extra
                          EfficientFormerForImageClassificationWithTeacher, EfficientFormerImageProcessor)

from efficientformer_timm.checkpoint import timm_to_transformers
from efficientformer_timm.transformers_compat import (
    create_model_from_transformers, data_config, model_args_from_transformers_config)
from helpers import randomize_

CONFIGS = {
    # WithTeacher sizes its heads from ``hidden_size``, which the config class does not default
    'l1': dict(hidden_size=448),
    'l3_shaped': dict(depths=[4, 4, 12, 6], hidden_sizes=[64, 128, 320, 512], dim=512, num_meta3d_blocks=4,
                      hidden_size=512),
}


@pytest.mark.parametrize('config_name', list(CONFIGS))
@pytest.mark.parametrize('safe', [True, False])
def test_with_teacher_parity(config_name, safe, tmp_path):
    config = EfficientFormerConfig(**CONFIGS[config_name])
    hf = randomize_(EfficientFormerForImageClassificationWithTeacher(config)).eval()
    hf.save_pretrained(tmp_path, safe_serialization=safe)
    assert (tmp_path / ('model.safetensors' if safe else 'pytorch_model.bin')).exists()
    ours = create_model_from_transformers(tmp_path).eval()
    assert ours.head_dist is not None

    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = hf(x, output_hidden_states=True, output_attentions=True)
        torch.testing.assert_close(ours(x), out.logits, rtol=0, atol=1e-4)
        cls_logits, dist_logits = ours.forward_cls_and_dist(x)
        torch.testing.assert_close(cls_logits, out.cls_logits, rtol=0, atol=1e-4)
        torch.testing.assert_close(dist_logits, out.distillation_logits, rtol=0, atol=1e-4)
        attentions = []
        hidden = ours.forward_hidden_states(x, attentions)
        assert len(hidden) == len(out.hidden_states) == 8
        for a, b in zip(hidden, out.hidden_states):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
        assert len(attentions) == len(out.attentions) == config.num_meta3d_blocks
        for a, b in zip(attentions, out.attentions):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        last = hf.efficientformer(x).last_hidden_state
        assert last.shape == (2, 49, config.hidden_sizes[-1])
        torch.testing.assert_close(ours.forward_features(x), last, rtol=0, atol=1e-4)


@pytest.mark.parametrize('config_name', list(CONFIGS))
def test_timm_to_transformers_loads_strictly_into_transformers(config_name, tmp_path):
    """Our weights written in transformers' layout are transformers' model: every key, and the same logits."""
    config = EfficientFormerConfig(**CONFIGS[config_name])
    hf = EfficientFormerForImageClassificationWithTeacher(config)
    hf.save_pretrained(tmp_path)
    ours = randomize_(create_model_from_transformers(tmp_path)).eval()
    hf.load_state_dict(timm_to_transformers(ours.state_dict()), strict=True)
    hf.eval()  # 4.40.2 caches its attention biases when switched to eval: after loading
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x), rtol=0, atol=1e-4)


def test_single_head_classifier_parity(tmp_path):
    config = EfficientFormerConfig(num_labels=7)
    hf = randomize_(EfficientFormerForImageClassification(config)).eval()
    hf.save_pretrained(tmp_path)
    ours = create_model_from_transformers(tmp_path).eval()
    assert ours.head_dist is None and ours.num_classes == 7
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x).logits, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match='no distillation head'):
        ours.forward_cls_and_dist(x)


def test_config_mapping():
    name, kwargs = model_args_from_transformers_config(EfficientFormerConfig(**CONFIGS['l3_shaped']))
    assert name == 'efficientformer_l3'
    assert kwargs['layer_norm_eps'] == 1e-12 and kwargs['num_vit'] == 4 and kwargs['num_classes'] == 2
    assert kwargs['downsamples'] == (False, True, True, True)
    with pytest.raises(ValueError, match='hidden_act'):
        model_args_from_transformers_config(EfficientFormerConfig(hidden_act='relu'))
    with pytest.raises(ValueError, match='dim=448 must equal hidden_sizes'):
        model_args_from_transformers_config(EfficientFormerConfig(hidden_sizes=[64, 128, 320, 512]))
    with pytest.raises(ValueError, match='use_layer_scale'):
        model_args_from_transformers_config(EfficientFormerConfig(use_layer_scale=False))


@pytest.mark.parametrize('size', [(300, 457), (640, 480), (256, 256)])
def test_transformers_preprocessing_preset(size):
    # the image processor as published with snap-research/efficientformer-l1-300
    processor = EfficientFormerImageProcessor(
        size={'shortest_edge': 256}, crop_size={'height': 224, 'width': 224}, resample=3, do_center_crop=True)
    transform = timm.data.create_transform(**data_config('transformers'))
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    expected = processor(image, return_tensors='pt')['pixel_values'][0]
    ours = transform(image)
    assert ours.shape == expected.shape == (3, 224, 224)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_timm_preset_is_timm_eval_transform():
    cfg = data_config('timm')
    assert cfg['crop_pct'] == 0.95 and cfg['interpolation'] == 'bicubic'
    model_cfg = timm.data.resolve_data_config({}, model=timm.create_model('efficientformer_l1'))
    assert {k: model_cfg[k] for k in ('crop_pct', 'interpolation', 'mean', 'std', 'input_size')} == \
        {k: cfg[k] for k in ('crop_pct', 'interpolation', 'mean', 'std', 'input_size')}
