# Semantic FPN on ADE20K with an EfficientFormer backbone: the paper's recipe (AdamW 2e-4, poly power 0.9,
# 40k iterations, 512x512 crops, 150 classes) on mmseg's own bases.
# Assumes 8 GPUs x 4 images (total batch 32); with another total batch add
# --cfg-options auto_scale_lr.enable=True and mmengine scales lr linearly from base_batch_size=32.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/schedules/schedule_40k.py',
    'mmseg::_base_/default_runtime.py',
    './efficientformer_runtime.py',
]

data_root = '{{$ADE20K_ROOT:data/ade/ADEChallengeData2016}}'
crop_size = (512, 512)

model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone={{_base_.efficientformer_backbone}},
    neck=dict(in_channels=[48, 96, 224, 448]),
    decode_head=dict(num_classes=150))

train_dataloader = dict(batch_size=4, dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader

optim_wrapper = dict(
    _delete_=True, type='OptimWrapper', optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4))
param_scheduler = [dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=40000, by_epoch=False)]
auto_scale_lr = dict(enable=False, base_batch_size=32)
