"""What loading a checkpoint tells its caller: an error naming what does not fit, or a report of what was done."""
from dataclasses import dataclass, field
from typing import List

__all__ = ['CheckpointError', 'LoadReport', 'listed']


def listed(what: str, items: List[str], limit: int = 40) -> str:
    """``what: [items]`` for an error message: the first ``limit`` items, then how many more there are."""
    return f'{what}: {items[:limit]}' + (f' (+{len(items) - limit} more)' if len(items) > limit else '')


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model, or cannot be read."""


@dataclass
class LoadReport:
    source_format: str
    loaded: List[str] = field(default_factory=list)
    initialised: List[str] = field(default_factory=list)  # model tensors the checkpoint does not have
    dropped: List[str] = field(default_factory=list)  # checkpoint tensors the model does not use
    skipped: List[str] = field(default_factory=list)  # strict=False only: mismatches left out
