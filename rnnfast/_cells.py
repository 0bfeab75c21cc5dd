"""The cell table: what distinguishes one recurrent cell from another, as data.

Mirrors ``csrc/cells.h`` (``tests/test_ops.py`` checks that the two agree). The fake kernels size
the saved-activation workspace from it, and the modules read the cell of a mode from it; adding a
cell is an entry here and in ``cells.h`` plus its math, not a branch in the orchestration.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Cell:
    name: str  # torch.nn's mode string: "LSTM", "GRU", "RNN_TANH", "RNN_RELU"
    code: int  # CellType in cells.h: the ops' `int cell` argument
    gates: int  # gate blocks of H rows in weight_ih / weight_hh
    cell_state: bool  # carries c next to h
    projection: bool  # may have weight_hr (proj_size)
    separate_hidden: bool  # h @ w_hh^T kept apart from x @ w_ih^T (GRU)
    saved: tuple[str, ...]  # saved blocks of a training forward, in workspace order

    def saved_width(self, hidden_size: int, proj: bool) -> int:
        """Saved elements per row of a training forward: the workspace is ``[N * width]``."""
        width = sum(self.gates * hidden_size if block == "gates" else hidden_size for block in self.saved)
        return width + (hidden_size if proj else 0)  # the projection's input m_t


CELLS: dict[str, Cell] = {
    cell.name: cell
    for cell in (
        Cell("LSTM", 0, 4, cell_state=True, projection=True, separate_hidden=False, saved=("gates", "cell")),
        Cell("GRU", 1, 3, cell_state=False, projection=False, separate_hidden=True, saved=("gates", "hidden_n")),
        Cell("RNN_TANH", 2, 1, cell_state=False, projection=False, separate_hidden=False, saved=()),
        Cell("RNN_RELU", 3, 1, cell_state=False, projection=False, separate_hidden=False, saved=()),
    )
}

CELL_OF_CODE: dict[int, Cell] = {cell.code: cell for cell in CELLS.values()}
