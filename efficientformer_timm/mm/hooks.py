"""A non-finite loss stops training before the checkpoint hook can save poisoned weights as the latest."""
import math

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class StopOnInvalidLossHook(Hook):
    # runs before CheckpointHook (VERY_LOW) within the same iteration
    priority = 'ABOVE_NORMAL'

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        loss = (outputs or {}).get('loss')
        if loss is not None and not math.isfinite(float(loss)):
            raise RuntimeError(
                f'loss is {float(loss)} at iteration {runner.iter + 1}: training stopped before writing a checkpoint. '
                f'The last good checkpoint in {runner.work_dir} can be resumed with --resume; lower the learning '
                'rate, enable gradient clipping (optim_wrapper.clip_grad) or check the data.')
