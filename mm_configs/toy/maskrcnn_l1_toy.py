# A few-minute CPU run of the real Mask R-CNN L1 config on the synthetic COCO-format set written by
# tools/make_synthetic_data.py (3 shape classes of random colours, 256px images). Used by `make demo` and the tests.
_base_ = ['../maskrcnn_l1.py']

data_root = '{{$TOY_COCO_ROOT:demo_out/toy_coco/}}'
metainfo = dict(classes=('square', 'disc', 'triangle'), palette=[(220, 20, 60), (0, 160, 80), (30, 90, 230)])
image_scale = (256, 256)

# Narrower neck and heads and fewer sampled boxes than the 1x recipe keep a CPU iteration near a second.
toy_channels = 64
model = dict(
    backbone=dict(init_cfg=None),  # no ImageNet weights offline: train from scratch
    neck=dict(out_channels=toy_channels),
    rpn_head=dict(in_channels=toy_channels, feat_channels=toy_channels),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=toy_channels),
        bbox_head=dict(in_channels=toy_channels, fc_out_channels=256, num_classes=3),
        mask_roi_extractor=dict(out_channels=toy_channels),
        mask_head=dict(in_channels=toy_channels, conv_out_channels=toy_channels, num_classes=3)),
    train_cfg=dict(rpn=dict(sampler=dict(num=128)), rcnn=dict(sampler=dict(num=128))))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

max_iters = 300
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters, milestones=[int(max_iters * 0.8)]),
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
