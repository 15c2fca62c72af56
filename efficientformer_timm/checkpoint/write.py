"""Writing converted tensors: ``save_tensors``, atomically and never over the file they came from."""
from typing import Dict, Optional

import torch
from safetensors.torch import save_file

from .files import atomic_output

__all__ = ['save_tensors']


def save_tensors(tensors: Dict[str, torch.Tensor], dst: str, inputs=(), metadata: Optional[dict] = None,
                 container: Optional[str] = None) -> None:
    """Write ``tensors`` to ``dst`` atomically and never over one of ``inputs``: safetensors when ``dst`` ends in
    .safetensors (``metadata`` in its header), else ``torch.save`` (under ``container`` with ``metadata`` as
    ``meta`` when a container is named, the plain dict otherwise)."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    with atomic_output(dst, inputs=inputs) as tmp:
        if dst.endswith('.safetensors'):
            save_file(tensors, tmp, metadata={'format': 'pt', **(metadata or {})})
        else:
            torch.save({container: tensors, 'meta': metadata or {}} if container else tensors, tmp)
