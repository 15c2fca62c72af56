# A few-minute CPU run of the real Semantic FPN L1 config on the synthetic set in ADE20K's folder layout written by
# tools/make_synthetic_data.py (256px images; every pixel labelled: background, square, disc, triangle).
# Used by `make demo` and the tests.
_base_ = ['../semfpn_l1_ade20k.py']

data_root = '{{$TOY_ADE20K_ROOT:demo_out/toy_ade20k}}'
crop_size = (256, 256)
metainfo = dict(classes=('background', 'square', 'disc', 'triangle'),
                palette=[[70, 70, 70], [220, 20, 60], [0, 160, 80], [30, 90, 230]])

# A narrower neck and head than the recipe's (256 / 128) keep a CPU iteration near a second.
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=None),  # no ImageNet weights offline: train from scratch
    neck=dict(out_channels=64),
    decode_head=dict(in_channels=[64] * 4, channels=32, num_classes=len(metainfo['classes'])))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
# background is a class here (ADE20K's own label 0 is ignored): the generic dataset with the toy's classes
toy_dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=metainfo, img_suffix='.jpg',
                   seg_map_suffix='.png', reduce_zero_label=False)
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, **toy_dataset, pipeline=train_pipeline,
                 data_prefix=dict(img_path='images/training', seg_map_path='annotations/training')))
val_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, **toy_dataset, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation')))
test_dataloader = val_dataloader

max_iters = 200
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=max_iters, by_epoch=False)]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=2))
randomness = dict(seed=0)
