"""The OpenMMLab backbone and configs (build, forward/backward, freezing, init_cfg loading)."""
import glob
import math
import os
import re
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F

from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import load_checkpoint
from mmengine.structures import PixelData

from efficientformer_timm import CheckpointError
from efficientformer_timm._bias import GridAttentionBias, resize_offset_table
from efficientformer_timm.checkpoint import timm_to_original
from efficientformer_timm.convert import convert_file
from efficientformer_timm.efficientformer_v2 import Attention2d, Attention2dDownsample
from efficientformer_timm.mm import EfficientFormerBackbone
from efficientformer_timm.variants import V1_MODEL_NAMES
from helpers import randomize_

pytestmark = pytest.mark.mm

ROOT = os.path.join(os.path.dirname(__file__), '..')
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'mm_configs', '*.py')))


@pytest.fixture(scope='module')
def pretrained_env(tmp_path_factory):
    """Random-weight timm checkpoints for every model, pointed to by the configs' environment variables."""
    folder = tmp_path_factory.mktemp('ckpts')
    env = {}
    for short, name in [('L1', 'efficientformer_l1'), ('L3', 'efficientformer_l3'), ('L7', 'efficientformer_l7'),
                        ('V2_S0', 'efficientformerv2_s0'), ('V2_S1', 'efficientformerv2_s1'),
                        ('V2_S2', 'efficientformerv2_s2'), ('V2_L', 'efficientformerv2_l')]:
        path = str(folder / f'{name}.pth')
        torch.save(timm.create_model(name).state_dict(), path)
        env[f'EFFICIENTFORMER_{short}_CKPT'] = path
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k)
        else:
            os.environ[k] = v


def test_every_model_has_both_configs():
    names = {os.path.basename(c) for c in CONFIGS}
    for tag in ('l1', 'l3', 'l7', 'v2_s0', 'v2_s1', 'v2_s2', 'v2_l'):
        assert f'maskrcnn_{tag}.py' in names and f'semfpn_{tag}_ade20k.py' in names
    for tag in ('l1', 'v2_s2'):
        assert f'retinanet_{tag}.py' in names and f'upernet_{tag}_ade20k.py' in names


def _recipe(path):
    """maskrcnn / retinanet (mmdet) or semfpn / upernet (mmseg), from the config's name."""
    recipe = os.path.basename(path).split('_')[0]
    return recipe, 'mmdet' if recipe in ('maskrcnn', 'retinanet') else 'mmseg'


# recipe -> (AdamW lr, weight decay of V1, of V2)
OPTIMIZERS = {'maskrcnn': (2e-4, 1e-4, 0.05), 'retinanet': (1e-4, 1e-4, 1e-4), 'semfpn': (2e-4, 1e-4, 1e-4),
              'upernet': (6e-5, 0.01, 0.01)}


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_config_parses_builds_and_loads_pretrained(path, pretrained_env):
    cfg = Config.fromfile(path)
    recipe, scope = _recipe(path)
    init_default_scope(scope)
    model = MODELS.build(cfg.model)
    backbone = model.backbone
    assert isinstance(backbone, EfficientFormerBackbone)
    head_in = cfg.model.decode_head.in_channels if recipe == 'upernet' else cfg.model.neck.in_channels
    assert list(head_in) == backbone.out_channels
    lr, v1_decay, v2_decay = OPTIMIZERS[recipe]
    optimizer = cfg.optim_wrapper.optimizer
    assert optimizer.type == 'AdamW' and optimizer.lr == lr
    assert optimizer.weight_decay == (v2_decay if 'v2' in path else v1_decay)
    if scope == 'mmdet':
        assert cfg.train_cfg.max_epochs == 12 and cfg.param_scheduler[1].milestones == [8, 11]
        assert cfg.param_scheduler[0].end == 500 and cfg.train_dataloader.dataset.data_root == 'data/coco/'
    else:
        assert cfg.model.decode_head.num_classes == 150 and cfg.crop_size == (512, 512)
        assert cfg.train_dataloader.dataset.data_root == 'data/ade/ADEChallengeData2016'
    if recipe == 'semfpn':
        assert cfg.train_cfg.max_iters == 40000 and cfg.param_scheduler[0].type == 'PolyLR'
    elif recipe == 'upernet':
        assert cfg.train_cfg.max_iters == 160000 and cfg.model.auxiliary_head.in_channels == backbone.out_channels[2]
        assert [s.type for s in cfg.param_scheduler] == ['LinearLR', 'PolyLR'] and cfg.param_scheduler[0].end == 1500
        assert cfg.optim_wrapper.paramwise_cfg.custom_keys['attention_biases'].decay_mult == 0
    elif recipe == 'retinanet':
        assert cfg.model.neck.start_level == 1 and cfg.model.neck.add_extra_convs == 'on_input'
    model.init_weights()
    source = torch.load(cfg.model.backbone.init_cfg.checkpoint, weights_only=True)
    for key, value in backbone.model.state_dict().items():
        if not key.startswith('feature_norms'):
            assert torch.equal(value, source[key]), key


def test_data_root_from_environment(monkeypatch):
    monkeypatch.setenv('COCO_ROOT', '/datasets/coco/')
    cfg = Config.fromfile(os.path.join(ROOT, 'mm_configs', 'maskrcnn_l1.py'))
    assert cfg.train_dataloader.dataset.data_root == '/datasets/coco/'
    assert cfg.val_evaluator.ann_file == '/datasets/coco/annotations/instances_val2017.json'


def _toy_det_model():
    cfg = Config.fromfile(os.path.join(ROOT, 'mm_configs', 'toy', 'maskrcnn_l1_toy.py'))
    init_default_scope('mmdet')
    return MODELS.build(cfg.model)


