"""The operators' autograd in Python: what the stable-ABI build (issue 16) registers, since the
stable ABI has no C++ autograd. Today's build registers ``csrc/autograd.cpp`` instead; with
``RNNFAST_AUTOGRAD=python`` in the environment it leaves the Autograd key to this module
(``rnnfast.backend()["autograd"]`` says which runs). The semantics are autograd.cpp's:

* ``layer_forward`` / ``layer_forward_train`` with an input that requires grad run the training
  forward and record one node whose backward is the fused ``layer_backward``;
* ``layer_backward`` with an input that requires grad (``create_graph=True``) records a node that
  differentiates the first-order gradients through the reference equations
  (``rnnfast.reference.layer_direction``): exact, slower, and only on that path; the first-order
  gradients stay the fused kernel's;
* forward-mode AD: ``layer_forward`` runs the reference equations, whose torch ops carry tangents;
  the other two refuse.

Differences from autograd.cpp, none in the first-order values: the reference equations are
``rnnfast.reference``'s, not ``layer_reference.cpp``'s (second-order results and forward-AD
tangents agree to rounding, not bit for bit); a node's edges are those of a Python
Function (one per tensor argument, ``batch_sizes`` included, none for an absent
optional tensor; autograd.cpp has eight in a fixed order); which gradients the backward computes
follows ``needs_input_grad`` (whether an input requires grad), not the engine's plan for the
current backward call, so ``torch.autograd.grad(loss, [x])`` also computes the weight gradients
(and discards them).

The kernels are registered with ``torch.library.Library.impl`` on the Autograd key rather than
``torch.library.register_autograd``: that one's ``Function.apply`` binds the arguments through
``inspect.signature`` on every call (the stable-ABI prototype measured it, ``python
benchmarks/stable_abi_overhead.py``: 439 against 309 µs per training call for a plain
autograd.Function on the Zen 3 VM, ``docs/results/zen3-avx2/stable_abi_overhead.txt``). Here the
single-level Functions (``_KernelFunction``) are applied through the C++ ``_FunctionBase.apply`` (see ``_apply``).
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
from torch._functorch.utils import enable_single_level_autograd_function
from torch.autograd.function import _SingleLevelFunction

from ._cells import CELL_OF_CODE

_C = torch._C
_BELOW_AUTOGRAD = _C._after_autograd_keyset
_layer_forward = torch.ops.rnnfast.layer_forward.default
_layer_forward_train = torch.ops.rnnfast.layer_forward_train.default
_layer_backward = torch.ops.rnnfast.layer_backward.default


def _redispatcher(op):
    """``op.redispatch`` without its Python frame: the handle's boxed redispatch (a private
    attribute of OpOverload; its public method where a torch lacks it)."""
    handle = getattr(op, "_handle", None)
    return getattr(handle, "redispatch_boxed", None) or op.redispatch


# (keyset, *op arguments) -> the op's outputs, from the kernel below the keyset's first key.
_redispatch_forward = _redispatcher(_layer_forward)
_redispatch_forward_train = _redispatcher(_layer_forward_train)
_redispatch_backward = _redispatcher(_layer_backward)

# The count of differentiable layer inputs (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr).
_NUM_LAYER_INPUTS = 8


class _KernelFunction(_SingleLevelFunction):
    """The base of the autograd kernels' Functions: a ``_SingleLevelFunction``, not an
    ``autograd.Function``. Applied inside an Autograd kernel (under torch.func, the current level's
    kernel, on that level's tensors), it records one node of that level, as a C++ autograd kernel
    does. An ``autograd.Function`` is for calls above the dispatcher: while a transform is active,
    torch 2.14's C++ ``apply`` refuses one without setup_context and sends one with it into
    functorch's ``custom_function_call``, which fails inside an Autograd kernel. torch applies its
    own per-level Functions this way (``_functorch/autograd_function.py``,
    ``_subclasses/fake_impls.py``)."""

    # What compiled autograd asks a Python node's Function for (autograd.Function's).
    _compiled_autograd_key = staticmethod(torch.autograd.Function._compiled_autograd_key)


def _apply(function, *args):
    """``function.apply(*args)`` through the C++ ``_FunctionBase.apply``, never Function.apply's
    Python wrapper (whose argument binding costs more than a one-step layer); while a torch.func
    transform is active, with torch's permission for a single-level Function (see
    _KernelFunction)."""
    if _C._are_functorch_transforms_active():
        with enable_single_level_autograd_function():
            return function._raw_apply(*args)
    return function._raw_apply(*args)


def _has_tangent(tensors) -> bool:
    if fwAD._current_level < 0:  # no dual level entered: no tensor has a tangent
        return False
    return any(t is not None and fwAD.unpack_dual(t).tangent is not None for t in tensors)


def _refuse_forward_ad(op: str, tensors) -> None:
    if _has_tangent(tensors):
        raise NotImplementedError(f"rnnfast::{op} does not support forward-mode AD; rnnfast::layer_forward does "
                                  "(through the reference equations)")


def _reference(cell_code, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """(y, h_n, c_n or None) of one layer-direction through the reference equations."""
    from . import reference  # noqa: PLC0415  (imported on the rare paths that need it)

    cell = CELL_OF_CODE[cell_code]
    sizes = [h0.shape[0]] * (x.shape[0] // h0.shape[0]) if batch_sizes is None else batch_sizes.tolist()
    weights = {"w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh, "w_hr": w_hr}
    state0 = (h0, c0) if cell.cell_state else (h0,)
    y, state = reference.layer_direction(cell.name, x, sizes, state0, weights, reverse)
    return y, state[0], (state[1] if cell.cell_state else None)


class _LayerForward(_KernelFunction):
    """The training forward of one layer-direction; its backward is the fused layer_backward.
    Inputs: (keyset, cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, allow_tf32);
    outputs: (y, h_n, c_n, workspace), the workspace not differentiable."""

    @staticmethod
    def forward(ctx, keyset, cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, allow_tf32):
        # forward(ctx, ...) rather than forward + setup_context: one Python frame less per call. A
        # single-level Function applied through the C++ _FunctionBase.apply (_apply, layer_forward)
        # never takes functorch's custom_function_call path, which is what needs setup_context.
        out = _redispatch_forward_train(keyset, cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                        reverse, allow_tf32)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, out[0], out[3])
        ctx.args = (cell, batch_sizes, reverse, allow_tf32)
        # A kernel keyset of _backend_keyset's (the eager entry's calls, never the dispatcher's,
        # whose keysets are fresh objects): the first-order backward may go straight to that kernel.
        ctx.backend_keyset = keyset if any(keyset is k for k in _KERNEL_KEYSETS) else None
        ctx.cell_state = c0 is not None
        ctx.mark_non_differentiable(out[3])
        if c0 is None:
            ctx.mark_non_differentiable(out[2])  # [0]: no cell state
        ctx.set_materialize_grads(False)
        return out

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n, _):
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, workspace = ctx.saved_tensors
        cell, batch_sizes, reverse, allow_tf32 = ctx.args
        # Outputs that fed nothing have no gradient: zeros.
        dy = torch.zeros_like(y) if dy is None else dy
        dh_n = torch.zeros_like(h0) if dh_n is None else dh_n
        if ctx.cell_state:
            dc_n = torch.zeros_like(c0) if dc_n is None else dc_n
        else:
            dc_n = None
        need = ctx.needs_input_grad  # (keyset, cell, x, batch_sizes, h0, c0, w_ih, ..., w_hr, reverse, allow_tf32)
        need_x, need_state, need_weights = need[2], need[4] or need[5], any(need[6:11])
        args = (cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, y, workspace, dy, dh_n, dc_n,
                [need_x, need_state, need_weights], allow_tf32)
        if (ctx.backend_keyset is not None and not _C.is_grad_enabled() and not _dispatcher_needed()
                and _backend_keyset((x, dy, dh_n, dc_n)) is ctx.backend_keyset):
            # First order on plain tensors, nothing that needs the dispatcher: straight to the kernel.
            grads = _redispatch_backward(ctx.backend_keyset, *args)
        else:  # through the dispatcher: create_graph (layer_backward's autograd), modes, transforms
            grads = _layer_backward(*args)
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = grads
        return (None, None, dx if need_x else None, None, dh0 if need[4] else None, dc0 if need[5] else None,
                dw_ih if need[6] else None, dw_hh if need[7] else None, db_ih if need[8] else None,
                db_hh if need[9] else None, dw_hr if need[10] else None, None, None)


class _LayerBackward(_KernelFunction):
    """layer_backward, differentiable: its backward (a double backward) recomputes the forward
    through the reference equations and differentiates the first-order gradients there.
    Inputs: (keyset, cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, y,
    workspace, dy, dh_n, dc_n, output_mask, allow_tf32); outputs: the 8 gradients ([0] where not
    computed)."""

    @staticmethod
    def forward(keyset, cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, y, workspace, dy,
                dh_n, dc_n, output_mask, allow_tf32):
        return _redispatch_backward(keyset, cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                    reverse, y, workspace, dy, dh_n, dc_n, output_mask, allow_tf32)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (_, cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, _, _, dy, dh_n, dc_n,
         output_mask, _) = inputs
        layer_inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
        ctx.save_for_backward(*layer_inputs, dy, dh_n, dc_n)
        ctx.args = (cell, batch_sizes, reverse)
        # Which first-order gradients the op returned; the others are [0] placeholders.
        requested = (output_mask[0], output_mask[1], output_mask[1], *[output_mask[2]] * 5)
        ctx.computed = [bool(r) and t is not None for r, t in zip(requested, layer_inputs)]
        ctx.mark_non_differentiable(*[g for g, c in zip(output, ctx.computed) if not c])
        ctx.set_materialize_grads(False)  # ggrads of unused gradients stay None, as in autograd.cpp

    @staticmethod
    def backward(ctx, *ggrads):
        saved = list(ctx.saved_tensors)
        t, v = saved[:_NUM_LAYER_INPUTS], saved[_NUM_LAYER_INPUTS:]
        cell, batch_sizes, reverse = ctx.args
        need = ctx.needs_input_grad
        # needs_input_grad positions of the 8 layer inputs and of dy, dh_n, dc_n.
        input_slot = (2, 4, 5, 6, 7, 8, 9, 10)
        cotangent_slot = (14, 15, 16)
        outer_create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            # Differentiate w.r.t. fresh aliases of the saved tensors: the inner grads must stop at
            # this node's inputs instead of running (and freeing) their history, which the outer
            # backward still has to run. Higher orders reach the originals through the alias.
            t = [s.view_as(s) if s is not None and s.requires_grad else s for s in t]
            v = [s.view_as(s) if s is not None and s.requires_grad else s for s in v]
            # A first-order gradient is a function of the inputs it differentiates: an input that does
            # not require grad itself gets a stand-in leaf.
            for k in range(_NUM_LAYER_INPUTS):
                if ctx.computed[k] and ggrads[k] is not None and t[k] is not None and not t[k].requires_grad:
                    t[k] = t[k].detach().requires_grad_(True)
            y, h_n, c_n = _reference(cell, t[0], batch_sizes, t[1], t[2], *t[3:], reverse)
            outputs, cotangents = [y, h_n], [v[0], v[1]]
            if c_n is not None:
                outputs.append(c_n)
                cotangents.append(v[2])
            wrt_index = [k for k in range(_NUM_LAYER_INPUTS)
                         if ctx.computed[k] and ggrads[k] is not None and t[k] is not None]
            result = [None] * len(need)
            if not wrt_index:
                return tuple(result)
            first = torch.autograd.grad(outputs, [t[k] for k in wrt_index], cotangents, retain_graph=True,
                                        create_graph=True, allow_unused=True)
            targets = [(g, ggrads[k]) for g, k in zip(first, wrt_index) if g is not None and g.requires_grad]
            sources = [(s, slot) for s, slot in zip(t + v, input_slot + cotangent_slot)
                       if need[slot] and s is not None and s.requires_grad]
            if not targets or not sources:
                return tuple(result)
            # A third order reads the graph again.
            second = torch.autograd.grad([g for g, _ in targets], [s for s, _ in sources], [gg for _, gg in targets],
                                         retain_graph=outer_create_graph, create_graph=outer_create_graph,
                                         allow_unused=True)
        for g, (_, slot) in zip(second, sources):
            result[slot] = g
        return tuple(result)


for _function in (_LayerForward, _LayerBackward):
    _function._raw_apply = _C._FunctionBase.__dict__["apply"].__get__(None, _function)
    # Graph nodes named as csrc/autograd.cpp names them: rnnfast::LayerForwardBackward and
    # rnnfast::LayerBackwardBackward (a Python node's name is its Function's name + "Backward").
    _function._backward_cls.__name__ = "rnnfast::" + _function._backward_cls.__name__.lstrip("_")


def _needs_grad(*tensors) -> bool:
    return _C.is_grad_enabled() and _C._any_requires_grad(*tensors)


def _layer_forward_autograd(keyset, cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                            allow_tf32=False):
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    if _has_tangent(tensors):
        # The kernel checks the arguments (the reference equations would take wrong shapes silently).
        _redispatch_forward(keyset & _BELOW_AUTOGRAD, cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                            reverse, allow_tf32)
        y, h_n, c_n = _reference(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
        return y, h_n, (x.new_empty(0) if c_n is None else c_n)
    below = keyset & _BELOW_AUTOGRAD
    if not _needs_grad(*tensors):
        return _redispatch_forward(below, cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                                   allow_tf32)
    return _apply(_LayerForward, below, cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                  allow_tf32)[:3]


def _layer_forward_train_autograd(keyset, cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                                  allow_tf32=False):
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    _refuse_forward_ad("layer_forward_train", tensors)
    below = keyset & _BELOW_AUTOGRAD
    if not _needs_grad(*tensors):
        return _redispatch_forward_train(below, cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                         reverse, allow_tf32)
    return _apply(_LayerForward, below, cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                  allow_tf32)


def _layer_backward_autograd(keyset, cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, y,
                             workspace, dy, dh_n, dc_n, output_mask, allow_tf32=False):
    args = (cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, y, workspace, dy, dh_n, dc_n,
            output_mask, allow_tf32)
    # y and the workspace are functions of the other inputs, which the recomputation differentiates
    # through: they get no gradient of their own.
    differentiable = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, dy, dh_n, dc_n)
    _refuse_forward_ad("layer_backward", (*differentiable, y))
    below = keyset & _BELOW_AUTOGRAD
    if not _needs_grad(*differentiable):
        return _redispatch_backward(below, *args)
    # No edges to y and the workspace (y has the forward's node as its history).
    return _apply(_LayerBackward, below, cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                  y.detach(), workspace.detach(), dy, dh_n, dc_n, output_mask, allow_tf32)


_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def _plain_keysets():
    """{raw dispatch keys of a plain dense tensor: its backend's kernel keyset}, for CPU and CUDA,
    with autograd keys (ordinary tensors) and without (inference-mode tensors). Any other key
    (Python, Functionalize, ZeroTensor, Negative, Conjugate, a sparse, nested or other backend)
    means the dispatcher has work to do before a kernel may read the memory."""
    K, Set = _C.DispatchKey, _C.DispatchKeySet
    plain = {}
    for backend, autograd, autocast in ((K.CPU, K.AutogradCPU, K.AutocastCPU), (K.CUDA, K.AutogradCUDA, K.AutocastCUDA)):
        kernel = Set(backend)
        plain[(kernel | Set(K.ADInplaceOrView) | Set(autograd) | Set(autocast)).raw_repr()] = kernel
        plain[(kernel | Set(autocast)).raw_repr()] = kernel
    return plain


_PLAIN_KEYSETS = _plain_keysets()
_KERNEL_KEYSETS = tuple({id(k): k for k in _PLAIN_KEYSETS.values()}.values())


def _backend_keyset(tensors):
    """The kernel keyset of the backend that every given tensor (None skipped) is a plain dense
    tensor of, or None: a subclass (fake, functional, wrapper or __torch_function__ subclasses), a
    key beyond the backend's (see _plain_keysets), or tensors of different backends, which the
    dispatcher then sends to the kernel (and the error) it would anyway."""
    keyset = None
    for t in tensors:
        if t is None:
            continue
        if type(t) not in _PLAIN_TENSOR_TYPES:
            return None
        k = _PLAIN_KEYSETS.get(_C._dispatch_keys(t).raw_repr())
        if k is None or (keyset is not None and k is not keyset):
            return None
        keyset = k
    return keyset


def _dispatcher_needed() -> bool:
    """Whether something that only the dispatcher honours is active: torch.compile / export, a
    dispatch or torch-function mode, a torch.func transform, forward AD, the JIT tracer, the
    profiler (which records dispatcher calls)."""
    # is_compiling first: Dynamo folds it to True and traces none of the other checks.
    return bool(torch.compiler.is_compiling() or _C._len_torch_dispatch_stack()
                or _C._is_torch_function_mode_enabled() or _C._are_functorch_transforms_active()
                or fwAD._current_level >= 0 or _C._get_tracing_state() is not None
                or _C._autograd._profiler_enabled())


def _eager_keyset(tensors):
    """The kernel keyset an eager call may go straight to, or None where it must go through the
    dispatcher (_dispatcher_needed, _backend_keyset)."""
    if _dispatcher_needed():
        return None
    return _backend_keyset(tensors)


def layer_forward(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, allow_tf32=False):
    """rnnfast::layer_forward as the modules call it under the Python autograd: a call that records
    a graph on plain eager tensors does the Autograd kernel's work here, without the dispatcher's
    boxed round trip into it (the kernel is Python, so that trip costs Python time twice); an
    inference call skips the Autograd kernel, which would only pass it on; everything else is the
    operator."""
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    # is_compiling first: Dynamo folds it to True and traces none of the checks (see _dispatcher_needed).
    if not torch.compiler.is_compiling():
        if _needs_grad(*tensors):
            keyset = _eager_keyset(tensors)
            if keyset is not None:
                return _LayerForward._raw_apply(keyset, cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                                reverse, allow_tf32)[:3]
        elif (fwAD._current_level < 0 and not _C._are_functorch_transforms_active()
              and not _C._is_torch_function_mode_enabled() and not _C._has_torch_function(tensors)):
            # Inference: the Autograd kernel would only pass the call on (no tangent, nothing to
            # record), after a boxed trip into Python. Skip it; every other key still dispatches.
            # Not under __torch_function__ (a mode or subclass): its handler runs inside the call
            # and may hand the operator tensors that do require grad.
            with _C._AutoDispatchBelowAutograd():
                return _layer_forward(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                                      allow_tf32)
    return _layer_forward(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, allow_tf32)


_LIBRARY = None


def register() -> None:
    """Register the Python autograd kernels of the three operators (once)."""
    global _LIBRARY
    if _LIBRARY is not None:
        return
    lib = torch.library.Library("rnnfast", "IMPL")  # noqa: TOR901  (kept for the process's lifetime)
    lib.impl("layer_forward", _layer_forward_autograd, "Autograd", with_keyset=True)
    lib.impl("layer_forward_train", _layer_forward_train_autograd, "Autograd", with_keyset=True)
    lib.impl("layer_backward", _layer_backward_autograd, "Autograd", with_keyset=True)
    _LIBRARY = lib
