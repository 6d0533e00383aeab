"""Per-step scalars kept on the device until a logging point reads them in one host synchronisation.

A training step returns its loss terms and diagnostics as 0-d tensors on the device and never waits for
the device to finish (issue 26: no ``.item()`` inside a step). The hooks that print or write them, and the
engine's non-finite check, queue each step's tensors in a :class:`ScalarQueue` and turn them into floats at
the engine's logging points (every TRAIN.PRINT_FREQ steps and at each epoch's end).
"""
from typing import Dict, Hashable, List, Tuple

import torch
from torch import Tensor

__all__ = ["ScalarQueue"]


class ScalarQueue:
    """(key, {name: 0-d tensor}) entries in the order added; :meth:`drain` returns them as floats."""

    def __init__(self):
        self.entries: List[Tuple[Hashable, Dict[str, Tensor]]] = []

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, key: Hashable, values: Dict[str, Tensor]) -> None:
        self.entries.append((key, dict(values)))

    def drain(self) -> List[Tuple[Hashable, Dict[str, float]]]:
        """Every entry since the last drain, as floats (one host synchronisation), and empty the queue."""
        entries, self.entries = self.entries, []
        tensors = [v.detach().float().reshape(1) for _, values in entries for v in values.values()]
        if not tensors:
            return [(key, {}) for key, _ in entries]
        flat = iter(torch.cat([t.to(tensors[0].device) for t in tensors]).tolist())
        return [(key, {name: next(flat) for name in values}) for key, values in entries]