def test_detector_loss_and_predict_at_odd_sizes():
    model = _toy_det_model()
    _detector_step(model)
    assert all(p.grad is not None for n, p in model.backbone.named_parameters() if 'stages.0' in n)


def _detector_step(model):
    """A loss step and a predict step on two images of odd sizes."""
    from mmdet.testing import demo_mm_inputs
    torch.manual_seed(0)
    packed = demo_mm_inputs(2, [(3, 200, 333), (3, 251, 190)], num_items=[3, 2], num_classes=3, with_mask=True)
    losses = model(**model.data_preprocessor(packed, True), mode='loss')
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(x.sum() for x in v)
                for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(packed, False), mode='predict')
    assert len(results) == 2 and results[0].pred_instances.bboxes.shape[1] == 4
    return losses


def _segmentor_step(model, size=(130, 171)):
    """A loss step and a predict step (at the odd size itself) on two images."""
    from mmseg.structures import SegDataSample
    h, w = size
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, h, w)))
        samples.append(sample)
    inputs = [torch.randint(0, 255, (3, h, w), dtype=torch.uint8) for _ in samples]
    losses = model(**model.data_preprocessor(dict(inputs=inputs, data_samples=samples), True), mode='loss')
    loss = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(loss)
    loss.backward()
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=inputs, data_samples=samples), False)
        assert data['inputs'].shape[-2:] == (h, w)  # predict mode runs the backbone at the odd size
        results = model(**data, mode='predict')
    assert results[0].pred_sem_seg.data.shape == (1, h, w)
    return losses


@pytest.mark.parametrize('config', ['retinanet_l1.py', 'retinanet_v2_s2.py', 'upernet_l1_ade20k.py',
                                    'upernet_v2_s2_ade20k.py'])
def test_retinanet_and_upernet_loss_and_predict_at_odd_sizes(config):
    cfg = Config.fromfile(os.path.join(ROOT, 'mm_configs', config))
    cfg.model.backbone.init_cfg = None
    recipe, scope = _recipe(config)
    # the heads narrower than the recipe's (the configs build as they are in the test above): a short CPU step
    if recipe == 'retinanet':
        cfg.model.neck.out_channels = 64
        cfg.model.bbox_head.update(in_channels=64, feat_channels=64)
    else:
        cfg.model.decode_head.channels = 32
        cfg.model.auxiliary_head.channels = 16
    init_default_scope(scope)
    model = MODELS.build(cfg.model)
    if recipe == 'retinanet':
        assert set(_detector_step(model)) == {'loss_cls', 'loss_bbox'}
    else:
        assert {'decode.loss_ce', 'aux.loss_ce'} <= set(_segmentor_step(model))
    stem_weight = next(p for n, p in model.backbone.model.named_parameters() if n.startswith('stem.'))
    assert stem_weight.grad is not None


MMPRETRAIN_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'mm_configs', 'mmpretrain', '*.py')))


@pytest.mark.parametrize('path', MMPRETRAIN_CONFIGS, ids=os.path.basename)
def test_mmpretrain_timm_backbone_configs(path, pretrained_env):
    """mmpretrain's generic TIMMBackbone builds this package's model by its timm name, with ImageNet weights from
    the configured file, and trains at odd sizes."""
    import mmpretrain  # noqa: F401  (the mmpretrain extra, installed with the OpenMMLab stack)
    cfg = Config.fromfile(path)
    recipe, scope = _recipe(path)
    init_default_scope(scope)
    model = MODELS.build(cfg.model)
    timm_model = model.backbone.timm_model
    assert type(timm_model.model if hasattr(timm_model, 'model') else timm_model).__module__.startswith(
        'efficientformer_timm')
    source = torch.load(cfg.model.backbone.pretrained_cfg_overlay.file, weights_only=True)
    stem_key = 'stem.conv1.weight' if 'l1' in path else 'stem.conv1.conv.weight'
    loaded = dict(timm_model.named_parameters())
    torch.testing.assert_close(loaded.get('model.' + stem_key, loaded.get(stem_key.replace('stem.', 'stem_'))),
                               source[stem_key], rtol=0, atol=0)
    if scope == 'mmdet':
        _detector_step(model)
    else:
        _segmentor_step(model)


def test_segmentor_loss_and_predict_at_odd_sizes():
    cfg = Config.fromfile(os.path.join(ROOT, 'mm_configs', 'toy', 'semfpn_l1_toy.py'))
    init_default_scope('mmseg')
    losses = _segmentor_step(MODELS.build(cfg.model), (200, 333))
    assert torch.isfinite(losses['decode.loss_ce'])


@pytest.mark.parametrize('name', ['efficientformer_l1', 'efficientformerv2_s0'])
def test_output_norms_follow_the_authors_by_default(name):
    backbone = EfficientFormerBackbone(name)
    if name.startswith('efficientformerv2'):
        assert backbone.model.feature_norms is None
        assert isinstance(EfficientFormerBackbone(name, feature_norm=True).model.feature_norms[0], torch.nn.BatchNorm2d)
    else:
        assert all(isinstance(n, torch.nn.GroupNorm) and n.num_groups == 1 for n in backbone.model.feature_norms)
        assert EfficientFormerBackbone(name, feature_norm=False).model.feature_norms is None


