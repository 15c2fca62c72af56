"""Drop-in for timm: TorchScript, FX, pretrained loading with any in_chans, stock features_only layouts, stock's
refusals, readable errors for bad files and bad input. timm's own model tests run separately
(tools/run_timm_tests.py, part of `make test`)."""
import pytest
import timm
import timm.models.efficientformer as timm_v1
import timm.models.efficientformer_v2 as timm_v2
import torch
from safetensors.torch import save_file
from timm.models import adapt_input_conv, create_feature_extractor

from efficientformer_timm import CheckpointError, load_checkpoint
from efficientformer_timm.checkpoint import infer_model_name, timm_to_original
from helpers import ALL_MODELS, V1_MODELS, fewer_blocks, randomize_

STRIDES = (4, 8, 16, 32)
SIZES = [(224, 224), (96, 160)]


def _stock(name, **kwargs):
    """timm's own class for ``name`` (its module-level entry point, which the registry no longer points to)."""
    return getattr(timm_v2 if 'v2' in name else timm_v1, name)(**kwargs)


def _assert_checks_input(model):
    with pytest.raises(ValueError, match='expected 3 input channels'):
        model(torch.randn(1, 4, 96, 96))


def _assert_caches_eval_bias(model):
    with torch.no_grad():
        model(torch.randn(1, 3, 96, 160))
    assert any(m.attention_bias_cache for m in model.modules() if hasattr(m, 'attention_bias_cache'))


# one V1 and one V2 (their variants differ in depths and widths, not in modules); timm's own model tests script and
# trace all seven (tools/run_timm_tests.py)
SCRIPTED = ['efficientformer_l3', 'efficientformerv2_s0']


