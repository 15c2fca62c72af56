"""`make demo` (``tools/demo.py``): the main job on built-in synthetic data, no downloads.

For Mask R-CNN (mm_configs/toy/maskrcnn_l1_toy.py) and Semantic FPN (mm_configs/toy/semfpn_l1_toy.py), both
inheriting the real EfficientFormer-L1 configs:
1. writes a small synthetic set of shapes (square, disc, triangle; ``efficientformer_timm.synthetic``): in COCO
   format with random colours, so that only the shape tells the class, or in ADE20K's folder layout with
   background as a class and a range of hues per class;
2. saves the freshly initialised model and evaluates it (COCO box mAP / mIoU over all classes, background
   included);
3. trains that same model on the CPU with the Runner `mim train` runs (the equivalent command is printed) and
   evaluates it again;
4. draws one picture per validation image: input | ground truth | prediction, with class names and a legend
   (mmdet's and mmseg's visualizers);
5. checks that the model learned: the trained model must close at least LEARNED_GAP of the gap between the
   untrained model's score and a perfect one. A model trained for a few iterations fails this check.

``run_demo(out, tasks, iters)`` returns 1 when a model did not learn. Outputs go to ``out`` (pictures in
``out/<task>/pictures/``).
"""
import dataclasses
import os
import sys

from mmengine.config import Config
from mmengine.runner import save_checkpoint
from mmengine.runner.checkpoint import weights_to_cpu

from ..synthetic import make_ade20k, make_coco
from .configs import config_path
from .runner import EfficientFormerRunner

# the fraction of the way from the untrained model's score to a perfect score that the trained model must cover
LEARNED_GAP = 0.75


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    framework: str
    config: str  # relative to mm_configs/ (config_path)
    data_kind: str  # the synthetic set: 'coco' or 'ade20k'
    data_env: str  # the variable the toy config reads its data root from
    metric: str
    perfect: float  # the metric's best value

    @property
    def title(self):
        return f'{"Mask R-CNN" if self.framework == "mmdet" else "Semantic FPN"} + EfficientFormer-L1'


TASKS = {
    'detection': Task('detection', 'mmdet', 'toy/maskrcnn_l1_toy.py', 'coco', 'TOY_COCO_ROOT',
                      'coco/bbox_mAP', 1.0),
    'segmentation': Task('segmentation', 'mmseg', 'toy/semfpn_l1_toy.py', 'ade20k', 'TOY_ADE20K_ROOT',
                         'mIoU', 100.0),
}


def _banner(text):
    print(f'\n=== {text} ===', flush=True)


def gap_closed(before: float, after: float, perfect: float) -> float:
    """How much of the way from the untrained score to a perfect one the trained model went (1 = all of it)."""
    return (after - before) / (perfect - before)


def _shown(path: str) -> str:
    """``path`` as a command to paste here names it: relative to the working directory when inside it."""
    relative = os.path.relpath(path)
    return path if relative.split(os.sep)[0] == os.pardir else relative


def _config(task: Task, data: str, work_dir: str, **options):
    os.environ[task.data_env] = data  # the toy config reads its data root when parsed
    cfg = Config.fromfile(config_path(task.config))
    cfg.work_dir = work_dir
    cfg.merge_from_dict(options)
    return cfg


def _runner(cfg, experiment_name):
    # one logger and one visualizer per runner in this process (mmengine keeps both by name, the visualizer under
    # the config's name)
    cfg.experiment_name = cfg.visualizer.name = experiment_name
    return EfficientFormerRunner.from_cfg(cfg)


def save_initial_checkpoint(task: Task, data: str, work_dir: str) -> str:
    """The model as `mim train` initialises it (same config, same seed), saved so that training starts from it."""
    runner = _runner(_config(task, data, work_dir), f'{task.name}_initial')
    runner.model.init_weights()
    path = os.path.join(work_dir, 'initial.pth')
    save_checkpoint({'state_dict': weights_to_cpu(runner.model.state_dict()),
                     'meta': {'dataset_meta': runner.test_dataloader.dataset.metainfo}}, path)
    return path