@pytest.mark.parametrize('name,feature_norm', [('efficientformer_l1', None), ('efficientformerv2_s0', True)])
def test_frozen_stages_and_norm_eval(name, feature_norm):
    backbone = EfficientFormerBackbone(name, frozen_stages=2, norm_eval=False, feature_norm=feature_norm)
    randomize_(backbone)
    backbone.train()
    norms = backbone.model.feature_norms
    frozen = [backbone.model.stem, backbone.model.stages[0], backbone.model.stages[1], norms[0], norms[1]]
    assert norms[2].training and all(p.requires_grad for p in norms[2].parameters())
    stats_before = [m.running_mean.clone() for f in frozen for m in f.modules()
                    if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not m.training for f in frozen for m in f.modules())
    assert backbone.model.stages[2].training
    outs = backbone(torch.randn(2, 3, 97, 131))
    sum(o.sum() for o in outs).backward()
    for module in frozen:
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())
    assert all(p.grad is not None for p in backbone.model.stages[2].parameters() if p.requires_grad)
    stats_after = [m.running_mean for f in frozen for m in f.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(stats_before, stats_after))

    held = EfficientFormerBackbone(name, norm_eval=True).train()
    bns = [m for m in held.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    before = [m.running_var.clone() for m in bns]
    held(torch.randn(2, 3, 64, 96))
    assert all(torch.equal(a, m.running_var) for a, m in zip(before, bns))


def test_backbone_outputs_at_non_multiple_of_32():
    backbone = EfficientFormerBackbone('efficientformer_l3', out_indices=(1, 2, 3)).eval()
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, 333, 517))
    assert [tuple(o.shape) for o in outs] == [(1, 128, 42, 65), (1, 320, 21, 33), (1, 512, 11, 17)]
    assert backbone.out_channels == [128, 320, 512]


def _fast_and_plain(name, **options):
    """The backbone as configs build it (channels_last, BatchNorm folded in eval) and the plain one, same weights,
    in float64 so that the paths' different summation orders stay far below the tolerances."""
    fast = randomize_(EfficientFormerBackbone(name, **options)).double()
    plain = EfficientFormerBackbone(name, channels_last=False, fold_bn_in_eval=False, **options).double()
    plain.load_state_dict(fast.state_dict())
    return fast, plain


def _assert_close(actual, expected, rtol, atol=0.):
    """Equal up to rtol of each tensor's largest magnitude (atol: for tensors that are zero in exact arithmetic,
    such as the gradient of a convolution bias that a training-mode BatchNorm subtracts again)."""
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape
        assert (a - e).abs().max() <= rtol * e.abs().max() + atol, ((a - e).abs().max(), e.abs().max())


@pytest.mark.parametrize('name', ['efficientformer_l1', 'efficientformerv2_s0'])
def test_fast_path_trains_like_the_plain_path(name):
    fast, plain = _fast_and_plain(name)
    first_conv = next(m for m in fast.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 97, 131, dtype=torch.float64)
    # the gradients of the stage outputs (NCHW maps) go back through the network in its channels_last layout
    grad_layouts = []

    def record_grad_layout(module, args, out):
        if out.dim() == 4:  # not V1's last stage, which outputs tokens
            out.register_hook(lambda grad: grad_layouts.append(grad.is_contiguous(memory_format=torch.channels_last)))

    for stage in fast.model.stages:
        stage.blocks[-1].register_forward_hook(record_grad_layout)
    # inside V2's attention too: the query and value maps, whose BatchNorms would otherwise mix layouts
    attention_maps = [m for a in fast.model.modules() if isinstance(a, (Attention2d, Attention2dDownsample))
                      for m in (a.q, a.v)]
    for module in attention_maps:
        module.register_forward_hook(record_grad_layout)
    outputs = []
    for backbone in (fast, plain):
        backbone.train()
        outs = backbone(x)
        sum((o * torch.linspace(-1, 1, o.shape[1]).view(1, -1, 1, 1)).square().mean() for o in outs).backward()
        outputs.append(outs)
    assert all(o.is_contiguous() for o in outputs[0])  # the layout necks and mmcv ops expect
    assert len(attention_maps) == (0 if name in V1_MODEL_NAMES else 10)
    assert grad_layouts == [True] * ((3 if name in V1_MODEL_NAMES else 4) + len(attention_maps))
    _assert_close(outputs[0], outputs[1], rtol=1e-9)
    plain_grads = dict(plain.named_parameters())
    for key, param in fast.named_parameters():
        _assert_close([param.grad], [plain_grads[key].grad], rtol=1e-8, atol=1e-15)
    # BatchNorm statistics were updated the same way
    plain_state = plain.state_dict()
    for key, value in fast.state_dict().items():
        if 'running_' in key:
            _assert_close([value], [plain_state[key]], rtol=1e-9)


@pytest.mark.parametrize('name', ['efficientformer_l1', 'efficientformerv2_s0'])
def test_fast_path_evaluates_like_the_plain_path_and_follows_weight_changes(name):
    fast, plain = _fast_and_plain(name, fixed_grid_bias_resolution=512)
    fast.eval(), plain.eval()
    keys = set(fast.state_dict())
    x = torch.randn(1, 3, 128, 160, dtype=torch.float64)
    with torch.no_grad():
        _assert_close(fast(x), plain(x), rtol=1e-9)
    folded = fast.folded_model()
    assert folded is not fast.model and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert set(fast.state_dict()) == keys  # the folded copy is not saved

    # new weights (a checkpoint loaded, or a training step in place) give a new folded copy
    other = randomize_(EfficientFormerBackbone(name, fixed_grid_bias_resolution=512), seed=1).double().state_dict()
    fast.load_state_dict(other), plain.load_state_dict(other)
    with torch.no_grad():
        _assert_close(fast(x), plain(x), rtol=1e-9)
        assert fast.folded_model() is not folded
        next(fast.model.parameters()).mul_(2), next(plain.model.parameters()).mul_(2)
        _assert_close(fast(x), plain(x), rtol=1e-9)

    # with gradients (eval-mode fine-tuning, saliency) the network itself runs and receives them
    sum(o.sum() for o in fast(x)).backward()
    assert all(p.grad is not None for p in fast.model.stages[-1].parameters())


