"""mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; torch >= 2.6 then refuses the checkpoints
mmengine itself writes (``--resume``, ``load_from``, ``mim test``): "Unsupported global: ...HistoryBuffer".

The local scheme is replaced by one that reads every file with torch's weights-only unpickler, which allows, besides
tensors and containers, exactly what mmengine's checkpoints pickle: the message hub's ``HistoryBuffer``, numpy's
arrays, scalars and dtypes, and ``getattr(HistoryBuffer, 'mean')`` and the other statistics methods (pickle
protocol 2 stores a function defined in a class as a ``getattr`` call). ``builtins.getattr`` is answered by a
stand-in that returns only those attributes. Anything else is refused, before it runs, with ``CheckpointError``
naming the file and what it pickles.
"""
import contextlib
import os

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from ..checkpoint import CheckpointError, read_file

try:
    from numpy._core import multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray

# the only (class, attribute) pairs mmengine's checkpoints reach through getattr: HistoryBuffer pickles its
# statistics methods with each buffer
_GETATTR_ANSWERS = {(HistoryBuffer, name) for name in ('min', 'max', 'current', 'mean')}


def _restricted_getattr(obj, name):
    """Stands in for ``builtins.getattr`` while a checkpoint is unpickled: answers only ``_GETATTR_ANSWERS``."""
    if not (isinstance(obj, type) and type(name) is str and (obj, name) in _GETATTR_ANSWERS):
        what = f'{obj.__module__}.{obj.__qualname__}' if isinstance(obj, type) else type(obj).__name__
        raise CheckpointError(
            f'it pickles builtins.getattr({what}, {name!r}); mmengine\'s checkpoints only reach the statistics '
            f'methods {sorted(n for _, n in _GETATTR_ANSWERS)} of {HistoryBuffer.__qualname__} that way, so '
            'nothing was run. Load only checkpoints from a source you trust; for a trusted training checkpoint that '
            'logs statistics of its own (HistoryBuffer.register_statistics), allow them before loading it with '
            'torch.serialization.add_safe_globals.')
    return getattr(obj, name)


def _numeric_dtype_classes():
    """numpy's dtype classes of the numbers mmengine logs (``HistoryBuffer`` arrays, metric scalars): an
    unpickled dtype is built through its class."""
    return [type(np.dtype(code)) for code in '?' + np.typecodes['AllInteger'] + np.typecodes['AllFloat']]


_MMENGINE_GLOBALS = [
    HistoryBuffer, np.ndarray, np.dtype, *_numeric_dtype_classes(), (_restricted_getattr, 'builtins.getattr'),
    # numpy 2 pickles these from numpy._core, numpy 1 from numpy.core: checkpoints of either
    *((getattr(multiarray, name), f'{module}.multiarray.{name}')
      for name in ('_reconstruct', 'scalar') for module in ('numpy._core', 'numpy.core')),
]


@contextlib.contextmanager
def _allow_mmengine_globals():
    # torch's context removes what it added on exit: leave a global the user allowed before in place
    already = torch.serialization.get_safe_globals()
    with torch.serialization.safe_globals([g for g in _MMENGINE_GLOBALS if g not in already]):
        yield


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_local_checkpoint(filename, map_location=None):
    """Local files: safetensors, or torch files read with ``weights_only=True`` plus what mmengine's checkpoints
    pickle. A file that cannot be read, or pickles anything else, raises the package's CheckpointError naming it."""
    filename = os.path.expanduser(filename)
    # HistoryBuffer's unpickling writes the statistics methods it carries into a registry of the class
    statistics = {name: getattr(HistoryBuffer, name) for _, name in _GETATTR_ANSWERS}  # set by its first buffer
    statistics.update(HistoryBuffer._statistics_methods)
    try:
        with _allow_mmengine_globals():
            return read_file(filename, map_location)
    finally:
        changed = sorted(name for name, method in HistoryBuffer._statistics_methods.items()
                         if method is not statistics.get(name))
        if changed:
            HistoryBuffer._statistics_methods.clear()
            HistoryBuffer._statistics_methods.update(statistics)
            raise CheckpointError(f'cannot read checkpoint {filename}: it replaces the statistics {changed} of '
                                  f'{HistoryBuffer.__qualname__}, which mmengine\'s checkpoints never do; the '
                                  'registry was restored. Load only checkpoints from a source you trust.')
