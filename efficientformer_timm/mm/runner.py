"""mmengine's Runner with ``--launcher pytorch`` working on machines without CUDA.

mmengine 0.10.7's pytorch launcher calls ``torch.cuda.set_device(LOCAL_RANK)`` unconditionally, and SyncBN
has no CPU kernel. Without CUDA this runner creates the process group itself with gloo (before mmengine's
launcher, which then skips its own) and reverts SyncBN to BN. It also checks, when the model is built, that the
neck takes the channels the backbone gives and, for a run that starts from the backbone's ``init_cfg`` (no
``load_from``, no resume), that its checkpoint exists. Its dataloaders draw their per-epoch worker seed from
a generator of their own instead of torch's global one, so that ``--resume`` (which replays the dataloader)
leaves the model's random state where ``ResumeRandomStateHook`` puts it. On machines without CUDA it has glibc
keep freed memory for reuse (``env_cfg.keep_freed_cpu_memory``, default True). Configs select it with
``runner_type = 'EfficientFormerRunner'``.
"""
import ctypes

import torch
import torch.distributed as torch_dist
from mmengine.dist import is_distributed
from mmengine.logging import print_log
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from torch.utils.data import DataLoader


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_cpu_memory() -> bool:
    """Have glibc keep freed memory for reuse instead of giving it back to the system.

    By default glibc serves each block over 32 MB with a mapping of its own and unmaps it when the block is freed,
    so every training step page-faults its large activations and gradients in again, each page zero-filled by the
    kernel. Served from the heap, which is never trimmed, most blocks are reused (one whose freed neighbours were
    taken can be too small for the same request again: a fresh one then extends the heap); the process keeps its
    peak size. Returns False where the C library has no ``mallopt`` (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):
        return False
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1


@RUNNERS.register_module()
class EfficientFormerRunner(Runner):

    def build_model(self, model):
        model = super().build_model(model)
        backbone, neck = getattr(model, 'backbone', None), getattr(model, 'neck', None)
        expected = getattr(backbone, 'out_channels', None)
        given = getattr(neck, 'in_channels', None)
        if expected is not None and given is not None and list(given) != list(expected):
            raise ValueError(
                f'model.neck.in_channels={list(given)} does not match the backbone '
                f'{getattr(backbone, "model_name", type(backbone).__name__)} with out_indices='
                f'{getattr(backbone, "out_indices", None)}, which gives {list(expected)} channels: set '
                f'model.neck.in_channels={list(expected)}')
        if self._load_from is None and not self._resume and hasattr(backbone, 'check_init_checkpoint'):
            backbone.check_init_checkpoint()
        return model

    @staticmethod
    def build_dataloader(dataloader, seed=None, diff_rank_seed=False):
        loader = Runner.build_dataloader(dataloader, seed=seed, diff_rank_seed=diff_rank_seed)
        if isinstance(loader, DataLoader) and loader.generator is None and seed is not None:
            # each new pass over the data draws a base seed (only used when no worker_init_fn reseeds the
            # workers, and mmengine's does) from this generator rather than from the model's global RNG
            loader.generator = torch.Generator().manual_seed(seed)
        return loader

    def setup_env(self, env_cfg: dict) -> None:
        if self.distributed and not is_distributed() and not torch.cuda.is_available():
            if self.launcher != 'pytorch':
                raise RuntimeError(f'launcher {self.launcher!r} needs CUDA here; on CPU use --launcher pytorch')
            torch_dist.init_process_group(backend='gloo')
        super().setup_env(env_cfg)
        self._memory_note = None  # logged once the run's logger exists
        if env_cfg.get('keep_freed_cpu_memory', True):
            if torch.cuda.is_available():
                outcome = "not applied on a CUDA machine (the network's tensors are not in host memory)"
            elif keep_freed_cpu_memory():
                outcome = 'glibc keeps freed memory for reuse (the process keeps its peak size)'
            else:
                outcome = 'not applied, the C library is not glibc'
            self._memory_note = f'env_cfg.keep_freed_cpu_memory: {outcome}'

    def build_logger(self, *args, **kwargs):
        logger = super().build_logger(*args, **kwargs)
        if self._memory_note:
            logger.info(self._memory_note)
        return logger

    def wrap_model(self, model_wrapper_cfg, model):
        if self.distributed and not torch.cuda.is_available():
            print_log('no CUDA: SyncBN layers run as BN in each process', logger='current')
            model = revert_sync_batchnorm(model)
            # mmengine's default wrapper passes device_ids=[LOCAL_RANK], which DDP rejects for CPU modules
            model_wrapper_cfg = dict(model_wrapper_cfg or dict(
                type='MMDistributedDataParallel', broadcast_buffers=False,
                find_unused_parameters=self.cfg.get('find_unused_parameters', False)))
            model_wrapper_cfg.setdefault('device_ids', None)
        return super().wrap_model(model_wrapper_cfg, model)