def test_detector_with_the_fast_backbone_trains_and_predicts_like_the_plain_one():
    """The whole Mask R-CNN (FPN, RPN, mmcv's RoIAlign on the features) sees the same features either way."""
    from mmdet.testing import demo_mm_inputs
    cfg = Config.fromfile(os.path.join(ROOT, 'mm_configs', 'toy', 'maskrcnn_l1_toy.py'))
    init_default_scope('mmdet')
    torch.manual_seed(0)
    fast = MODELS.build(cfg.model)
    randomize_(fast.backbone)  # not the whole model: the data preprocessor's mean / std are unsaved buffers
    cfg.model.backbone.update(channels_last=False, fold_bn_in_eval=False)
    plain = MODELS.build(cfg.model)
    plain.load_state_dict(fast.state_dict())
    packed = demo_mm_inputs(2, [(3, 160, 224), (3, 192, 160)], num_items=[3, 2], num_classes=3, with_mask=True)
    losses = []
    for model in (fast, plain):
        torch.manual_seed(1)  # the same RPN / RoI samples
        losses.append(model(**model.data_preprocessor(packed, True), mode='loss'))
    for key, value in losses[1].items():
        if 'loss' in key:
            _assert_close(losses[0][key] if isinstance(value, list) else [losses[0][key]],
                          value if isinstance(value, list) else [value], rtol=1e-3)  # float32 layouts
    # evaluation: BatchNorm folded; the RoI head reads the features through mmcv's RoIAlign
    rois = torch.tensor([[0, 10., 20., 120., 150.], [1, 30., 5., 90., 180.]])
    outputs = []
    with torch.no_grad():
        for model in (fast.eval(), plain.eval()):
            features = model.extract_feat(model.data_preprocessor(packed, False)['inputs'])
            outputs.append([*features, *model.roi_head._bbox_forward(features, rois).values()])
    _assert_close(outputs[0], outputs[1], rtol=1e-4)


def test_fast_path_is_switched_off_in_the_config():
    cfg = Config.fromfile(os.path.join(ROOT, 'mm_configs', 'maskrcnn_l1.py'))
    assert cfg.model.backbone.get('channels_last', True) and cfg.model.backbone.get('fold_bn_in_eval', True)
    cfg.model.backbone.update(channels_last=False, fold_bn_in_eval=False, init_cfg=None)
    backbone = MODELS.build(cfg.model.backbone).eval()
    first_conv = next(m for m in backbone.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert not first_conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        backbone(torch.randn(1, 3, 64, 64))
    assert backbone._folded is None


def _init_backbone(name, path, prefix=None):
    init_cfg = dict(type='Pretrained', checkpoint=str(path))
    if prefix:
        init_cfg['prefix'] = prefix
    backbone = EfficientFormerBackbone(name, init_cfg=init_cfg)
    backbone.init_weights()
    return backbone


def _assert_backbone_matches(backbone, source):
    src = source.state_dict()
    for key, value in backbone.model.state_dict().items():
        if not key.startswith('feature_norms'):
            assert torch.equal(value, src[key]), key


@pytest.mark.parametrize('fmt', ['timm', 'original', 'transformers', 'mmdet'])
def test_init_cfg_loads_every_format(fmt, tmp_path):
    source = randomize_(timm.create_model('efficientformer_l1'))
    sd = source.state_dict()
    path = tmp_path / 'ckpt.pth'
    if fmt == 'timm':
        torch.save(sd, path)
    elif fmt == 'original':
        torch.save({'model': timm_to_original(sd)}, path)
    elif fmt == 'transformers':
        import transformers
        config = transformers.EfficientFormerConfig(hidden_size=448)
        hf = randomize_(transformers.EfficientFormerForImageClassificationWithTeacher(config))
        hf.save_pretrained(tmp_path / 'hf')
        from efficientformer_timm.transformers_compat import create_model_from_transformers
        source = create_model_from_transformers(tmp_path / 'hf')
        path = tmp_path / 'hf' / 'model.safetensors'
    else:  # an mmdet training checkpoint of this backbone, with optimizer state beside it
        trained = EfficientFormerBackbone('efficientformer_l1')
        trained.model.load_state_dict({k: v for k, v in sd.items() if not k.startswith('head')}, strict=False)
        torch.save({'meta': {'epoch': 1}, 'state_dict': {'backbone.' + k: v for k, v in trained.state_dict().items()},
                    'optimizer': {}}, path)
    backbone = _init_backbone('efficientformer_l1', path, prefix='backbone.' if fmt == 'mmdet' else None)
    _assert_backbone_matches(backbone, source)


def test_init_cfg_wrong_variant_and_missing_file(tmp_path):
    torch.save(timm.create_model('efficientformer_l3').state_dict(), tmp_path / 'l3.pth')
    with pytest.raises(CheckpointError, match=r'l3\.pth \(for efficientformer_l1\).*looks like efficientformer_l3'):
        _init_backbone('efficientformer_l1', tmp_path / 'l3.pth')
    with pytest.raises(FileNotFoundError, match=r'model\.backbone\.init_cfg\.checkpoint=.*nope\.pth.* does not exist'):
        _init_backbone('efficientformer_l1', tmp_path / 'nope.pth')
    with pytest.raises(ValueError, match=r"unknown model_name 'efficientformer_l2'.*efficientformer_l1"):
        EfficientFormerBackbone('efficientformer_l2')
    with pytest.raises(ValueError, match=r'out_indices \(1, 4\) must be stage indices in 0..3'):
        EfficientFormerBackbone(out_indices=(1, 4))


def _offline_hub(monkeypatch, cache):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)


def _cache_hub_weights(cache, repo_id, model):
    """``model``'s weights as the ``model.safetensors`` of hub repository ``repo_id`` in the Hugging Face cache
    folder ``cache``."""
    from safetensors.torch import save_file
    repo = cache / ('models--' + repo_id.replace('/', '--'))
    commit = '0123456789abcdef0123456789abcdef01234567'
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text(commit)
    (repo / 'snapshots' / commit).mkdir(parents=True)
    save_file(model.state_dict(), repo / 'snapshots' / commit / 'model.safetensors')


