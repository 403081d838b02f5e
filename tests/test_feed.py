"""cxr.feed: batches load in order, the next one in a thread while this one is used when asked; pinned memory only
for a GPU."""

from __future__ import annotations

import threading

import torch

from cxr.feed import pinned, prefetched


def test_the_next_item_loads_in_a_thread_while_this_one_is_used():
    loaded, loaders = [threading.Event() for _ in range(4)], set()

    def load(i: int) -> int:
        loaders.add(threading.current_thread().name)
        loaded[i].set()
        return 10 * i

    used = []
    for item, value in prefetched(range(4), load, ahead=True):
        if item + 1 < len(loaded):
            assert loaded[item + 1].wait(timeout=10), f"item {item + 1} did not load while item {item} was in use"
        used.append((item, value))
    assert used == [(i, 10 * i) for i in range(4)]
    assert len(loaders) == 1 and loaders.pop().startswith("cxr-prefetch")


def test_without_ahead_items_load_inline_in_order():
    loaders = []
    used = list(prefetched(range(3), lambda i: loaders.append(threading.current_thread().name) or -i, ahead=False))
    assert used == [(0, 0), (1, -1), (2, -2)] and set(loaders) == {threading.current_thread().name}


def test_only_a_batch_for_a_gpu_is_pinned():
    batch = torch.zeros(2, 3)
    assert pinned(batch, torch.device("cpu")) is batch
