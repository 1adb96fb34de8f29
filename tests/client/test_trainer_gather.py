"""Evaluation gathers every batch's outputs for the metrics into buffers sized once."""

from __future__ import annotations

import torch

from pollen.client.trainer import _Gathered


def _batches(sizes):
    start = 0
    for b in sizes:
        yield torch.arange(start, start + b, dtype=torch.float32).unsqueeze(1), torch.arange(start, start + b)
        start += b


def test_exactly_the_announced_rows_fill_the_buffer():
    g = _Gathered(6)
    for out, y in _batches([4, 2]):
        g.add(out, y)
    out, y = g.result()
    assert out.squeeze(1).tolist() == list(range(6)) and y.tolist() == list(range(6)) and not g.parts


def test_more_rows_than_announced_keep_every_row_once_in_order():
    g = _Gathered(5)  # a batch crosses the announced end: it goes after the rows already in the buffer
    for out, y in _batches([3, 3, 2]):
        g.add(out, y)
    out, y = g.result()
    assert out.squeeze(1).tolist() == list(range(8)) and y.tolist() == list(range(8))


def test_fewer_rows_than_announced_and_an_unknown_length():
    for expected in (10, 0):
        g = _Gathered(expected)
        for out, y in _batches([3, 2]):
            g.add(out, y)
        assert g.result()[1].tolist() == list(range(5))