def test_init_cfg_hub_id_from_a_prepared_cache(tmp_path, monkeypatch):
    """timm's hub id, as the real configs name it, read from the Hugging Face cache with no network."""
    source = randomize_(timm.create_model('efficientformerv2_s0'))
    _cache_hub_weights(tmp_path, 'timm/efficientformerv2_s0.snap_dist_in1k', source)
    _offline_hub(monkeypatch, tmp_path)
    for checkpoint in ('timm/efficientformerv2_s0.snap_dist_in1k', 'hf-hub:timm/efficientformerv2_s0.snap_dist_in1k'):
        _assert_backbone_matches(_init_backbone('efficientformerv2_s0', checkpoint), source)


def test_init_cfg_hub_id_offline_without_cache(tmp_path, monkeypatch):
    _offline_hub(monkeypatch, tmp_path)
    backbone = EfficientFormerBackbone(
        'efficientformer_l1', init_cfg=dict(type='Pretrained', checkpoint='timm/efficientformer_l1.snap_dist_in1k'))
    message = (r"model\.backbone\.init_cfg\.checkpoint='timm/efficientformer_l1\.snap_dist_in1k': the weights are "
               r'not in the Hugging Face cache .* cannot be reached.*hf download timm/efficientformer_l1')
    with pytest.raises(FileNotFoundError, match=message):
        backbone.check_init_checkpoint()
    with pytest.raises(FileNotFoundError, match=message):
        backbone.init_weights()
    # online mode with the hub unreachable (a closed local port): the same error at once, no retries
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(constants, 'ENDPOINT', 'http://127.0.0.1:9')
    with pytest.raises(FileNotFoundError, match=message):
        backbone.check_init_checkpoint()


def _environment_variables_of_configs():
    """{config file: the environment variables it reads itself} over mm_configs/, bases included."""
    files = glob.glob(os.path.join(ROOT, 'mm_configs', '**', '*.py'), recursive=True)
    return {path: set(re.findall(r'\{\{\$(\w+):', open(path).read())) for path in sorted(files)}


def test_every_config_reads_its_documented_defaults_with_no_variable_set(monkeypatch):
    """With none of the configs' environment variables set, every config that reads one parses (mmengine refuses
    an empty default) and names timm's hub weights and the default data folders (a base's own variables are
    read through the configs that inherit it)."""
    variables = _environment_variables_of_configs()
    for name in set().union(*variables.values()):
        monkeypatch.delenv(name, raising=False)
    readers = [path for path, names in variables.items() if names and os.sep + '_base_' + os.sep not in path]
    assert len(readers) == 22  # the 18 model configs, the two mmpretrain ones and the two toy ones
    for path in readers:
        cfg = Config.fromfile(path)
        backbone = cfg.model.backbone
        hub_id = f'timm/{backbone.model_name}.snap_dist_in1k'
        if backbone.type == 'mmpretrain.TIMMBackbone':
            assert backbone.pretrained and backbone.pretrained_cfg_overlay == dict(hf_hub_id=hub_id), path
        elif os.sep + 'toy' + os.sep in path:
            assert backbone.init_cfg is None, path  # trained from scratch
        else:
            assert backbone.init_cfg.checkpoint == hub_id, path
        toy = os.sep + 'toy' + os.sep in path
        expected_root = {'mmdet': 'demo_out/toy_coco/' if toy else 'data/coco/',
                         'mmseg': 'demo_out/toy_ade20k' if toy else 'data/ade/ADEChallengeData2016'}
        assert cfg.train_dataloader.dataset.data_root == expected_root[_recipe(path)[1]], path


@pytest.mark.parametrize('name', ['efficientformer_l1', 'efficientformerv2_s1'])
def test_frozen_stages_stay_bit_identical_through_training(name):
    from efficientformer_timm.mm import EfficientFormerBackbone
    backbone = randomize_(EfficientFormerBackbone(name, frozen_stages=2)).train()
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()
              if k.startswith(('model.stem.', 'model.stages.0.', 'model.stages.1.'))}
    trainable = {k: v.clone() for k, v in backbone.state_dict().items() if k.startswith('model.stages.3.')}
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=1e-2, weight_decay=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        sum(o.square().mean() for o in backbone(torch.randn(2, 3, 96, 128))).backward()
        optimizer.step()
    state = backbone.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert any(not torch.equal(state[k], v) for k, v in trainable.items())


def test_invalid_loss_stops_before_checkpoint():
    from mmengine.hooks import CheckpointHook
    from mmengine.registry import HOOKS
    from mmengine.runner.priority import get_priority
    from efficientformer_timm.mm import StopOnInvalidLossHook
    hook = HOOKS.build(dict(type='StopOnInvalidLossHook'))
    assert get_priority(hook.priority) < get_priority(CheckpointHook.priority)

    class FakeRunner:
        iter, work_dir = 41, '/work_dirs/run'
    hook.after_train_iter(FakeRunner(), 0, outputs={'loss': torch.tensor(1.5)})
    with pytest.raises(RuntimeError, match=r'loss is nan at iteration 42: training stopped before writing'):
        hook.after_train_iter(FakeRunner(), 0, outputs={'loss': torch.tensor(float('nan'))})
    assert isinstance(hook, StopOnInvalidLossHook)