def train(task: Task, data: str, work_dir: str, initial: str, iters: int | None) -> str:
    """Train from the initial checkpoint as `mim train` does (the same Runner, in this process); returns the final
    checkpoint."""
    options = dict(load_from=initial)
    if iters is not None:
        options.update({'train_cfg.max_iters': iters, 'train_cfg.val_interval': iters,
                        'default_hooks.checkpoint.interval': iters})
    command = ['mim', 'train', task.framework, _shown(config_path(task.config)), '--work-dir', work_dir,
               '--cfg-options', *(f'{k}={v}' for k, v in options.items())]
    print(f'$ {task.data_env}={data}', *command, '  # the same run, in this process', flush=True)
    runner = _runner(_config(task, data, work_dir, **options), f'{task.name}_train')
    runner.train()  # mmengine's log streams progress to the terminal
    with open(os.path.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def evaluate(task: Task, data: str, work_dir: str, checkpoint: str, stage: str):
    """Test-set metrics of a checkpoint through mmengine's test loop; returns (metrics, runner)."""
    runner = _runner(_config(task, data, work_dir, load_from=checkpoint), f'{task.name}_{stage}')
    return runner.test(), runner


def _visualizer(task: Task, dataset_meta):
    if task.framework == 'mmdet':
        from mmdet.visualization import DetLocalVisualizer
        visualizer = DetLocalVisualizer(name=f'demo_{task.name}')
        visualizer.dataset_meta = dataset_meta
        return visualizer, dict(pred_score_thr=0.5)
    from mmseg.visualization import SegLocalVisualizer
    visualizer = SegLocalVisualizer(name=f'demo_{task.name}', alpha=0.6)
    visualizer.set_dataset_meta(classes=dataset_meta['classes'], palette=dataset_meta['palette'])
    return visualizer, dict(with_labels=True)


def draw_pictures(task: Task, runner, out_dir: str) -> list:
    """One picture per validation image: input | ground truth | prediction, class names and a legend."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import mmcv
    import numpy as np
    import torch
    from matplotlib.patches import Patch

    dataset_meta = runner.test_dataloader.dataset.metainfo
    visualizer, options = _visualizer(task, dataset_meta)
    legend = [Patch(color=np.array(colour) / 255, label=name)
              for name, colour in zip(dataset_meta['classes'], dataset_meta['palette'])]
    os.makedirs(out_dir, exist_ok=True)
    pictures = []
    model = runner.model.eval()
    for data in runner.test_dataloader:
        with torch.no_grad():
            samples = model.test_step(data)
        for sample in samples:
            image = mmcv.imread(sample.img_path, channel_order='rgb')
            panels = [('input', image)]
            for title, draw_gt in (('ground truth', True), ('prediction', False)):
                visualizer.add_datasample(title, image, sample, draw_gt=draw_gt, draw_pred=not draw_gt, **options)
                panels.append((title, visualizer.get_image()))
            figure, axes = plt.subplots(1, 3, figsize=(13.5, 5))
            for axis, (title, panel) in zip(axes, panels):
                axis.imshow(panel)
                axis.set_title(title)
                axis.axis('off')
            name = os.path.splitext(os.path.basename(sample.img_path))[0]
            figure.suptitle(f'{task.title}: {name}')
            figure.legend(handles=legend, loc='lower center', ncol=len(legend), frameon=False)
            path = os.path.join(out_dir, f'{name}.png')
            figure.savefig(path, dpi=100, bbox_inches='tight')
            plt.close(figure)
            pictures.append(path)
    return pictures


def run_task(task: Task, out: str, iters: int | None = None, n_train: int = 64, n_val: int = 16,
             size: int = 256) -> dict:
    """Data, untrained evaluation, training, trained evaluation and pictures for one task; returns the scores and
    the pictures' paths."""
    data = os.path.join(out, f'toy_{task.data_kind}') + '/'
    (make_coco if task.data_kind == 'coco' else make_ade20k)(data, n_train=n_train, n_val=n_val, size=size)
    work_dir = os.path.join(out, task.name)
    os.makedirs(work_dir, exist_ok=True)

    _banner(f'{task.title}: the untrained model on the synthetic validation set')
    initial = save_initial_checkpoint(task, data, work_dir)
    before, _ = evaluate(task, data, os.path.join(work_dir, 'eval_initial'), initial, 'initial')

    _banner(f'{task.title}: training on the synthetic training set (CPU)')
    trained = train(task, data, os.path.join(work_dir, 'train'), initial, iters)
    after, runner = evaluate(task, data, os.path.join(work_dir, 'eval_trained'), trained, 'trained')
    pictures = draw_pictures(task, runner, os.path.join(work_dir, 'pictures'))
    return dict(before=before[task.metric], after=after[task.metric], pictures=pictures)


def run_demo(out: str, tasks=None, iters: int | None = None, **data) -> int:
    """Run ``tasks`` (names of TASKS; default: both) into ``out`` and print the summary; returns 1 when a model
    did not learn. ``data``: ``n_train``, ``n_val``, ``size`` of the synthetic sets (default 64, 16, 256)."""
    os.makedirs(out, exist_ok=True)
    results = {name: run_task(TASKS[name], out, iters, **data) for name in tasks or list(TASKS)}
    _banner('Summary (synthetic validation sets)')
    failed = []
    for name, result in results.items():
        task = TASKS[name]
        closed = gap_closed(result['before'], result['after'], task.perfect)
        print(f'{task.title}: {task.metric} {result["before"]:.3f} untrained -> {result["after"]:.3f} trained '
              f'({closed:.0%} of the way to {task.perfect:g}); {len(result["pictures"])} pictures in '
              f'{os.path.dirname(result["pictures"][0])}')
        if closed < LEARNED_GAP:
            failed.append(f'{task.title}: {task.metric} went from {result["before"]:.3f} to {result["after"]:.3f}, '
                          f'{closed:.0%} of the way to {task.perfect:g} (needs {LEARNED_GAP:.0%})')
    if failed:
        print('The models did not learn the task: ' + '; '.join(failed)
              + '. Train longer (--iters) or check the training log above.', file=sys.stderr)
        return 1
    print(f'The models learned: each covered at least {LEARNED_GAP:.0%} of the way from the untrained model\'s '
          'score to a perfect one.')
    return 0