@pytest.mark.parametrize('name', SCRIPTED)
def test_torchscript_equals_eager(name):
    small = fewer_blocks(name)  # every kind of block: scripting time grows with the blocks
    model = randomize_(timm.create_model(name, drop_path_rate=0., **small)).eval()
    scripted = torch.jit.script(model)
    features = randomize_(timm.create_model(name, features_only=True, **small)).eval()
    scripted_features = torch.jit.script(features)
    for height, width in SIZES:
        x = torch.randn(2, 3, height, width)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=1e-5)
            torch.testing.assert_close(scripted.forward_features(x), model.forward_features(x), rtol=0, atol=1e-5)
            eager = features(x)
            assert [tuple(f.shape[-2:]) for f in eager] == [(-(-height // s), -(-width // s)) for s in STRIDES]
            for a, b in zip(scripted_features(x), eager):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # the eager model keeps its input checks and its eval bias cache after being scripted
    _assert_checks_input(model)
    _assert_caches_eval_bias(model)


def _stage_outputs(model, x):
    """Eager outputs of the modules ``stages.i`` (what FX feature extraction returns for them)."""
    outputs = []
    x = model.stem(x)
    for stage in model.stages:
        x = stage(x)
        outputs.append(x)
    return outputs


@pytest.mark.parametrize('name', SCRIPTED)
def test_fx_equals_eager(name):
    small = fewer_blocks(name)
    model = randomize_(timm.create_model(name, drop_path_rate=0., **small)).eval()
    graph = torch.fx.symbolic_trace(model)
    extractor = create_feature_extractor(model, {f'stages.{i}': str(i) for i in range(4)})
    fx_features = timm.create_model(name, features_only=True, feature_cls='fx', pretrained=True,
                                    pretrained_cfg_overlay=dict(state_dict=model.state_dict()), **small).eval()
    for height, width in SIZES:
        x = torch.randn(2, 3, height, width)
        with torch.no_grad():
            torch.testing.assert_close(graph(x), model(x), rtol=0, atol=1e-5)
            expected = _stage_outputs(model, x)
            for a, b in zip(extractor(x).values(), expected):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
            for a, b in zip(fx_features(x), expected):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # the traced graph keeps the input check (one leaf call in the graph), the eager model its cache
    _assert_checks_input(graph)
    _assert_caches_eval_bias(model)


def _save(state, path, fmt):
    if fmt == 'original':
        state = {'model': timm_to_original(state)}
    if path.suffix == '.safetensors':
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize('name', ['efficientformer_l1', 'efficientformerv2_s0'])
@pytest.mark.parametrize('fmt,suffix', [('timm', '.safetensors'), ('original', '.pth'), ('timm', '.bin')])
@pytest.mark.parametrize('in_chans', [1, 4])
def test_pretrained_with_any_in_chans(name, fmt, suffix, in_chans, tmp_path):
    source = randomize_(timm.create_model(name)).state_dict()
    path = tmp_path / f'weights{suffix}'
    _save(source, path, fmt)
    overlay = dict(file=str(path))
    ours = timm.create_model(name, pretrained=True, in_chans=in_chans, pretrained_cfg_overlay=overlay).eval()
    first_conv = ours.pretrained_cfg['first_conv'] + '.weight'
    expected = dict(source, **{first_conv: adapt_input_conv(in_chans, source[first_conv])})
    state = ours.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items() if k in state)
    # timm's built-in, loading the same weights in its own format, gives the same network
    torch.save(source, tmp_path / 'stock.pth')
    stock = _stock(name, pretrained=True, in_chans=in_chans,
                   pretrained_cfg_overlay=dict(file=str(tmp_path / 'stock.pth')))
    x = torch.randn(2, in_chans, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), stock.eval()(x), rtol=0, atol=1e-5)
    features = timm.create_model(name, pretrained=True, in_chans=in_chans, features_only=True,
                                 pretrained_cfg_overlay=overlay).eval()
    with torch.no_grad():
        for a, b in zip(features(x), ours.forward_intermediates(x, intermediates_only=True)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_load_checkpoint_adapts_the_stem_like_timm():
    source = randomize_(timm.create_model('efficientformer_l3')).state_dict()
    model = timm.create_model('efficientformer_l3', in_chans=1)
    report = load_checkpoint(model, timm_to_original(source))  # the authors' layout
    assert 'stem.conv1.weight' in report.loaded
    torch.testing.assert_close(model.stem.conv1.weight, adapt_input_conv(1, source['stem.conv1.weight']))


@pytest.mark.parametrize('name', ALL_MODELS)
def test_features_only_keeps_stock_wrapper_and_state_dict(name):
    stock = randomize_(_stock(name, features_only=True)).eval()
    ours = timm.create_model(name, features_only=True).eval()
    assert isinstance(ours, type(stock))  # V2: a subclass of FeatureListNet that also checks its input
    assert list(ours.state_dict()) == list(stock.state_dict())
    ours.load_state_dict(stock.state_dict(), strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        for a, b in zip(ours(x), stock(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    back = _stock(name, features_only=True).eval()
    back.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        for a, b in zip(back(x), ours(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize('name', V1_MODELS)
def test_pruned_v1_refuses_a_classifier_like_stock(name):
    stock = _stock(name)
    stock.prune_intermediate_layers((0, 1, 2))
    with pytest.raises(AssertionError, match='final stage is pruned'):
        stock.reset_classifier(5, 'avg')
    ours = timm.create_model(name)
    ours.prune_intermediate_layers((0, 1, 2))
    with pytest.raises(ValueError, match=r"num_classes=5, global_pool='avg'.* needs the final stage"):
        ours.reset_classifier(5, 'avg')
    ours.reset_classifier(0, '')  # what stock allows works
    assert ours.num_classes == 0 and ours.global_pool == ''


def test_pruned_v2_takes_a_classifier_like_stock():
    stock = randomize_(_stock('efficientformerv2_s0')).eval()
    ours = timm.create_model('efficientformerv2_s0').eval()
    ours.load_state_dict(stock.state_dict())
    for model in (stock, ours):
        model.prune_intermediate_layers((0, 1, 2))
        model.reset_classifier(5, 'avg')
    ours.load_state_dict(stock.state_dict())
    x = torch.randn(2, 3, 224, 224)  # stock V2 runs at 224 only
    with torch.no_grad():
        torch.testing.assert_close(ours(x), stock(x), rtol=0, atol=1e-5)
    assert ours(x).shape == (2, 5)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_infer_model_name_knows_all_seven(name):
    state = timm.create_model(name).state_dict()
    assert infer_model_name(state) == name
    assert infer_model_name(timm_to_original(state)) == name


def _bad_files(tmp_path):
    good = timm.create_model('efficientformer_l1').state_dict()
    torch.save(good, tmp_path / 'full.pth')
    data = (tmp_path / 'full.pth').read_bytes()
    (tmp_path / 'truncated.pth').write_bytes(data[:len(data) // 2])
    (tmp_path / 'html.bin').write_text('<html>404 not found</html>')
    save_file(good, str(tmp_path / 'full.safetensors'))
    data = (tmp_path / 'full.safetensors').read_bytes()
    (tmp_path / 'truncated.safetensors').write_bytes(data[:100])
    torch.save({'model': [1, 2, 3]}, tmp_path / 'foreign.pth')
    torch.save({'encoder.weight': torch.zeros(3)}, tmp_path / 'other_model.bin')
    return [
        ('truncated.pth', r'cannot read checkpoint .*truncated\.pth: .*truncated'),
        ('html.bin', r'cannot read checkpoint .*html\.bin'),
        ('truncated.safetensors', r'cannot read checkpoint .*truncated\.safetensors'),
        ('foreign.pth', r'foreign\.pth holds no state dict of tensors'),
        ('other_model.bin', r'not an EfficientFormer checkpoint'),
    ]


def test_bad_files_through_create_model_raise_checkpoint_error(tmp_path):
    for file, message in _bad_files(tmp_path):
        with pytest.raises(CheckpointError, match=message):
            timm.create_model('efficientformer_l1', pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / file)))
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        timm.create_model('efficientformer_l1', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / 'missing.pth')))


@pytest.mark.mm
def test_bad_files_through_mm_init_cfg_raise_checkpoint_error(tmp_path):
    from efficientformer_timm.mm import EfficientFormerBackbone
    for file, message in _bad_files(tmp_path):
        backbone = EfficientFormerBackbone(
            'efficientformer_l1', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / file)))
        with pytest.raises(CheckpointError, match=message):
            backbone.init_weights()


def test_channels_last_batch_is_told_to_permute():
    model = timm.create_model('efficientformer_l1').eval()
    for entry in (model, timm.create_model('efficientformerv2_s0', features_only=True)):
        with pytest.raises(ValueError, match=r'channels-last \(B, H, W, C\) batch.*x\.permute\(0, 3, 1, 2\)'):
            entry(torch.randn(1, 224, 224, 3))


@pytest.mark.parametrize('name', ['efficientformer_l1', 'efficientformerv2_s0'])
def test_dtype_mismatch_names_both_dtypes(name):
    for entry in (timm.create_model(name).eval(), timm.create_model(name, features_only=True).eval()):
        with pytest.raises(TypeError, match=r'input dtype torch\.float64 differs from the model\'s torch\.float32: '
                                            r'convert the batch with x\.to\(torch\.float32\)'):
            entry(torch.randn(1, 3, 96, 96, dtype=torch.float64))


@pytest.mark.parametrize('name', ['efficientformer_l1', 'efficientformerv2_s0'])
def test_autocast_runs_like_the_builtin(name):
    """Under autocast a batch of another float dtype is what timm's built-ins accept: so do we."""
    stock = randomize_(_stock(name)).eval()
    ours = timm.create_model(name).eval()
    ours.load_state_dict(stock.state_dict())
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64).to(torch.bfloat16)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        # bf16 rounding (the bias is added in another order): a few bf16 steps (2**-8 relative) at logit scale
        torch.testing.assert_close(ours(x), stock(x), rtol=1.6e-2, atol=1e-2)