def test_neck_channel_mismatch_fails_at_build(tmp_path):
    from mmengine.config import Config
    from efficientformer_timm.mm import EfficientFormerRunner
    cfg = Config.fromfile(os.path.join(os.path.dirname(__file__), '..', 'mm_configs', 'toy', 'maskrcnn_l1_toy.py'))
    cfg.model.neck.in_channels = [64, 128, 320, 512]
    cfg.work_dir = str(tmp_path)
    with pytest.raises(ValueError, match=r'model\.neck\.in_channels=\[64, 128, 320, 512\] does not match .*'
                                         r'efficientformer_l1 .* gives \[48, 96, 224, 448\]'):
        EfficientFormerRunner.from_cfg(cfg)


def test_missing_init_checkpoint_fails_when_the_runner_builds(tmp_path):
    """A training run from the backbone's ImageNet weights fails at build; `mim test` (load_from set) does not."""
    from mmengine.config import Config
    from efficientformer_timm.mm import EfficientFormerRunner
    cfg = Config.fromfile(os.path.join(os.path.dirname(__file__), '..', 'mm_configs', 'maskrcnn_l1.py'))
    cfg.model.backbone.init_cfg.checkpoint = str(tmp_path / 'missing.safetensors')
    cfg.work_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"model\.backbone\.init_cfg\.checkpoint='.*missing\.safetensors' "
                                                r"does not exist.*tools/convert_checkpoint\.py"):
        EfficientFormerRunner.from_cfg(cfg)
    cfg.load_from = str(tmp_path / 'detector.pth')  # what tools/test.py sets from --checkpoint
    assert isinstance(EfficientFormerRunner.from_cfg(cfg), EfficientFormerRunner)


# glibc's own statistics before and after the setting, in a process of its own (the setting lasts for the process)
_LARGE_BLOCKS = """
import ctypes, json
from efficientformer_timm.mm.runner import keep_freed_cpu_memory

class Mallinfo2(ctypes.Structure):  # malloc.h
    _fields_ = [(name, ctypes.c_size_t) for name in (
        'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks', 'fordblks', 'keepcost')]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def large_block():
    # a 64 MB block: bytes it adds to the separately mapped blocks and to the heap's used bytes, then the change of
    # the heap's size when it is freed
    before = libc.mallinfo2()
    block = libc.malloc(64 << 20)
    held = libc.mallinfo2()
    libc.free(block)
    after = libc.mallinfo2()
    return held.hblkhd - before.hblkhd, held.uordblks - before.uordblks, after.arena - held.arena
print(json.dumps([large_block(), keep_freed_cpu_memory(), large_block()]))
"""


def test_keeping_freed_cpu_memory_serves_large_blocks_from_a_heap_never_trimmed():
    """glibc maps a block over 32 MB on its own and unmaps it when freed; kept, the block comes from the heap and
    freeing it leaves the heap its size."""
    import json
    env = {k: v for k, v in os.environ.items() if not k.startswith(('MALLOC_', 'GLIBC_TUNABLES'))}
    done = subprocess.run([sys.executable, '-c', _LARGE_BLOCKS], capture_output=True, text=True, check=True, env=env)
    default, applied, kept = json.loads(done.stdout.splitlines()[-1])
    assert default[0] >= 64 << 20 and default[1] == 0, default
    assert applied is True
    assert kept[0] == 0 and kept[1] >= 64 << 20 and kept[2] == 0, kept


@pytest.mark.parametrize('setting', [None, True, False])
def test_runner_keeps_freed_cpu_memory_unless_switched_off(tmp_path, monkeypatch, setting):
    from mmengine.config import Config
    from efficientformer_timm.mm import EfficientFormerRunner, runner
    calls = []
    monkeypatch.setattr(runner, 'keep_freed_cpu_memory', lambda: calls.append(1) or True)
    cfg = Config.fromfile(os.path.join(ROOT, 'mm_configs', 'toy', 'maskrcnn_l1_toy.py'))
    cfg.work_dir = str(tmp_path)
    # mmengine names a run's logger by the second it started and reuses a logger of the same name, log file
    # included: a name of its own keeps each case's log apart
    cfg.experiment_name = f'keep_freed_cpu_memory_{setting}_{tmp_path.name}'
    if setting is not None:
        cfg.env_cfg.keep_freed_cpu_memory = setting
    built = EfficientFormerRunner.from_cfg(cfg)
    assert calls == ([] if setting is False else [1])
    assert built.logger.log_file.startswith(str(tmp_path))
    with open(built.logger.log_file) as log:
        applied = 'env_cfg.keep_freed_cpu_memory: glibc keeps freed memory for reuse' in log.read()
    assert applied == (setting is not False)


# ---- the authors' trained detectors and segmenters: their bias scheme, their checkpoints ----

def _authors_offset_index(side, query_side=None):
    """Their index, built as their downstream attentions build it: offsets numbered in order of first appearance
    over all (query, key) point pairs, row-major; queries on every second point for the downsampling attention."""
    step = math.ceil(side / query_side) if query_side else 1
    keys = torch.cartesian_prod(torch.arange(side), torch.arange(side))
    queries = torch.cartesian_prod(torch.arange(query_side or side), torch.arange(query_side or side)) * step
    offsets = (queries[:, None] - keys[None]).abs()  # (queries, keys, (dy, dx))
    codes = (offsets[..., 0] * 2 * side + offsets[..., 1]).flatten()
    unique, inverse = torch.unique(codes, return_inverse=True)
    first_seen = torch.full((len(unique),), len(codes)).scatter_reduce(0, inverse, torch.arange(len(codes)), 'amin')
    number = torch.empty_like(first_seen)
    number[torch.argsort(first_seen)] = torch.arange(len(unique))
    return number[inverse].view(len(queries), len(keys))


def _authors_bias(table, side, grid, downsample):
    """Their bias at a real key grid: the whole fixed-grid matrix resized bicubically (no antialias)."""
    index = _authors_offset_index(side, math.ceil(side / 2) if downsample else None)
    queries = math.ceil(grid[0] / 2) * math.ceil(grid[1] / 2) if downsample else grid[0] * grid[1]
    return F.interpolate(table[:, index].unsqueeze(0), size=(queries, grid[0] * grid[1]), mode='bicubic')[0]


