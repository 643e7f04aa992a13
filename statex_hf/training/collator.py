"""Batches of packed sequences: ``input_ids``, ``position_ids`` and ``labels``.

All rows have the same length, so nothing is padded. Where a document starts inside a row
(``position_ids == 0``), the label is ignored: the prediction of a document's first token from
the previous document's last one crosses a state reset and would teach nothing (the same rule as
``DataCollatorWithFlattening``). Without resets (``position_ids`` = 0..T-1) every label counts.
Rows that carry their own ``labels`` (-100 where nothing is taught, e.g. a synthetic task scored
only at its answers) keep them, under the same rule at document starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


@dataclass
class PackedCollator:
    """Stack packed rows into tensors and make the labels."""

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)
        if "position_ids" in features[0]:
            position_ids = torch.tensor([f["position_ids"] for f in features], dtype=torch.long)
        else:
            position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids).contiguous()
        labels = input_ids
        if "labels" in features[0]:
            labels = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        labels = labels.masked_fill(position_ids == 0, IGNORE_INDEX)
        return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}


__all__ = ["IGNORE_INDEX", "PackedCollator"]
