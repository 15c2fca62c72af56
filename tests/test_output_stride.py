"""output_stride 8 / 16 (dilated later stages) and timm's ViT-style dynamic_img_size flag."""
import copy

import pytest
import timm
import torch
from timm.models import create_feature_extractor

from efficientformer_timm.efficientformer import GridMetaBlock2d
from helpers import ALL_MODELS, randomize_


def _ceil(size, stride):
    return -(-size // stride)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_output_stride_keeps_resolution_and_loads_weights_unchanged(name):
    plain = randomize_(timm.create_model(name)).eval()
    height, width = 70, 98
    x = torch.randn(1, 3, height, width)
    for output_stride, strides in [(16, [4, 8, 16, 16]), (8, [4, 8, 8, 8])]:
        model = timm.create_model(name, output_stride=output_stride).eval()
        model.load_state_dict(plain.state_dict(), strict=True)  # same parameters and saved buffers
        features = timm.create_model(name, features_only=True, output_stride=output_stride).eval()
        assert features.feature_info.reduction() == strides
        assert [info['reduction'] for info in model.feature_info] == strides
        with torch.no_grad():
            maps = features(x)
            intermediates = model.forward_intermediates(x, intermediates_only=True)
            assert model(x).shape == (1, 1000)
        expected = [(_ceil(height, s), _ceil(width, s)) for s in strides]
        assert [tuple(m.shape[-2:]) for m in maps] == expected
        assert [tuple(m.shape[-2:]) for m in intermediates] == expected
        assert all(torch.isfinite(m).all() for m in maps)


def _convolutional_part(stage):
    """A stage's downsample and its blocks before the first attention (or V1's Flat): the translation-equivariant
    part."""
    modules = [stage.downsample]
    for block in stage.blocks:
        mixer = getattr(block, 'token_mixer', None)
        if not hasattr(block, 'mlp') or hasattr(mixer, 'attention_biases'):
            break
        modules.append(block)
    return modules


def _run(modules, x):
    for module in modules:
        x = module(x, ()) if isinstance(module, GridMetaBlock2d) else module(x)  # V1's blocks take the grid
    return x


# V1: stage 2 is convolutional, stage 3 up to its attention; V2: stage 2 up to its attention
@pytest.mark.parametrize('name,checked_stages', [('efficientformer_l1', [(2, 2), (3, 4)]),
                                                 ('efficientformerv2_s0', [(2, 2)])])
def test_dilated_stages_compute_the_strided_stages_on_a_finer_grid(name, checked_stages):
    """At output_stride 8, a dilated stage sampled every `factor` pixels equals the strided stage away from the border
    (a trous): the dilated convolutions and pooling windows see the pixels the strided ones saw."""
    strided = randomize_(timm.create_model(name)).eval()
    dilated = timm.create_model(name, output_stride=8).eval()
    dilated.load_state_dict(strided.state_dict())
    ref = out = torch.randn(1, strided.feature_info[1]['num_chs'], 40, 40)  # a stride-8 map
    with torch.no_grad():
        for stage_idx, factor in checked_stages:
            ref = _run(_convolutional_part(strided.stages[stage_idx]), ref)
            out = _run(_convolutional_part(dilated.stages[stage_idx]), out)
            assert out.shape[-2:] == (40, 40) and ref.shape[-2:] == (40 // factor, 40 // factor)
            inner = slice(3, 40 // factor - 3)  # the border, where zero padding meets other pixels, differs
            torch.testing.assert_close(out[..., ::factor, ::factor][..., inner, inner], ref[..., inner, inner])


def _zero_attention_biases(module):
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith('attention_biases'):
                param.zero_()


@pytest.mark.parametrize('name', ['efficientformerv2_s0', 'efficientformerv2_l'])
def test_dilated_v2_attention_downsample_computes_the_strided_one(name):
    """V2's last stage from its attention downsample (every query kept, its convolutions dilated) through its
    convolutional blocks equals the strided stage sampled every 2 (output_stride 16) / 4 (8) pixels, at every
    position: a stride-2 convolution with padding 1 reads at even positions what the stride-1 one does.

    At output_stride 16 the attention's keys are the strided network's: the position bias is checked with them. At
    output_stride 8 the dilated attention takes its keys on a grid twice as fine: on a map whose pixels repeat 2 x 2
    (sampled every 2 pixels, the strided network's input) each key appears four times, which leaves the softmax
    unchanged, while the four copies sit at different offsets: the bias is zero there. The strided convolution of
    stage 2's attention, dilated at output_stride 8, is checked on its own (its attention takes all the finer grid's
    keys)."""
    strided = randomize_(timm.create_model(name)).eval()
    width = strided.feature_info[2]['num_chs']
    x = torch.randn(1, width, 10, 13, dtype=torch.float64)  # a stride-16 map, stage 3's input
    for output_stride in (16, 8):
        dilated = timm.create_model(name, output_stride=output_stride).eval()
        dilated.load_state_dict(strided.state_dict())
        stage, reference = dilated.stages[3].double(), copy.deepcopy(strided.stages[3]).double()
        assert stage.downsample.attn.query_stride == 1
        if output_stride == 8:
            _zero_attention_biases(stage.downsample)
            _zero_attention_biases(reference.downsample)
            fine = x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)  # the stride-8 map
        else:
            fine = x
        with torch.no_grad():
            ref = _run(_convolutional_part(reference), x)
            out = _run(_convolutional_part(stage), fine)
        assert ref.shape[-2:] == (5, 7) and out.shape[-2:] == fine.shape[-2:]
        factor = 32 // output_stride
        torch.testing.assert_close(out[..., ::factor, ::factor], ref, rtol=0, atol=1e-10)
    conv, strided_conv = (next(b.token_mixer.stride_conv for b in model.stages[2].blocks if b.token_mixer).double()
                          for model in (dilated, copy.deepcopy(strided)))
    assert conv.conv.stride == (2, 2) and conv.conv.dilation == (2, 2)
    fine = torch.randn(1, width, 20, 26, dtype=torch.float64)  # a stride-8 map
    with torch.no_grad():
        torch.testing.assert_close(conv(fine)[..., ::2, ::2], strided_conv(fine[..., ::2, ::2]), rtol=0, atol=1e-10)


# depth-reduced variants: scripting and tracing do not depend on the number of blocks (the ONNX export of a dilated
# model: tests/test_fusion_export.py::test_static_export_of_a_dilated_model)
SMALL = {'efficientformer_l1': dict(depths=(1, 1, 2, 2), num_vit=1),
         'efficientformerv2_s0': dict(depths=(1, 1, 2, 2), num_vit=1, mlp_ratios=4)}


@pytest.mark.parametrize('name', list(SMALL))
def test_output_stride_scripts_and_traces(name):
    model = randomize_(timm.create_model(name, output_stride=16, **SMALL[name])).eval()
    features = timm.create_model(name, features_only=True, output_stride=16, pretrained=True,
                                 pretrained_cfg_overlay=dict(state_dict=model.state_dict()), **SMALL[name]).eval()
    fx_features = create_feature_extractor(model, {f'stages.{i}': str(i) for i in range(4)})
    x = torch.randn(2, 3, 96, 130)
    with torch.no_grad():
        eager = features(x)
        scripted = torch.jit.script(features)(x)
        traced = torch.fx.symbolic_trace(model)(x)
        fx_maps = list(fx_features(x).values())
        torch.testing.assert_close(traced, model(x), rtol=0, atol=1e-5)
    assert [tuple(e.shape[-2:]) for e in eager] == [(24, 33), (12, 17), (6, 9), (6, 9)]
    for a, b in zip(scripted, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    for a, b in zip(fx_maps[:3], eager[:3]):  # V1's last stage gives tokens there, the features their map
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize('value', [4, 64, '16'])
def test_other_output_strides_are_refused(value):
    with pytest.raises(ValueError, match='output_stride must be 8, 16 or 32'):
        timm.create_model('efficientformer_l1', output_stride=value)


def test_dynamic_img_size_is_accepted_and_unknown_arguments_named():
    model = timm.create_model('efficientformerv2_s0', dynamic_img_size=True, features_only=True)
    assert [tuple(f.shape[-2:]) for f in model(torch.randn(1, 3, 72, 100))] == [(18, 25), (9, 13), (5, 7), (3, 4)]
    with pytest.raises(ValueError, match='takes every input size'):
        timm.create_model('efficientformer_l1', dynamic_img_size=False)
    with pytest.raises(TypeError, match="unexpected keyword argument 'dynamic_img_pad'"):
        timm.create_model('efficientformer_l1', dynamic_img_pad=True)
