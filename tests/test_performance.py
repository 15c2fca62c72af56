"""Issue 4: the speed-ups keep the numbers (fusion, bias cache) and export paths work."""
import copy

import pytest
import timm
import torch

from efficientformer_timm.fuse import fuse_batchnorm, timm_state_dict
from conftest import ALL_MODELS, randomize_


@pytest.mark.parametrize('name', ALL_MODELS)
def test_fused_model_matches_and_saves_timm_format(name):
    model = randomize_(timm.create_model(name)).eval()
    fused = fuse_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.stages.modules())
    with torch.no_grad():
        for size in [(224, 224), (161, 257)]:
            x = torch.randn(2, 3, *size)
            torch.testing.assert_close(fused(x), model(x), rtol=0, atol=1e-5)
            for a, b in zip(fused.forward_intermediates(x, intermediates_only=True),
                            model.forward_intermediates(x, intermediates_only=True)):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    reloaded = timm.create_model(name).eval()
    reloaded.load_state_dict(timm_state_dict(fused), strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), fused(x), rtol=0, atol=0)


def test_fuse_bn_option_loads_then_fuses(tmp_path):
    source = randomize_(timm.create_model('efficientformer_l1')).eval()
    torch.save(source.state_dict(), tmp_path / 'l1.pth')
    fused = timm.create_model('efficientformer_l1', features_only=True, fuse_bn=True, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'l1.pth')))
    assert not fused.training
    x = torch.randn(1, 3, 256, 320)
    with torch.no_grad():
        for a, b in zip(fused(x), source.forward_intermediates(x, intermediates_only=True)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize('name', ['efficientformer_l1', 'efficientformerv2_s1'])
def test_cached_bias_equals_resize_every_forward(name):
    model = randomize_(timm.create_model(name, features_only=True)).eval()
    reference = copy.deepcopy(model)
    for m in reference.modules():
        if hasattr(m, 'cache_attention_bias'):
            m.cache_attention_bias = False
    x = torch.randn(1, 3, 320, 480)
    with torch.no_grad():
        model(x)  # fills the cache
        for a, b in zip(model(x), reference(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(not m.attention_bias_cache for m in reference.modules() if hasattr(m, 'attention_bias_cache'))


@pytest.mark.parametrize('name', ['efficientformer_l1', 'efficientformerv2_s0'])
def test_torchscript_trace(name):
    model = randomize_(timm.create_model(name, features_only=True)).eval()
    x = torch.randn(1, 3, 256, 352)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        for a, b in zip(traced(x), model(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize('name', ['efficientformer_l3', 'efficientformerv2_s2'])
def test_channels_last_fused_matches(name):
    model = randomize_(timm.create_model(name, features_only=True)).eval()
    fast = fuse_batchnorm(copy.deepcopy(model)).to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 203, 301)
    with torch.no_grad():
        for a, b in zip(fast(x.contiguous(memory_format=torch.channels_last)), model(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
