# UperNet on ADE20K with an EfficientFormer backbone: mmseg's 160k recipe for transformer backbones (AdamW 6e-5,
# weight decay 0.01 with none on norms and attention biases, linear warm-up 1500 iterations then poly decay, 512x512
# crops, 150 classes) on mmseg's own bases.
# Assumes 8 GPUs x 2 images (total batch 16); with another total batch add
# --cfg-options auto_scale_lr.enable=True and mmengine scales lr linearly from base_batch_size=16.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/schedules/schedule_160k.py',
    'mmseg::_base_/default_runtime.py',
    './efficientformer_runtime.py',
]

data_root = '{{$ADE20K_ROOT:data/ade/ADEChallengeData2016}}'
crop_size = (512, 512)

model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone={{_base_.efficientformer_backbone}},
    decode_head=dict(in_channels=[48, 96, 224, 448], num_classes=150),
    auxiliary_head=dict(in_channels=224, num_classes=150))

train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader

optim_wrapper = dict(
    _delete_=True, type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    # no decay on any normalisation layer, found by type whatever its name (V2's BatchNorms are .bn, .norm1, ...),
    # nor on the attention bias tables; other biases keep it, as in mmseg's Swin recipe
    paramwise_cfg=dict(norm_decay_mult=0., custom_keys={'attention_biases': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, begin=1500, end=160000, by_epoch=False),
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
