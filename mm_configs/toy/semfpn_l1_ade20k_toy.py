# A few-minute CPU run of the real Semantic FPN L1 config on the synthetic ADE20K-layout set written by
# tools/make_synthetic_data.py (shapes labelled 1..3, 256px images). Used by `make demo` and the tests.
_base_ = ['../semfpn_l1_ade20k.py']

data_root = '{{$TOY_ADE20K_ROOT:demo_out/toy_ade20k}}'
crop_size = (256, 256)

# A narrower neck and head than the recipe's (256 / 128) keep a CPU iteration near a second.
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=None),  # no ImageNet weights offline: train from scratch
    neck=dict(out_channels=64),
    # most pixels are 'other' (ignored): average the loss over labelled pixels only
    decode_head=dict(in_channels=[64] * 4, channels=32, loss_decode=dict(avg_non_ignore=True)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 100
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=max_iters, by_epoch=False)]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=2))
randomness = dict(seed=0)
