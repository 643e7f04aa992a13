"""A one-row product that tells the kernel after it which of its rows have landed, so that kernel can start on
them before the product ends (issue 20: Mamba2's B = 1 step, where the one-launch step waited for all of
``in_proj``).

Mamba2's ``in_proj`` writes ``[z | x | B | C | dt]``, and its one-launch step (``ssd/conv_state_update.py``) reads
``[x | B | C | dt]`` first and z only for the last thing it stores (its share of the gated norm's sum of squares,
``row_norm.py``). Under programmatic dependent launch the step's programs start once every program of ``in_proj`` has
started, and then waited for the whole product to end: its chain of loads, math and stores ran after ``in_proj``'s
last row. With a signal, ``in_proj``'s row blocks run last to first, so ``[x | B | C | dt]`` land in the first half of
its programs and z in the second; each program, once its rows are stored, adds one per row to the count of every
``rows`` rows of y it wrote (a release: its stores are visible to whoever sees the count). The step then waits on the
counts of the rows it reads instead of on the product's end, and its work runs beside the product's tail.

The counts are zero before the product and are set back to zero by the kernel that reads them, as the tickets are
(``kernels/tickets.py``): one buffer per device, so a signalled product and its reader must run as a pair. A caller
that signals and then does not launch the reader sets them back itself (``reset``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class RowSignal(NamedTuple):
    """The counts a one-row product adds to as its rows land: ``counts[r // rows]`` reaches the number of y's rows
    in ``[r // rows * rows, r // rows * rows + rows)`` once all of them are stored."""

    counts: torch.Tensor  # int32, contiguous, at least cdiv(N, rows) of them, zero before the product
    rows: int

    @classmethod
    def zeroed(cls, device: torch.device, n: int, rows: int) -> RowSignal:
        """The held zeroed counts for a product of ``n`` rows of y on ``device``, one per ``rows`` rows."""
        from statex_hf.kernels.tickets import zeroed_tickets

        return cls(zeroed_tickets(device, -(-n // rows), kind="ready"), rows)

    def applies(self, n: int, device: torch.device) -> bool:
        """Whether the counts take a product of ``n`` rows of y on ``device``."""
        counts = self.counts
        return (
            self.rows > 0
            and counts.dtype == torch.int32
            and counts.is_contiguous()
            and counts.device == device
            and counts.numel() >= -(-n // self.rows)
        )

    def reset(self) -> None:
        """Sets the counts back to zero, where no reader ran after the product."""
        self.counts.zero_()
