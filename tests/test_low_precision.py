"""bfloat16 and float16: every module, both directions of autograd, and torch.autocast.

rnnfast stores inputs, weights, outputs, saved activations and gradients in the module's dtype and
accumulates in float32 (GEMMs, gate math, the running cell state and recurrent gradients,
weight-gradient sums).  The checks:

* against torch.nn in float64 on the same rounded weights and inputs (so only rnnfast's own
  rounding is measured): outputs, final states and every gradient within LOW_TOL of the largest
  reference value;
* against torch.nn's own module in the same dtype: within 2 * LOW_TOL (both err);
* every CPU instruction set (native bf16 dot products, converted fp32 panels) within the same bound;
* ``torch.autocast("cpu")``: the result dtypes of torch.nn for every module and input form, values
  within LOW_TOL of float64 on autocast's rounded operands, and within 2 * LOW_TOL of torch.nn's
  autocast result where torch has a kernel on this CPU; float32 gradients of float32 parameters;
* the operators' fake kernels agree with the real ones in bfloat16 (opcheck).

LOW_TOL: max |rnnfast - float64 reference| / max |reference|, per tensor.  Unit roundoff u is
2^-8 for bfloat16 and 2^-11 for float16; the bound is 5u.  Measured over 12 seeds of every case
below: rnnfast used at most 2.5u (bf16) and 2u (fp16) against float64, and at most 2.7u of the
2 * 5u bound against torch.nn's own modules, whose own error against float64 reaches 5.5u
(bf16, T=30) and 3.5u (fp16).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import rnnfast
from rnnfast import _extension

from cases import Case, flatten

C = _extension.require_extension()

LOW_DTYPES = (torch.bfloat16, torch.float16)
LOW_TOL = {torch.bfloat16: 5 * 2.0**-8, torch.float16: 5 * 2.0**-11}


def dtype_id(dtype):
    return str(dtype).removeprefix("torch.")


def big(case: Case, **kw) -> Case:
    """The case at sizes that fill vectors, leave tails and split the units across two threads."""
    sizes = dict(input_size=7, hidden_size=40, batch=5, seq_len=12)
    sizes.update(kw)
    return dataclasses.replace(case, **sizes)


CASES = [
    big(Case("LSTM")),
    big(Case("LSTM", batch_first=True, bias=False)),
    big(Case("LSTM", num_layers=2, bidirectional=True, form="packed_unsorted")),
    big(Case("LSTM", proj_size=9, bidirectional=True)),
    big(Case("LSTM", proj_size=9, form="packed_unsorted")),
    big(Case("LSTM", form="unbatched"), seq_len=40),
    big(Case("GRU", num_layers=2, bidirectional=True)),
    big(Case("GRU", form="packed_unsorted", bias=False)),
    big(Case("GRU", form="unbatched")),
    big(Case("RNN", nonlinearity="tanh", bidirectional=True, form="packed_unsorted")),
    big(Case("RNN", nonlinearity="relu", num_layers=2)),
    big(Case("LSTMCell")),
    big(Case("GRUCell", bias=False)),
    big(Case("RNNCell", nonlinearity="tanh")),
    big(Case("RNNCell", nonlinearity="relu", form="unbatched")),
]


def relu_gradients(case: Case) -> bool:
    """A unit whose pre-activation is within rounding of 0 has derivative 0 in one precision and 1
    in the other: relu gradients differ from float64 by O(1) in low precision, for torch.nn's own
    bf16 module too (measured up to 0.37 of the largest value). Such cases compare outputs only;
    relu gradients are checked in float32/float64 (test_parity.py, test_gradcheck.py)."""
    return case.kind.startswith("RNN") and case.nonlinearity == "relu"


def run(case: Case, module, inputs, lengths, upstream):
    """Outputs and the gradients of (inputs, parameters) for fixed upstream gradients."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    for p in module.parameters():
        p.grad = None
    outs = case.call(module, *inputs, lengths=lengths)
    torch.autograd.backward(outs, [g.to(o.dtype) for g, o in zip(upstream, outs)])
    grads = [t.grad for t in inputs] + [p.grad for p in module.parameters()]
    return [o.detach() for o in outs], grads


@dataclasses.dataclass
class LowPrecisionSetup:
    """A low-precision case with its float64 reference: the pair (torch.nn, rnnfast) in the
    case's dtype with the same rounded weights, inputs, upstream gradients rounded to the dtype,
    and torch.nn's float64 outputs and gradients on those rounded values."""
    reference: torch.nn.Module
    fast: torch.nn.Module
    inputs: list
    lengths: object
    upstream: list
    want_out: list
    want_grads: list


