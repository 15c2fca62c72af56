"""The other doors into dense prediction: segmentation_models_pytorch's ``tu-`` encoders and torchvision's detection
models, each trained a step on small inputs."""
import pytest
import segmentation_models_pytorch as smp  # the smp extra, part of the test extra on both stacks
import timm
import torch

from efficientformer_timm.torchvision import efficientformer_fpn_backbone
from helpers import randomize_


def _train_step(model, x, target):
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    before = [p.detach().clone() for p in model.encoder.parameters()]
    output = model(x)
    assert output.shape == target.shape
    loss = torch.nn.functional.cross_entropy(output, target.argmax(1))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.encoder.parameters()))  # the encoder trained


# DeepLabV3 runs its encoder at output_stride 8, DeepLabV3+ at 16: the dilated stages
@pytest.mark.parametrize('arch,output_stride', [('Unet', 32), ('FPN', 32), ('UPerNet', 32), ('Segformer', 32),
                                                ('DeepLabV3', 8), ('DeepLabV3Plus', 16)])
@pytest.mark.parametrize('encoder', ['tu-efficientformer_l1', 'tu-efficientformerv2_s0'])
def test_smp_models_train_with_tu_encoders(arch, output_stride, encoder):
    model = getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=3)
    assert model.encoder.model.feature_info.reduction()[-1] == output_stride
    x = torch.randn(2, 3, 128, 160)
    _train_step(model, x, torch.randn(2, 3, 128, 160))


def test_smp_encoder_takes_pretrained_weights_unchanged_at_output_stride_8(tmp_path):
    """smp's `tu-` encoders load timm's pretrained weights: the dilated encoder takes them as they are."""
    reference = randomize_(timm.create_model('efficientformerv2_s0'))
    path = tmp_path / 'weights.pth'
    torch.save(reference.state_dict(), path)
    # encoder_weights='imagenet' asks timm for pretrained weights: here a local file instead of the hub
    model = smp.DeepLabV3('tu-efficientformerv2_s0', encoder_weights='imagenet', classes=2,
                          pretrained_cfg_overlay=dict(file=str(path)))
    encoder = timm.create_model('efficientformerv2_s0', features_only=True, output_stride=8, pretrained=True,
                                pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(model.encoder.model.state_dict(), encoder.state_dict(), rtol=0, atol=0)
    torch.testing.assert_close(model.encoder.model.stages_3.downsample.attn.attention_biases,
                               reference.stages[3].downsample.attn.attention_biases, rtol=0, atol=0)


def _detection_batch():
    images = [torch.rand(3, 150, 200), torch.rand(3, 170, 130)]  # two sizes: torchvision pads them to one batch
    targets = [
        dict(boxes=torch.tensor([[10., 20., 90., 120.]]), labels=torch.tensor([1]),
             masks=torch.zeros(1, 150, 200, dtype=torch.uint8)),
        dict(boxes=torch.tensor([[5., 5., 60., 100.], [30., 40., 120., 160.]]), labels=torch.tensor([2, 1]),
             masks=torch.ones(2, 170, 130, dtype=torch.uint8)),
    ]
    targets[0]['masks'][0, 20:120, 10:90] = 1
    return images, targets


def test_torchvision_mask_rcnn_trains_and_predicts():
    from torchvision.models.detection import MaskRCNN
    backbone = efficientformer_fpn_backbone('efficientformerv2_s0', trainable_layers=3)
    assert backbone.out_channels == 256
    # few proposals and detections: the step, not the throughput, is checked
    model = MaskRCNN(backbone, num_classes=3, min_size=160, max_size=224, rpn_pre_nms_top_n_train=100,
                     rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
                     box_batch_size_per_image=32, box_detections_per_img=5)
    images, targets = _detection_batch()
    model.train()
    losses = model(images, targets)
    assert set(losses) == {'loss_classifier', 'loss_box_reg', 'loss_mask', 'loss_objectness', 'loss_rpn_box_reg'}
    sum(losses.values()).backward()
    assert backbone.body.stages_3.blocks[0].mlp.fc1.conv.weight.grad is not None
    assert backbone.body.stem_conv1.conv.weight.grad is None  # outside the 3 trainable layers
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert [d['masks'].shape[-2:] for d in detections] == [(150, 200), (170, 130)]
    assert all(d['boxes'].shape[1] == 4 for d in detections)


@pytest.mark.parametrize('name', ['efficientformer_l1', 'efficientformerv2_s0'])
@pytest.mark.parametrize('trainable_layers,trained', [(0, set()), (2, {'stages.2', 'stages.3'}),
                                                      (5, {'stem', 'stages.0', 'stages.1', 'stages.2', 'stages.3'})])
def test_fpn_backbone_trains_the_last_layers(name, trainable_layers, trained):
    backbone = efficientformer_fpn_backbone(name, trainable_layers=trainable_layers, returned_layers=[2, 3, 4])
    assert list(backbone.body.feature_info.reduction()) == [8, 16, 32]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.body.modules())  # frozen statistics
    trainable = {name for name, param in backbone.body.named_parameters() if param.requires_grad}
    for layer in ['stem', 'stages.0', 'stages.1', 'stages.2', 'stages.3']:
        prefix = ('model.' + layer) if 'v2' not in name else layer.replace('.', '_')
        in_layer = {n for n, _ in backbone.body.named_parameters() if n.startswith(prefix)}
        assert in_layer and (in_layer <= trainable if layer in trained else not in_layer & trainable), layer
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 96, 130))
    assert list(maps) == ['0', '1', '2', 'pool'] and all(m.shape[1] == 256 for m in maps.values())
    assert [tuple(m.shape[-2:]) for m in maps.values()] == [(12, 17), (6, 9), (3, 5), (2, 3)]


def test_fpn_backbone_refuses_bad_layers():
    with pytest.raises(ValueError, match='trainable_layers must be between 0 and 5'):
        efficientformer_fpn_backbone('efficientformer_l1', trainable_layers=6)
    with pytest.raises(ValueError, match='returned_layers must be stages 1 to 4'):
        efficientformer_fpn_backbone('efficientformer_l1', returned_layers=[0, 1])
