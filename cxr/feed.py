"""Batches to a GPU without making it wait: the host side of each batch in pinned (page-locked) memory, so that
`.to(device, non_blocking=True)` really overlaps the copy with the GPU's work, and loaded one batch ahead in a thread
while the current one trains. On the CPU neither helps (there is no copy to overlap, and a thread would compete with
the training step for the same cores): batches load inline there."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")


def pinned(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """tensor in pinned memory if it is going to a GPU (torch's host allocator caches the pages), else as it is."""
    return tensor.pin_memory() if device.type == "cuda" else tensor


def prefetched(items: Iterable[Item], load: Callable[[Item], Loaded], ahead: bool) -> Iterator[tuple[Item, Loaded]]:
    """(item, load(item)) in order; with ahead, load(next item) runs in one background thread while the caller
    works on this one (load must then touch nothing the caller changes: one thread, so loads stay in order)."""
    if not ahead:
        for item in items:
            yield item, load(item)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxr-prefetch") as pool:
        pending = None
        for item in items:
            submitted = (item, pool.submit(load, item))
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = submitted
        if pending is not None:
            yield pending[0], pending[1].result()