def low_precision_setup(case: Case) -> LowPrecisionSetup:
    reference, fast = case.build_pair()  # same weights, already in the case's dtype (rounded)
    exact = dataclasses.replace(case, dtype=torch.float64).build(torch.nn)
    exact.load_state_dict({k: v.double() for k, v in reference.state_dict().items()})
    inputs = case.tensors(requires_grad=False)
    lengths = case.make_lengths()
    with torch.no_grad():
        shapes = [o.shape for o in case.call(exact, *[t.double() for t in inputs], lengths=lengths)]
    upstream = [torch.randn(s, dtype=torch.float64).to(case.dtype).double() for s in shapes]
    want_out, want_grads = run(case, exact, [t.double() for t in inputs], lengths, upstream)
    return LowPrecisionSetup(reference, fast, inputs, lengths, upstream, want_out, want_grads)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = want.abs().max().item()
    return (got.double() - want.double()).abs().max().item() / max(scale, 1e-6)


def assert_within(got, want, tol, what):
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, (what, k)
        err = relative_error(g, w)
        assert err <= tol, f"{what} #{k}: relative error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id.rsplit("-", 1)[0])
def test_matches_float64_and_torch_low_precision(case, dtype):
    case = dataclasses.replace(case, dtype=dtype)
    setup = low_precision_setup(case)
    reference, fast, inputs, lengths, upstream = (setup.reference, setup.fast, setup.inputs, setup.lengths,
                                                  setup.upstream)
    want_out, want_grads = setup.want_out, setup.want_grads
    out, grads = run(case, fast, inputs, lengths, upstream)
    for t in out + grads:
        assert t.dtype == dtype
    tol = LOW_TOL[dtype]
    assert_within(out, want_out, tol, "output vs float64")
    torch_out, torch_grads = run(case, reference, inputs, lengths, upstream)
    assert_within(out, torch_out, 2 * tol, f"output vs torch.nn {dtype_id(dtype)}")
    if relu_gradients(case):
        assert all(torch.isfinite(g).all() for g in grads)
        return
    assert_within(grads, want_grads, tol, "gradient vs float64")
    assert_within(grads, torch_grads, 2 * tol, f"gradient vs torch.nn {dtype_id(dtype)}")


def test_inference_matches_training_forward():
    """no_grad inference and the training forward give the same bf16 outputs."""
    case = big(Case("LSTM", num_layers=2, proj_size=9), dtype=torch.bfloat16)
    _, fast = case.build_pair()
    inputs = case.tensors(requires_grad=False)
    train = case.call(fast, *inputs)
    with torch.no_grad():
        infer = case.call(fast.eval(), *inputs)
    for a, b in zip(train, infer):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)


@pytest.mark.parametrize("capability", rnnfast.backend()["cpu_capabilities"])
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
def test_every_instruction_set(capability, dtype, two_threads):
    """Native bf16 dot products (avx512_bf16) and fp32 panels (the other builds) agree with the
    float64 reference equally well."""
    previous = C.cpu_capability()
    C.set_cpu_capability(capability)
    try:
        test_matches_float64_and_torch_low_precision(CASES[2], dtype)
        test_matches_float64_and_torch_low_precision(CASES[6], dtype)
    finally:
        C.set_cpu_capability(previous)


def test_long_sequence_bf16():
    """The state is carried in float32 (c) and bf16 (h, the module's output): rounding errors do
    not grow over a long sequence."""
    case = big(Case("LSTM"), seq_len=400, batch=3, dtype=torch.bfloat16)
    reference, fast = case.build_pair()
    exact = dataclasses.replace(case, dtype=torch.float64).build(torch.nn)
    exact.load_state_dict({k: v.double() for k, v in reference.state_dict().items()})
    inputs = case.tensors(requires_grad=False)
    with torch.no_grad():
        got = case.call(fast, *inputs)
        want = case.call(exact, *[t.double() for t in inputs])
    assert_within(got, want, LOW_TOL[torch.bfloat16], "T=400 output")


# ---- torch.autocast ---------------------------------------------------------------------------

AUTOCAST_CASES = [
    big(Case("LSTM"), dtype=torch.float32),
    big(Case("LSTM", form="packed_unsorted"), dtype=torch.float32),
    big(Case("LSTM", proj_size=9), dtype=torch.float32),
    big(Case("LSTM", proj_size=9, form="packed_unsorted"), dtype=torch.float32),
    big(Case("LSTM", form="unbatched"), dtype=torch.float32),
    big(Case("GRU"), dtype=torch.float32),
    big(Case("GRU", form="packed_unsorted"), dtype=torch.float32),
    big(Case("RNN", nonlinearity="tanh"), dtype=torch.float32),
    big(Case("RNN", nonlinearity="relu", form="packed_unsorted"), dtype=torch.float32),
    big(Case("LSTMCell"), dtype=torch.float32),
    big(Case("GRUCell"), dtype=torch.float32),
    big(Case("RNNCell", nonlinearity="tanh"), dtype=torch.float32),
]


