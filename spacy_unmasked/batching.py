"""Length ordering for prediction: the rows of a batch are grouped into decoder
calls of similar length, so that little of each call is padding."""

from collections.abc import Sequence

import torch

# What one more decoder call costs, in padded pieces: on a CPU a call adds little
# beyond its pieces; a GPU runs small calls far below its peak, so it keeps calls large.
CALL_OVERHEAD = {"cpu": 64, "cuda": 4096}


def call_overhead(device: torch.device) -> int:
    """The cost of one more decoder call on ``device``, in padded pieces."""
    return CALL_OVERHEAD.get(device.type, CALL_OVERHEAD["cuda"])


def length_buckets(lengths: Sequence[int], *, max_items: int, overhead: int) -> list[list[int]]:
    """Row indices grouped for decoder calls: ordered longest first and cut where
    the padded pieces of all calls plus ``overhead`` per call are least. A call
    holds at most ``max_items`` padded pieces (a longer row gets a call of its own).
    Every index appears once; one bucket when nothing is gained by cutting."""
    if max_items < 1 or overhead < 0:
        raise ValueError(f"max_items must be positive and overhead non-negative, not {max_items} and {overhead}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    count = len(order)
    best = [0] + [float("inf")] * count  # best[j]: least cost of the first j rows of `order`
    start = [0] * (count + 1)
    for end in range(1, count + 1):
        for begin in range(end - 1, -1, -1):
            rows = end - begin
            padded = rows * lengths[order[begin]]  # the longest row of the call sets its width
            if rows > 1 and padded > max_items:
                break
            cost = best[begin] + padded + overhead
            if cost <= best[end]:  # on a tie, the fewer calls
                best[end], start[end] = cost, begin
    buckets = []
    end = count
    while end > 0:
        buckets.append(order[start[end] : end])
        end = start[end]
    return buckets[::-1]