def _authors_side(name, module_name, resolution):
    """Their fixed grid side per attention: ceil(resolution / 32) for V1; for V2 ceil(resolution / 2**(i+2)) for
    stage i, halved (ceil) for the strided attention of stage 2, the previous stage's for the downsample one."""
    if 'v2' not in name:
        return math.ceil(resolution / 32)
    stage = int(re.match(r'stages\.(\d)', module_name).group(1))
    if 'downsample' in module_name:
        return math.ceil(resolution / 2 ** (stage + 1))
    side = math.ceil(resolution / 2 ** (stage + 2))
    return math.ceil(side / 2) if stage == 2 else side


@pytest.mark.parametrize('name', ['efficientformer_l1', 'efficientformerv2_s0'])
@pytest.mark.parametrize('resolution', [800, 512])
def test_fixed_grid_bias_is_the_authors_scheme(name, resolution):
    backbone = randomize_(EfficientFormerBackbone(name, fixed_grid_bias_resolution=resolution)).eval()
    attentions = {n: m for n, m in backbone.model.named_modules() if isinstance(m, GridAttentionBias)}
    assert attentions
    for module_name, module in attentions.items():
        side = _authors_side(name, module_name, resolution)
        assert module.table_size == (side, side), module_name
        downsample = 'downsample' in module_name
        for grid in [(side, side), (25, 42), (16, 16), (13, 21)]:
            if downsample:
                grid = (grid[0] * 2, grid[1] * 2)
            expected = _authors_bias(module.attention_biases.detach(), side, grid, downsample)
            torch.testing.assert_close(module.attention_bias(grid, torch.float32), expected, rtol=1e-5, atol=1e-5)


def test_fixed_grid_bias_starts_from_the_imagenet_table(tmp_path):
    """ImageNet weights load into the fixed-grid backbone: each 7x7 table resized to the fixed grid."""
    source = randomize_(timm.create_model('efficientformer_l1'))
    path = str(tmp_path / 'in1k.pth')
    torch.save(source.state_dict(), path)
    backbone = EfficientFormerBackbone('efficientformer_l1', fixed_grid_bias_resolution=800,
                                       init_cfg=dict(type='Pretrained', checkpoint=path))
    backbone.init_weights()
    table = backbone.model.stages[3].blocks[4].token_mixer.attention_biases
    expected = resize_offset_table(source.stages[3].blocks[4].token_mixer.attention_biases, (7, 7), (25, 25))
    assert table.shape == (8, 625)
    torch.testing.assert_close(table, expected)


def _authors_checkpoint(model):
    """A whole-model checkpoint in the layout of the authors' releases, holding ``model``'s weights: backbone in
    their original layout, the fixed-grid set as attention_biases_seg / attention_bias_idxs_seg beside the
    classification-sized buffers their forward never reads; neck and heads under their mmdet 2 / mmseg 0 names."""
    state = model.state_dict()
    backbone = {k[len('backbone.model.'):]: v for k, v in state.items() if k.startswith('backbone.model.')}
    out = {}
    for key, value in timm_to_original(backbone).items():
        if key.endswith(('attention_biases', 'attention_bias_idxs')):
            out[f'backbone.{key}_seg'] = value
            keys = 196 if '.attn.' in key else 49
            out['backbone.' + key] = (torch.zeros(value.shape[0], keys) if key.endswith('attention_biases')
                                      else torch.ones(49, keys, dtype=torch.long))
        else:
            out['backbone.' + key] = value
    out.update({k: v for k, v in state.items() if not k.startswith('backbone.')})
    return out


def _released_model(config, random_weights=False):
    cfg = Config.fromfile(os.path.join(ROOT, 'mm_configs', 'released', config))
    init_default_scope('mmdet' if config.startswith('maskrcnn') else 'mmseg')
    model = MODELS.build(cfg.model).eval()
    if random_weights:  # not the data preprocessor's mean / std, which no checkpoint holds
        for seed, (name, child) in enumerate(model.named_children()):
            if name != 'data_preprocessor':
                randomize_(child, seed)
    return model


def _outputs(model, size):
    torch.manual_seed(1)
    if hasattr(model, 'roi_head'):
        from mmdet.testing import demo_mm_inputs
        packed = demo_mm_inputs(1, [(3, *size)], num_items=[2], num_classes=80, with_mask=True)
        data = model.data_preprocessor(packed, False)
        with torch.no_grad():
            feats = model.extract_feat(data['inputs'])
            result = model(**data, mode='predict')[0].pred_instances
        return list(feats) + [result.bboxes, result.scores, result.masks.float()]
    inputs = torch.randn(1, 3, *size)
    with torch.no_grad():
        return list(model.extract_feat(inputs)) + [model.encode_decode(inputs, [dict(img_shape=size)])]


RELEASED = ['maskrcnn_l1_coco.py', 'maskrcnn_v2_s0_coco.py', 'semfpn_l1_ade20k.py', 'semfpn_v2_s0_ade20k.py']


def test_every_model_has_both_released_configs():
    names = set(os.listdir(os.path.join(ROOT, 'mm_configs', 'released')))
    assert names == {f'{p}_{t}_{d}.py' for t in ('l1', 'l3', 'l7', 'v2_s0', 'v2_s1', 'v2_s2', 'v2_l')
                     for p, d in (('maskrcnn', 'coco'), ('semfpn', 'ade20k'))}
    for name in names:
        cfg = Config.fromfile(os.path.join(ROOT, 'mm_configs', 'released', name))
        assert cfg.model.backbone.fixed_grid_bias_resolution == (800 if name.startswith('maskrcnn') else 512)
        assert cfg.model.backbone.init_cfg is None