def autocast_run(case, module, inputs, lengths, upstream, dtype):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    for p in module.parameters():
        p.grad = None
    with torch.autocast("cpu", dtype=dtype):
        outs = case.call(module, *inputs, lengths=lengths)
    torch.autograd.backward(outs, [g.to(o.dtype) for g, o in zip(upstream, outs)])
    return [o.detach() for o in outs], [t.grad for t in inputs] + [p.grad for p in module.parameters()]


def autocast_float64_reference(case, module, inputs, lengths, upstream, dtype):
    """What autocast asks for, computed in float64: torch.nn on the module's weights, the inputs and
    the upstream gradients rounded to `dtype` (autocast casts them), independent of the CPU."""
    exact = dataclasses.replace(case, dtype=torch.float64).build(torch.nn)
    exact.load_state_dict({k: v.to(dtype).double() for k, v in module.state_dict().items()})
    return run(case, exact, [t.to(dtype).double() for t in inputs], lengths,
               [g.to(dtype).double() for g in upstream])


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", AUTOCAST_CASES, ids=lambda c: c.id.rsplit("-", 1)[0])
def test_autocast_matches_torch(case, dtype):
    """rnnfast under autocast against the float64 equations on autocast's rounded operands (on any
    CPU), and against torch.nn's own autocast result where torch has a kernel for it on this CPU:
    torch 2.13's oneDNN LSTM has no float16 primitive anywhere and no bfloat16 one without
    AVX512-BF16 ("could not create a primitive descriptor"); rnnfast runs both (README)."""
    reference, fast = case.build_pair()
    inputs = case.tensors(requires_grad=False)
    lengths = case.make_lengths()
    with torch.no_grad():
        shapes = [o.shape for o in case.call(reference, *inputs, lengths=lengths)]
    upstream = [torch.randn(s) for s in shapes]
    out, grads = autocast_run(case, fast, inputs, lengths, upstream, dtype)
    assert all(g.dtype == torch.float32 for g in grads)  # float32 leaves get float32 gradients
    try:
        want_out, want_grads = autocast_run(case, reference, inputs, lengths, upstream, dtype)
    except RuntimeError as error:
        # oneDNN lacks the kernel on this CPU, so autocast chose `dtype` for this call.
        assert "primitive descriptor" in str(error), error
        want_out = want_grads = None
    # torch.nn's result dtypes under autocast (e.g. a packed LSTM runs in float32).
    want_dtypes = [o.dtype for o in want_out] if want_out is not None else [dtype] * len(out)
    assert [o.dtype for o in out] == want_dtypes
    # The equations in float64 on the operands autocast rounded (none where it ran in float32).
    rounding = dtype if out[0].dtype == dtype else torch.float32
    exact_out, exact_grads = autocast_float64_reference(case, fast, inputs, lengths, upstream, rounding)
    assert_within(out, exact_out, LOW_TOL[dtype], "autocast output vs float64")
    if not relu_gradients(case):
        assert_within(grads, exact_grads, LOW_TOL[dtype], "autocast gradient vs float64")
    if want_out is None:
        return
    tol = 2 * LOW_TOL[dtype]
    assert_within(out, want_out, tol, "autocast output vs torch.nn")
    if not relu_gradients(case):
        assert_within(grads, want_grads, tol, "autocast gradient vs torch.nn")


def test_autocast_leaves_float64_alone():
    case = big(Case("GRU"), dtype=torch.float64)
    reference, fast = case.build_pair()
    inputs = case.tensors(requires_grad=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = case.call(fast, *inputs)
    assert all(o.dtype == torch.float64 for o in out)
    torch.testing.assert_close(out, case.call(reference, *inputs))


# ---- operators --------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN_TANH"])
def test_opcheck_bfloat16(cell):
    from test_ops import opcheck_forward_and_backward

    opcheck_forward_and_backward(cell, torch.bfloat16)



def test_compile_fullgraph_bf16_and_autocast():
    """torch.compile(fullgraph=True): a bf16 module, and autocast's dtype rules inside the graph."""
    torch._dynamo.reset()
    case = big(Case("LSTM", num_layers=2), dtype=torch.bfloat16)
    _, fast = case.build_pair()
    x, h0, c0 = case.tensors(requires_grad=False)
    compiled = torch.compile(fast, fullgraph=True)
    torch.testing.assert_close(flatten(compiled(x, (h0, c0))), flatten(fast(x, (h0, c0))), rtol=0, atol=0)

    rnn = rnnfast.RNN(7, 40)
    step = torch.compile(lambda x: rnn(x), fullgraph=True)
    x = torch.randn(6, 3, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = step(x), rnn(x)
    assert [t.dtype for t in flatten(got)] == [torch.bfloat16] * 2
    torch.testing.assert_close(flatten(got), flatten(want), rtol=0, atol=0)
