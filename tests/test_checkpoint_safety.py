"""A checkpoint cannot run code: crafted pickles are refused, before anything in them runs, through every way the
package, timm and mmengine read a file, with CheckpointError naming the file and what it pickles; the checkpoints
mmengine writes (message hub, optimizer, schedulers, random states, metrics) still load, as written, and resume."""
import os
import shlex
from unittest import mock

import numpy as np
import pytest
import timm
import torch

from efficientformer_timm import CheckpointError, load_checkpoint, read_checkpoint
from efficientformer_timm.checkpoint import read_file
from efficientformer_timm.convert import convert_file
from helpers import assert_same_contents, made_once

ROOT = os.path.join(os.path.dirname(__file__), '..')
TOY_SEMFPN = os.path.join(ROOT, 'mm_configs', 'toy', 'semfpn_l1_toy.py')


class _Call:
    """Pickles as ``func(*args)``, which unpickling calls: the building block of a malicious checkpoint."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args

    def __call__(self):  # pickle takes only a callable as the function of a reduce; it is never called here
        raise AssertionError


def _getattr_gadget(marker):
    """``getattr(__import__('os'), 'system')('touch MARKER')``: the first global it pickles is builtins.getattr."""
    return _Call(_Call(getattr, _Call(__import__, 'os'), 'system'), f'touch {shlex.quote(str(marker))}')


def _system_gadget(marker):
    """``os.system('touch MARKER')``: the global posix.system (nt.system on Windows)."""
    return _Call(os.system, f'touch {shlex.quote(str(marker))}')


def _crafted(tmp_path, gadget):
    """A torch checkpoint whose state dict is the gadget; returns its path and the marker file it would create."""
    marker = tmp_path / 'code_ran'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': gadget(marker)}, path)
    return path, marker


@pytest.mark.parametrize('gadget', [_getattr_gadget, _system_gadget])
def test_the_crafted_files_run_code_when_fully_unpickled(tmp_path, gadget):
    """The files the other tests refuse are live: a full unpickle runs their command."""
    path, marker = _crafted(tmp_path, gadget)
    torch.load(path, weights_only=False)
    assert marker.exists()


# what the package's readers refuse in each file: every global outside the weights-only allowlist
PACKAGE_REFUSES = {_getattr_gadget: r'builtins\.__import__, builtins\.getattr',
                   _system_gadget: rf'{os.system.__module__}\.system'}
PACKAGE_ENTRIES = {
    'read_file': lambda path, tmp: read_file(path),
    'read_checkpoint': lambda path, tmp: read_checkpoint(path),
    'load_checkpoint': lambda path, tmp: load_checkpoint(timm.create_model('efficientformerv2_s0'), str(path)),
    'convert_file': lambda path, tmp: convert_file(str(path), str(tmp / 'converted.pth')),
    'timm_file': lambda path, tmp: timm.create_model('efficientformerv2_s0', pretrained=True,
                                                     pretrained_cfg_overlay=dict(file=str(path))),
}


@pytest.mark.parametrize('gadget', list(PACKAGE_REFUSES), ids=lambda g: g.__name__)
@pytest.mark.parametrize('entry', list(PACKAGE_ENTRIES))
def test_package_readers_refuse_code(tmp_path, gadget, entry):
    path, marker = _crafted(tmp_path, gadget)
    with pytest.raises(CheckpointError, match=rf'cannot read checkpoint .*evil\.pth: it pickles '
                                              rf'{PACKAGE_REFUSES[gadget]}, .*nothing in the file was run'):
        PACKAGE_ENTRIES[entry](path, tmp_path)
    assert not marker.exists()
    assert not (tmp_path / 'converted.pth').exists()


def _history_buffer_getattr(name):
    """``getattr(HistoryBuffer, name)``: a getattr on the class mmengine's checkpoints do reach through getattr."""
    def gadget(marker):
        from mmengine.logging import HistoryBuffer
        return _Call(getattr, HistoryBuffer, name)
    return gadget


def _refused_getattr(name):
    return rf"it pickles builtins\.getattr\(mmengine\.logging\.history_buffer\.HistoryBuffer, '{name}'\)"


# what the mmengine loader refuses: builtins.getattr is answered by a stand-in, so the gadget stops at its next
# global; a getattr the stand-in does not answer names the class and attribute
MM_GADGETS = [
    pytest.param(_getattr_gadget, r'it pickles builtins\.__import__, ', id='getattr_gadget'),
    pytest.param(_system_gadget, rf'it pickles {os.system.__module__}\.system, ', id='system_gadget'),
    *(pytest.param(_history_buffer_getattr(name), _refused_getattr(name), id=f'HistoryBuffer.{name}')
      for name in ('__init__', '__class__')),
]


