"""Training-fault hooks: a non-finite loss stops the run before a poisoned checkpoint is written, and a resumed
run continues with the random state the interrupted one had."""
import math

import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS


@HOOKS.register_module()
class StopOnInvalidLossHook(Hook):
    # runs before CheckpointHook (VERY_LOW) within the same iteration
    priority = 'ABOVE_NORMAL'

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        loss = (outputs or {}).get('loss')
        if isinstance(loss, torch.Tensor):
            loss = loss.detach()
        if loss is not None and not math.isfinite(float(loss)):
            raise RuntimeError(
                f'loss is {float(loss)} at iteration {runner.iter + 1}: training stopped before writing a checkpoint. '
                f'The last good checkpoint in {runner.work_dir} can be resumed with --resume; lower the learning '
                'rate, enable gradient clipping (optim_wrapper.clip_grad) or check the data.')


def _torch_random_state() -> dict:
    return {'cpu': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


@HOOKS.register_module()
class ResumeRandomStateHook(Hook):
    """Saves every rank's torch (CPU and CUDA) random state in each checkpoint and restores it on ``--resume``.

    On resume mmengine re-seeds and replays the dataloader up to the saved iteration, so the data pipeline's
    draws repeat exactly; the model's own draws (RPN / RoI sampling, drop path) are not replayed. With this hook
    the iterations after a resume use the random numbers an uninterrupted run would have used, so with a fixed
    seed on CPU the losses and weights match it exactly. ``load_from`` (fine-tuning) does not restore anything.
    """
    # after the optimizer step, before CheckpointHook (VERY_LOW) saves in the same iteration
    priority = 'LOW'

    def __init__(self):
        self._rank_states = None  # all ranks' states, gathered at an iteration / epoch that saves a checkpoint
        self._loaded_states = None

    def _gather_if_saving(self, runner, saving) -> None:
        # runner.save_checkpoint runs on rank 0 only: other ranks' states must be collected beforehand
        if get_world_size() > 1 and any(saving(h) for h in runner.hooks if isinstance(h, CheckpointHook)):
            self._rank_states = all_gather_object(_torch_random_state())

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._gather_if_saving(runner, lambda h: not h.by_epoch and (
            h.every_n_train_iters(runner, h.interval, h.save_begin)
            or (h.save_last and h.is_last_train_iter(runner))))

    def after_train_epoch(self, runner):
        self._gather_if_saving(runner, lambda h: h.by_epoch and (
            h.every_n_epochs(runner, h.interval, h.save_begin) or (h.save_last and h.is_last_train_epoch(runner))))

    def before_save_checkpoint(self, runner, checkpoint):
        states = [_torch_random_state()] if get_world_size() == 1 else self._rank_states
        self._rank_states = None
        if states is not None:  # None: a save outside training steps (e.g. best checkpoint after validation)
            checkpoint['torch_random_states'] = states

    def after_load_checkpoint(self, runner, checkpoint):
        # kept until before_train, which knows whether this was a resume or a load_from
        self._loaded_states = checkpoint.get('torch_random_states')

    def before_train(self, runner):
        states, self._loaded_states = self._loaded_states, None
        if runner.iter == 0 and runner.epoch == 0:
            return  # a fresh run or load_from: keep the seeded state
        if states is None or len(states) != get_world_size():
            reason = ('the checkpoint holds no random state' if states is None
                      else f'the checkpoint holds {len(states)} ranks\' random states, this run has {get_world_size()}')
            print_log(f'ResumeRandomStateHook: {reason}; the model\'s random draws after the resume differ from the '
                      'interrupted run\'s.', logger='current', level='WARNING')
            return
        state = states[get_rank()]
        torch.set_rng_state(state['cpu'])
        if state['cuda'] and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state['cuda'])
