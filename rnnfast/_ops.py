"""The rnnfast dispatcher operators: handles, and their fake kernels for tracing.

The operators are defined in C++ (``csrc/op_schemas.cpp``; CPU kernels in ``csrc/cpu/ops_cpu.cpp``,
CUDA kernels in the CUDA library, ``csrc/cuda/ops_cuda.cpp``; autograd in ``csrc/autograd.cpp``)
and registered when ``rnnfast._C`` is imported; with
``RNNFAST_AUTOGRAD=python`` the extension leaves the Autograd key out and this module registers
``_autograd.py``'s kernels instead:

``rnnfast::layer_forward(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
allow_tf32=False) -> (y, h_n, c_n)``
    One layer-direction on the time-major packed layout. ``cell`` is the cell's code
    (``_cells.Cell.code``: 0 LSTM, 1 GRU, 2 RNN_TANH, 3 RNN_RELU; an int, not the mode string, because
    the stable ABI's boxing of a ``str`` argument leaks in torch 2.13). ``x: [N, I]`` rows of all steps,
    ``batch_sizes: [T]`` int64 CPU (or None for a padded input: T = N / B steps of B rows),
    ``h0: [B, P]``, ``c0: [B, H]`` (LSTM) or None; weights in torch.nn's layout. Returns
    ``y: [N, P]``, ``h_n: [B, P]``, ``c_n: [B, H]`` (``[0]`` for cells without a cell state).
    Differentiable (fused backward), twice (double backward through the reference equations).
    ``allow_tf32``: fp32 GEMMs may use TF32 tensor cores (CUDA only; the modules pass torch's switch
    for RNNs, see ``_tf32.py``).
``rnnfast::layer_forward_train(...) -> (y, h_n, c_n, workspace)``
    The same, also returning the saved activations (``[N * saved_width]``, see ``_cells.py``).
``rnnfast::layer_backward(..., reverse, y, workspace, dy, dh_n, dc_n, output_mask, allow_tf32=False)
-> (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr)``
    The fused gradients; ``output_mask`` = (input, initial states, weights). Gradients not asked
    for or not existing are ``[0]`` tensors.

The fake kernels below give every output's shape from the input shapes alone (never from the
values of ``batch_sizes``), so they work with symbolic shapes under torch.compile and export.
"""

from __future__ import annotations

import os
import warnings

import torch

from ._cells import CELL_OF_CODE
from ._extension import _C

layer_forward = layer_forward_train = layer_backward = module_layer_forward = None
CPP_AUTOGRAD = False

if _C is not None:
    layer_forward = torch.ops.rnnfast.layer_forward.default
    layer_forward_train = torch.ops.rnnfast.layer_forward_train.default
    layer_backward = torch.ops.rnnfast.layer_backward.default

    # The autograd kernels: csrc/autograd.cpp's, or, where the extension registered none (the
    # stable-ABI build; RNNFAST_AUTOGRAD=python on today's build), rnnfast/_autograd.py's.
    if os.environ.get("RNNFAST_AUTOGRAD", "") not in ("", "c++", "python"):
        warnings.warn(f"RNNFAST_AUTOGRAD={os.environ['RNNFAST_AUTOGRAD']!r} is neither 'python' nor 'c++': "
                      "the C++ autograd is in use", RuntimeWarning, stacklevel=1)
    CPP_AUTOGRAD = torch._C._dispatch_has_kernel_for_dispatch_key("rnnfast::layer_forward", "Autograd")
    if not CPP_AUTOGRAD:
        from . import _autograd

        _autograd.register()

    # What the modules call: the operator; under the Python autograd its eager entry, which runs
    # the autograd kernel's work without the dispatcher's round trip into Python where nothing
    # needs the dispatcher (rnnfast/_autograd.py: layer_forward).
    module_layer_forward = layer_forward if CPP_AUTOGRAD else _autograd.layer_forward

    def _cell(code: int):
        cell = CELL_OF_CODE.get(code)
        torch._check(cell is not None, lambda: f"rnnfast: unknown cell code {code} "
                     "(expected 0 LSTM, 1 GRU, 2 RNN_TANH or 3 RNN_RELU)")
        return cell

    def _fake_forward_outputs(cell, x, h0, w_ih):
        hidden_size = w_ih.shape[0] // cell.gates
        y = x.new_empty(x.shape[0], h0.shape[1])
        h_n = x.new_empty(h0.shape)
        c_n = x.new_empty(h0.shape[0], hidden_size) if cell.cell_state else x.new_empty(0)
        return y, h_n, c_n, hidden_size

    @torch.library.register_fake("rnnfast::layer_forward")
    def _layer_forward_fake(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, allow_tf32=False):
        y, h_n, c_n, _ = _fake_forward_outputs(_cell(cell), x, h0, w_ih)
        return y, h_n, c_n

    @torch.library.register_fake("rnnfast::layer_forward_train")
    def _layer_forward_train_fake(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                                  allow_tf32=False):
        spec = _cell(cell)
        y, h_n, c_n, hidden_size = _fake_forward_outputs(spec, x, h0, w_ih)
        workspace = x.new_empty(x.shape[0] * spec.saved_width(hidden_size, w_hr is not None))
        return y, h_n, c_n, workspace

    @torch.library.register_fake("rnnfast::layer_backward")
    def _layer_backward_fake(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                             y, workspace, dy, dh_n, dc_n, output_mask, allow_tf32=False):
        spec = _cell(cell)
        need_dx, need_dstate, need_dweights = output_mask

        def like(t, wanted):
            return x.new_empty(t.shape) if wanted and t is not None else x.new_empty(0)

        return (
            like(x, need_dx),
            like(h0, need_dstate),
            like(c0, need_dstate and spec.cell_state),
            like(w_ih, need_dweights),
            like(w_hh, need_dweights),
            like(b_ih, need_dweights),
            like(b_hh, need_dweights),
            like(w_hr, need_dweights),
        )
