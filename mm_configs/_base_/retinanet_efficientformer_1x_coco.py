# RetinaNet 1x on COCO with an EfficientFormer backbone: mmdet's 1x schedule (12 epochs, lr steps at 8 and 11,
# linear warm-up 500 iterations, 1333x800) with AdamW 1e-4, weight decay 1e-4, as mmdet trains RetinaNet on
# transformer backbones (PVT), on mmdet's own bases.
# Assumes 8 GPUs x 2 images (total batch 16); with another total batch add --auto-scale-lr and mmengine
# scales lr linearly from base_batch_size=16.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
    './efficientformer_runtime.py',
]

data_root = '{{$COCO_ROOT:data/coco/}}'

# the neck starts at stage 1 (stride 8) and adds two levels on its input, as for RetinaNet on ResNet / PVT
model = dict(
    backbone={{_base_.efficientformer_backbone}},
    neck=dict(in_channels=[48, 96, 224, 448], start_level=1, add_extra_convs='on_input'))

train_dataloader = dict(batch_size=2, num_workers=2, dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, weight_decay=1e-4))
auto_scale_lr = dict(enable=False, base_batch_size=16)
