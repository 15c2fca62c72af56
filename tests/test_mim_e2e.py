"""`mim train` / `mim test` / `--resume` end to end on CPU, on synthetic data in the real formats.

Each framework's training runs once through the `mim train` command line (custom_imports, the Runner the config
names, its hooks). Semantic FPN's checkpoint is then evaluated with `mim test --checkpoint` and resumed with
`mim train --resume`, and a diverging run goes through `mim train` too (its exit status and message); Mask R-CNN's
checkpoint is evaluated and resumed with that same Runner in this process, as `mim test` and `mim train --resume`
build it (tools/test.py and tools/train.py set ``load_from`` / ``resume`` and call ``Runner.test`` /
``Runner.train``). Both resumed runs continue bit for bit. Two-process training goes through `mim` and torchrun.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

from efficientformer_timm.mm import EfficientFormerRunner
from efficientformer_timm.synthetic import make_ade20k, make_coco
from helpers import assert_same_contents

pytestmark = [pytest.mark.mm, pytest.mark.e2e]

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
MIM = shutil.which('mim', path=os.path.dirname(sys.executable)) or 'mim'

JOBS = {
    'mmdet': dict(config='mm_configs/toy/maskrcnn_l1_toy.py', data='coco', env='TOY_COCO_ROOT',
                  metric='coco/bbox_mAP', loss='loss'),
    'mmseg': dict(config='mm_configs/toy/semfpn_l1_toy.py', data='ade20k', env='TOY_ADE20K_ROOT',
                  metric='mIoU', loss='loss'),
}


def _run(args, env, cwd, fails=False):
    """stdout and stderr of a successful run (of a failed one with ``fails``)."""
    # the computation of this process's runs, thread for thread: bit-identical losses across the two
    env = dict(env, OMP_NUM_THREADS=str(torch.get_num_threads()))
    out = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert (out.returncode != 0) == fails, out.stdout[-4000:] + out.stderr[-4000:]
    return out.stdout + out.stderr


def _runner(job, work_dir, options, **settings):
    """The Runner `mim train` / `mim test` build for ``job``'s config, here; returns it and its log file's path."""
    cfg = Config.fromfile(os.path.join(ROOT, job['config']))
    cfg.merge_from_dict(options)
    cfg.update(settings, work_dir=str(work_dir))
    # mmengine keeps loggers and visualizers by name (a logger started in the same second is reused, log file
    # included; the visualizer is the config's): names of its own per run
    cfg.experiment_name = cfg.visualizer.name = f'{work_dir.name}_{work_dir.parent.name}'
    runner = EfficientFormerRunner.from_cfg(cfg)
    return runner, runner.logger.log_file


def _train_losses(work_dir, key):
    scalars = sorted(glob.glob(os.path.join(work_dir, '*', 'vis_data', 'scalars.json')))[-1]
    rows = [json.loads(line) for line in open(scalars)]
    return [r[key] for r in rows if key in r and 'iter' in r]


# unsmoothed per-iteration losses, and no warm-up so that 12 iterations show the trend
SHORT = {'train_cfg.max_iters': 12, 'train_cfg.val_interval': 12, 'default_hooks.checkpoint.interval': 6,
         'default_hooks.logger.interval': 1, 'log_processor.window_size': 1, 'param_scheduler.0.end': 1,
         'train_dataloader.batch_size': 2}


@pytest.mark.parametrize('framework', list(JOBS))
def test_mim_train_test_resume(framework, tmp_path, monkeypatch):
    job = JOBS[framework]
    data = tmp_path / 'data'
    (make_coco if job['data'] == 'coco' else make_ade20k)(str(data) + '/', n_train=8, n_val=4, size=128)
    monkeypatch.setenv(job['env'], str(data) + '/')
    work = tmp_path / 'work'
    options = ['--cfg-options', *(f'{k}={v}' for k, v in SHORT.items())]
    _run([MIM, 'train', framework, job['config'], '--work-dir', str(work), *options], dict(os.environ), ROOT)

    losses = _train_losses(work, job['loss'])
    assert len(losses) == 12 and all(map(lambda v: v == v and abs(v) < 1e4, losses))  # finite
    assert sum(losses[-4:]) < sum(losses[:4]), losses  # decreasing
    assert os.path.isfile(work / 'iter_12.pth')

    # the mmengine checkpoint loads under torch's weights_only default
    command_line = framework == 'mmseg'
    if command_line:
        log = _run([MIM, 'test', framework, job['config'], '--checkpoint', str(work / 'iter_12.pth'), '--work-dir',
                    str(tmp_path / 'test')], dict(os.environ), ROOT)
        metric = float(re.findall(rf'\b{job["metric"]}: (\S+)', log)[-1])
    else:
        runner, _ = _runner(job, tmp_path / 'test', {}, load_from=str(work / 'iter_12.pth'))
        metric = runner.test()[job['metric']]
    assert 0 <= metric <= (100 if framework == 'mmseg' else 1)

    # an interruption after the iteration-6 checkpoint: a fresh work dir holding only that checkpoint, resumed
    resumed = tmp_path / 'resumed'
    resumed.mkdir()
    shutil.copy(work / 'iter_6.pth', resumed / 'iter_6.pth')
    (resumed / 'last_checkpoint').write_text(str(resumed / 'iter_6.pth'))
    if command_line:
        log = _run([MIM, 'train', framework, job['config'], '--work-dir', str(resumed), '--resume', *options],
                   dict(os.environ), ROOT)
    else:
        runner, log_file = _runner(job, resumed, SHORT, resume=True, load_from=None)
        runner.train()
        log = open(log_file).read()
    assert 'resumed epoch: 0, iter: 6' in log
    assert 'Iter(train) [ 7/12]' in log and 'Iter(train) [ 6/12]' not in log
    # the run continues exactly as if never interrupted: same losses, then the same weights, optimizer and
    # scheduler state at the end
    assert _train_losses(resumed, job['loss']) == losses[6:]
    final, final_resumed = (torch.load(d / 'iter_12.pth', map_location='cpu', weights_only=False)
                            for d in (work, resumed))
    for key in ('state_dict', 'optimizer', 'param_schedulers'):
        assert_same_contents(final_resumed[key], final[key], key)


def test_distributed_two_cpu_processes(tmp_path):
    """`--launcher pytorch` with 2 processes on a CPU-only machine (gloo), through the real Mask R-CNN recipe."""
    data = tmp_path / 'data'
    make_coco(str(data) + '/', n_train=8, n_val=4, size=128)
    env = dict(os.environ, TOY_COCO_ROOT=str(data) + '/')
    work = tmp_path / 'work'
    log = _run([MIM, 'train', 'mmdet', JOBS['mmdet']['config'], '--launcher', 'pytorch', '--gpus', '2',
                '--work-dir', str(work), '--cfg-options', 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
                'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1'], env, ROOT)
    assert '--nproc_per_node=2' in log and 'Distributed training: True' in log
    assert 'Iter(train) [2/2]' in log and 'coco/bbox_mAP' in log
    assert os.path.isfile(work / 'iter_2.pth')


def test_diverging_run_stops_before_a_poisoned_checkpoint(tmp_path):
    """An absurd learning rate makes the second loss NaN; `mim train` exits with the message and the latest
    checkpoint stays the last good one."""
    data = tmp_path / 'data'
    make_ade20k(str(data) + '/', n_train=4, n_val=2, size=128)
    work = tmp_path / 'work'
    options = {'train_cfg.max_iters': 4, 'train_cfg.val_interval': 4, 'default_hooks.checkpoint.interval': 1,
               'default_hooks.logger.interval': 1, 'optim_wrapper.optimizer.lr': 1e30, 'train_dataloader.batch_size': 2}
    log = _run([MIM, 'train', 'mmseg', JOBS['mmseg']['config'], '--work-dir', str(work), '--cfg-options',
                *(f'{k}={v}' for k, v in options.items())], dict(os.environ, TOY_ADE20K_ROOT=str(data) + '/'), ROOT,
               fails=True)
    assert 'RuntimeError: loss is nan at iteration 2: training stopped before writing a checkpoint' in log, log[-4000:]
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_1.pth']
    assert (work / 'last_checkpoint').read_text().strip() == str(work / 'iter_1.pth')
    state = torch.load(work / 'iter_1.pth', map_location='cpu', weights_only=False)['state_dict']
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