def _toy_runner(work_dir, data, **settings):
    """The Runner `mim train` / `mim test` build for the toy Semantic FPN config, on the data in ``data``."""
    from mmengine.config import Config
    from efficientformer_timm.mm import EfficientFormerRunner
    with mock.patch.dict(os.environ, TOY_ADE20K_ROOT=f'{data}/'):
        cfg = Config.fromfile(TOY_SEMFPN)
    cfg.merge_from_dict(settings)
    cfg.work_dir = str(work_dir)
    # mmengine keeps loggers and visualizers by name: names of this run's own
    cfg.experiment_name = cfg.visualizer.name = f'safety_{work_dir.name}_{work_dir.parent.name}'
    return EfficientFormerRunner.from_cfg(cfg)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A toy Semantic FPN run of 2 iterations, validated after each, and its iteration-2 checkpoint (the model,
    the message hub with the losses and the first validation's metrics, the optimizer, the schedulers, the random
    states, the config and the dataset's meta): its folder, with ``data`` and ``work/iter_2.pth``."""
    from efficientformer_timm.synthetic import make_ade20k

    def make(folder):
        make_ade20k(f'{folder}/data/', n_train=2, n_val=1, size=64)
        _toy_runner(folder / 'work', folder / 'data', **{
            'train_cfg.max_iters': 2, 'train_cfg.val_interval': 1, 'train_dataloader.batch_size': 2,
            'default_hooks.checkpoint.interval': 2}).train()
    return made_once(tmp_path_factory, 'checkpoint_safety_toy_run', make)


@pytest.fixture(scope='module')
def crafted_resume(tmp_path_factory):
    return _crafted(tmp_path_factory.mktemp('crafted_resume'), _getattr_gadget)


@pytest.fixture(scope='module')
def runner(tmp_path_factory, trained, crafted_resume):
    """A toy Runner set up as `mim train --resume FILE` sets it, FILE the getattr gadget; its ``load_checkpoint``
    is what ``load_from`` (`mim test --checkpoint`) calls, ``resume`` what ``resume`` calls."""
    return _toy_runner(tmp_path_factory.mktemp('runner'), trained / 'data', load_from=str(crafted_resume[0]),
                       resume=True)


@pytest.mark.mm
@pytest.mark.parametrize('gadget,match', MM_GADGETS)
def test_mmengine_loaders_refuse_code(tmp_path, gadget, match, runner):
    """mmengine's CheckpointLoader, its load_checkpoint and a Runner's load_from and resume all read local files
    through the package's loader."""
    from mmengine.runner import CheckpointLoader, load_checkpoint as mm_load_checkpoint
    path, marker = _crafted(tmp_path, gadget)
    for load in (lambda: CheckpointLoader.load_checkpoint(str(path)),
                 lambda: mm_load_checkpoint(torch.nn.Linear(1, 1), str(path)),
                 lambda: runner.load_checkpoint(str(path)),
                 lambda: runner.resume(str(path))):
        with pytest.raises(CheckpointError, match=rf'cannot read checkpoint .*evil\.pth: {match}.*nothing .*run'):
            load()
    assert not marker.exists()


@pytest.mark.mm
def test_runner_set_to_resume_refuses_code(runner, crafted_resume):
    path, marker = crafted_resume
    with pytest.raises(CheckpointError, match=r'cannot read checkpoint .*evil\.pth: it pickles builtins\.__import__'):
        runner.load_or_resume()
    assert not marker.exists()


@pytest.mark.mm
def test_mmengine_checkpoint_loads_as_written(trained):
    from mmengine.logging import HistoryBuffer
    from mmengine.runner import CheckpointLoader
    path = trained / 'work' / 'iter_2.pth'
    loaded = CheckpointLoader.load_checkpoint(str(path))
    assert_same_contents(loaded, torch.load(path, weights_only=False), 'checkpoint')  # the test's own file: trusted
    assert {'meta', 'state_dict', 'message_hub', 'optimizer', 'param_schedulers', 'torch_random_states'} <= set(loaded)
    assert 'dataset_meta' in loaded['meta'] and 'randomness' in loaded['meta']['cfg']
    scalars = loaded['message_hub']['log_scalars']
    assert isinstance(scalars['train/loss'], HistoryBuffer) and 'val/mIoU' in scalars
    # numpy scalars in the runtime information (the timer's eta is a numpy float)
    assert any(isinstance(v, np.generic) for v in loaded['message_hub']['runtime_info'].values())


@pytest.mark.mm
def test_mmengine_checkpoint_loads_and_resumes_in_a_runner(trained, runner):
    path = str(trained / 'work' / 'iter_2.pth')
    checkpoint = torch.load(path, weights_only=False)
    runner.load_checkpoint(path)
    assert_same_contents(runner.model.state_dict(), checkpoint['state_dict'], 'state_dict')
    runner.resume(path)
    assert runner.iter == 2
    assert_same_contents(runner.optim_wrapper.state_dict(), checkpoint['optimizer'], 'optimizer')
    assert_same_contents([s.state_dict() for s in runner.param_schedulers], checkpoint['param_schedulers'],
                         'param_schedulers')
    assert_same_contents(runner.message_hub.get_scalar('train/loss'),
                         checkpoint['message_hub']['log_scalars']['train/loss'], 'train/loss')


@pytest.mark.mm
def test_statistics_a_checkpoint_would_swap_into_history_buffer_are_refused_and_restored(tmp_path, monkeypatch):
    """HistoryBuffer's unpickling writes the statistics methods a buffer carries into a registry of the class: a
    file that swaps one for another allowed global is refused and the registry left as it was."""
    from mmengine.logging import HistoryBuffer
    from mmengine.runner import CheckpointLoader
    buffer = HistoryBuffer()
    buffer.update(1.0)
    before = dict(HistoryBuffer._statistics_methods)
    pickled = HistoryBuffer.__getstate__
    monkeypatch.setattr(HistoryBuffer, '__getstate__',
                        lambda self: dict(pickled(self), statistics_methods={'mean': np.dtype}))
    torch.save({'message_hub': buffer}, tmp_path / 'swap.pth')
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=r"swap\.pth: it replaces the statistics \['mean'\] of HistoryBuffer"):
        CheckpointLoader.load_checkpoint(str(tmp_path / 'swap.pth'))
    assert HistoryBuffer._statistics_methods == before and before['mean'] is HistoryBuffer.mean
    torch.save({'message_hub': buffer}, tmp_path / 'plain.pth')  # the statistics mmengine itself pickles
    assert CheckpointLoader.load_checkpoint(str(tmp_path / 'plain.pth'))['message_hub'].mean() == 1.0