@pytest.mark.slow
@pytest.mark.parametrize('config', RELEASED)
def test_authors_checkpoint_converts_to_the_released_config(config, tmp_path):
    source = _released_model(config, random_weights=True)
    src = str(tmp_path / 'authors.pth')
    torch.save({'meta': {'mmdet_version': '2.19.0'}, 'state_dict': _authors_checkpoint(source)}, src)
    assert convert_file(src, str(tmp_path / 'converted.pth')) == os.path.realpath(
        os.path.join(ROOT, 'mm_configs', 'released', config))
    converted = _released_model(config)
    load_checkpoint(converted, str(tmp_path / 'converted.pth'), strict=True)
    # the input size their bias grid was made for (800 for COCO, 512 for ADE20K), and an odd one
    resolution = 800 if config.startswith('maskrcnn') else 512
    for size in [(resolution, resolution), (333, 517)]:
        for ours, theirs in zip(_outputs(converted, size), _outputs(source, size)):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_released_checkpoint_errors(tmp_path):
    authors = _authors_checkpoint(_released_model('maskrcnn_l1_coco.py', random_weights=True))
    src = str(tmp_path / 'authors.pth')
    out = str(tmp_path / 'out.pth')
    torch.save({'state_dict': authors}, src)
    with pytest.raises(CheckpointError, match=r'backbone: .*tensors do not match the model.* looks like '
                                              r'efficientformer_l1'):
        convert_file(src, out, 'efficientformer_l3')
    truncated = {k: v for k, v in authors.items() if not k.startswith('roi_head.mask_head.')}
    torch.save({'state_dict': truncated}, src)
    with pytest.raises(CheckpointError, match=r'missing from the checkpoint \(truncated\?\): \[.roi_head\.mask_head\.'):
        convert_file(src, out)
    no_seg = {k.replace('attention_biases_seg', 'x').replace('attention_bias_idxs_seg', 'y'): v
              for k, v in authors.items()}
    torch.save({'state_dict': no_seg}, src)
    with pytest.raises(CheckpointError, match='no attention_biases_seg tables'):
        convert_file(src, out)
    assert sorted(os.listdir(tmp_path)) == ['authors.pth']


@pytest.mark.parametrize('config', ['upernet_l1_ade20k.py', 'upernet_v2_s2_ade20k.py'])
def test_upernet_recipe_decays_no_norm_and_no_attention_bias(config):
    """The recipe's promise, in the optimizer it builds: every parameter of every normalisation layer (found by
    type, whatever its name: V2's BatchNorms are ``.bn``, ``.norm1``, ...) and every attention bias table is in a
    group without weight decay; convolution and linear weights keep the recipe's decay."""
    from mmengine.optim import build_optim_wrapper
    from torch import nn
    from torch.nn.modules.batchnorm import _BatchNorm
    cfg = Config.fromfile(os.path.join(ROOT, 'mm_configs', config))
    cfg.model.backbone.init_cfg = None
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    decay = {id(p): group['weight_decay'] for group in optimizer.param_groups for p in group['params']}
    assert len(decay) == len(list(model.parameters()))
    norms = [(name, p) for name, m in model.named_modules() if isinstance(m, (_BatchNorm, nn.LayerNorm, nn.GroupNorm))
             for p in m.parameters(recurse=False)]
    biases = [(name, m.attention_biases) for name, m in model.named_modules() if isinstance(m, GridAttentionBias)]
    weights = [(name, m.weight) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    backbone_norms = {type(m) for m in model.backbone.modules() if isinstance(m, (_BatchNorm, nn.LayerNorm))}
    assert nn.BatchNorm2d in backbone_norms and biases and weights
    assert [name for name, p in norms + biases if decay[id(p)] != 0] == []
    assert {decay[id(p)] for _, p in weights} == {cfg.optim_wrapper.optimizer.weight_decay} == {0.01}


@pytest.mark.parametrize('path', MMPRETRAIN_CONFIGS, ids=os.path.basename)
def test_mmpretrain_configs_take_timm_hub_weights_with_no_variable_set(path, tmp_path, monkeypatch, request):
    """Unset, the checkpoint variable leaves timm's hub repository to timm: offline with no cached copy the build
    fails with huggingface_hub's message; with the repository in the Hugging Face cache its weights load."""
    import mmpretrain  # noqa: F401  (the mmpretrain extra, installed with the OpenMMLab stack)
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    from huggingface_hub.utils import reset_sessions
    for name in set().union(*_environment_variables_of_configs().values()):
        monkeypatch.delenv(name, raising=False)
    cfg = Config.fromfile(path)
    init_default_scope(_recipe(path)[1])
    name = cfg.model.backbone.model_name
    _offline_hub(monkeypatch, tmp_path)
    reset_sessions()  # timm's download opens a session in offline mode: no request leaves the machine
    request.addfinalizer(reset_sessions)  # later requests open a session in the mode restored by then
    with pytest.raises(LocalEntryNotFoundError, match='cannot find the requested files in the local cache') as error:
        MODELS.build(cfg.model.backbone)
    assert isinstance(error.value.__cause__, OfflineModeIsEnabled)
    source = randomize_(timm.create_model(name))
    _cache_hub_weights(tmp_path, f'timm/{name}.snap_dist_in1k', source)
    timm_model = MODELS.build(cfg.model.backbone).timm_model
    source = dict(source.named_parameters())
    for key, value in timm_model.named_parameters():
        # the getter wrapper keeps the network as .model; FeatureListNet flattens stem / stages (stages_0.blocks...)
        key = key[len('model.'):] if key.startswith('model.') else key.replace('_', '.', 1)
        torch.testing.assert_close(value, source[key], rtol=0, atol=0)
