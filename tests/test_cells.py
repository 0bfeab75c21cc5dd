"""rnnfast.LSTMCell / GRUCell / RNNCell (tanh, relu) against torch.nn's cells.

Numbers: outputs and the gradients w.r.t. input, hx, cx and every parameter, over dtype, batched
and unbatched input, hx given or not, bias, odd sizes, batch 1 and larger, non-contiguous and
broadcast inputs and states, a 50-step decoder loop, train/eval/no_grad and batch size 0.
Contract: constructor, parameters and init, state_dict both ways, repr, isinstance, deepcopy,
pickle and torch.save of the whole module.  Errors: exception type always; message where torch
raises it from Python (torch/nn/modules/rnn.py) and where rnnfast replicates ATen's message
(rnnfast/modules.py: ``_check_cell_sizes`` and "lstm_cell expects two hidden states").
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import io
import pickle
from collections.abc import Callable

import pytest
import torch
from conftest import TOL, assert_close, assert_same_error, capture, origin
from layouts import offset, strided, transposed

import rnnfast

# (class name, nonlinearity): every cell, RNNCell with each nonlinearity.
CELL_KINDS = [("LSTMCell", "tanh"), ("GRUCell", "tanh"), ("RNNCell", "tanh"), ("RNNCell", "relu")]
DTYPES = (torch.float32, torch.float64)
DTYPE_IDS = ("f32", "f64")


def cell_kind_id(kind) -> str:
    name, nonlinearity = kind
    return f"{name}_{nonlinearity}" if name == "RNNCell" else name


parametrize_cells = pytest.mark.parametrize("kind", CELL_KINDS, ids=cell_kind_id)
parametrize_dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)


def cell_kwargs(kind, **kwargs) -> dict:
    name, nonlinearity = kind
    if name == "RNNCell":
        kwargs["nonlinearity"] = nonlinearity
    return kwargs


def cell_pair(kind, input_size=3, hidden_size=5, training=True, **kwargs):
    """A torch.nn cell and an rnnfast cell with identical weights (rnnfast's loaded strictly from
    torch's state_dict), in the same train/eval mode."""
    name, _ = kind
    kwargs = cell_kwargs(kind, **kwargs)
    reference = getattr(torch.nn, name)(input_size, hidden_size, **kwargs)
    fast = getattr(rnnfast, name)(input_size, hidden_size, **kwargs)
    fast.load_state_dict(reference.state_dict(), strict=True)
    return reference.train(training), fast.train(training)


@dataclasses.dataclass
class CellInputs:
    x: torch.Tensor
    hx: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None
    leaves: list[torch.Tensor]  # tensors to differentiate w.r.t. (x, h, c as applicable)
    names: list[str]


def make_cell_inputs(kind, input_size, hidden_size, batch, with_hx=True, dtype=torch.float64,
                     layout: Callable = lambda t: t, input_requires_grad=True) -> CellInputs:
    """Random input (and hx) of a cell call. ``batch=None``: unbatched (1-D) tensors. `layout`
    maps each fresh tensor to the one passed (same values and shape, e.g. non-contiguous)."""
    lead = () if batch is None else (batch,)
    x = layout(torch.randn(*lead, input_size, dtype=dtype)).requires_grad_(input_requires_grad)
    leaves, names = ([x], ["input"]) if input_requires_grad else ([], [])
    hx = None
    if with_hx:
        h = layout(torch.randn(*lead, hidden_size, dtype=dtype)).requires_grad_()
        leaves.append(h)
        names.append("hx")
        hx = h
        if kind[0] == "LSTMCell":
            c = layout(torch.randn(*lead, hidden_size, dtype=dtype)).requires_grad_()
            leaves.append(c)
            names.append("cx")
            hx = (h, c)
    return CellInputs(x, hx, leaves, names)


def cell_outputs(result) -> list[torch.Tensor]:
    """h' of a GRU/RNN cell, (h', c') of an LSTM cell, as a list."""
    return list(result) if isinstance(result, tuple) else [result]


def assert_cell_outputs_close(expected, actual) -> None:
    assert isinstance(actual, tuple) == isinstance(expected, tuple), f"output type {type(actual)} != {type(expected)}"
    exp, act = cell_outputs(expected), cell_outputs(actual)
    assert len(act) == len(exp)
    for name, e, a in zip(("h'", "c'"), exp, act):
        assert a.shape == e.shape, f"{name} shape {tuple(a.shape)} != {tuple(e.shape)}"
        assert a.dtype == e.dtype, f"{name} dtype {a.dtype} != {e.dtype}"
        assert a.requires_grad == e.requires_grad, f"{name}.requires_grad {a.requires_grad} != {e.requires_grad}"
        assert_close(a, e, name)


def cell_gradients(module, outputs, grad_outputs, leaves, names, params=True) -> dict:
    wrt = dict(zip(names, leaves))
    if params:
        wrt.update((f"param {n}", p) for n, p in module.named_parameters())
    grads = torch.autograd.grad(outputs, list(wrt.values()), grad_outputs, allow_unused=True, materialize_grads=True)
    return dict(zip(wrt, grads))


def check_cell_parity(reference, fast, inputs: CellInputs, backward=True):
    """Outputs and, with `backward`, the gradients of a random projection of all outputs w.r.t.
    input, hx, cx and every parameter."""
    expected = reference(inputs.x, inputs.hx)
    actual = fast(inputs.x, inputs.hx)
    assert_cell_outputs_close(expected, actual)
    if backward:
        exp_out, act_out = cell_outputs(expected), cell_outputs(actual)
        grad_outputs = [torch.randn_like(t) for t in exp_out]
        exp_grads = cell_gradients(reference, exp_out, grad_outputs, inputs.leaves, inputs.names)
        act_grads = cell_gradients(fast, act_out, grad_outputs, inputs.leaves, inputs.names)
        assert act_grads.keys() == exp_grads.keys()
        for name, e in exp_grads.items():
            assert act_grads[name].dtype == e.dtype, f"gradient of {name}: dtype {act_grads[name].dtype} != {e.dtype}"
            if e.dtype in TOL:
                assert_close(act_grads[name], e, f"gradient of {name}")
            else:  # the gradient of a half-precision cx: torch's default tolerance of that dtype
                torch.testing.assert_close(act_grads[name], e)
    return expected, actual


# ---- parity grid ----------------------------------------------------------------------------------

SIZES = [(1, 1), (3, 17), (17, 3)]  # (input_size, hidden_size)
BATCHES = [None, 1, 5]  # None: unbatched


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: "unbatched" if b is None else f"B{b}")
@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: f"I{s[0]}H{s[1]}")
@parametrize_dtypes
@parametrize_cells
def test_cell_parity_grid(kind, dtype, sizes, batch, with_hx, bias):
    input_size, hidden_size = sizes
    reference, fast = cell_pair(kind, input_size, hidden_size, bias=bias, dtype=dtype)
    check_cell_parity(reference, fast, make_cell_inputs(kind, input_size, hidden_size, batch, with_hx, dtype))


@parametrize_dtypes
@parametrize_cells
def test_cell_parity_large(kind, dtype, two_threads):
    """GEMM sizes where a kernel may split work across threads."""
    reference, fast = cell_pair(kind, 64, 128, dtype=dtype)
    check_cell_parity(reference, fast, make_cell_inputs(kind, 64, 128, 64, True, dtype))


@parametrize_cells
def test_cell_parity_input_size_zero(kind):
    """torch's cells accept input_size 0 (torch.nn.LSTM etc. do not): h' depends on hx only."""
    reference, fast = cell_pair(kind, 0, 4, dtype=torch.float64)
    check_cell_parity(reference, fast, make_cell_inputs(kind, 0, 4, 3, True, torch.float64))


@parametrize_cells
def test_cell_hidden_size_zero_like_torch(kind):
    reference, fast = cell_pair(kind, 3, 0, dtype=torch.float64)
    check_cell_parity(reference, fast, make_cell_inputs(kind, 3, 0, 2, False, torch.float64))


# ---- batch size 0 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
@parametrize_cells
def test_cell_empty_batch_like_torch(kind, with_hx):
    reference, fast = cell_pair(kind, 3, 5, dtype=torch.float64)
    inputs = make_cell_inputs(kind, 3, 5, 0, with_hx, torch.float64)
    assert capture(lambda: reference(inputs.x, inputs.hx))[0] == "ok", "torch.nn now rejects batch size 0"
    check_cell_parity(reference, fast, inputs)


# ---- memory layouts -------------------------------------------------------------------------------


@pytest.mark.parametrize("layout, batch", [(strided, 4), (transposed, 4), (offset, 4), (strided, None), (offset, None)],
                         ids=["strided", "transposed", "offset", "strided-unbatched", "offset-unbatched"])
@parametrize_dtypes
@parametrize_cells
def test_cell_parity_noncontiguous(kind, dtype, layout, batch):
    reference, fast = cell_pair(kind, 5, 6, dtype=dtype)
    inputs = make_cell_inputs(kind, 5, 6, batch, True, dtype, layout=layout)
    for name, leaf in zip(inputs.names, inputs.leaves):
        if layout is offset:
            assert leaf.is_contiguous() and leaf.storage_offset() > 0, name
        else:
            assert not leaf.is_contiguous(), f"{name} should be non-contiguous"
    check_cell_parity(reference, fast, inputs)


@parametrize_cells
def test_cell_parity_expanded_inputs(kind):
    """Stride-0 (broadcast) input and states, as made by `.expand`: gradients flow to the bases."""
    reference, fast = cell_pair(kind, 4, 6, dtype=torch.float64)
    x_base = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    h_base = torch.randn(1, 6, dtype=torch.float64, requires_grad=True)
    c_base = torch.randn(6, dtype=torch.float64, requires_grad=True)
    x, h = x_base.expand(5, -1), h_base.expand(5, -1)
    if kind[0] == "LSTMCell":
        inputs = CellInputs(x, (h, c_base.expand(5, -1)), [x_base, h_base, c_base], ["x_base", "h_base", "c_base"])
    else:
        inputs = CellInputs(x, h, [x_base, h_base], ["x_base", "h_base"])
    check_cell_parity(reference, fast, inputs)


@parametrize_dtypes
@parametrize_cells
def test_cell_parity_noncontiguous_weights(kind, dtype):
    """Parameters replaced by non-contiguous ones (same values) in both modules."""
    reference, fast = cell_pair(kind, 4, 6, dtype=dtype)
    for module in (reference, fast):
        for name, p in list(module.named_parameters()):
            view = transposed(p.detach()) if p.dim() == 2 else strided(p.detach())
            assert not view.is_contiguous(), name
            setattr(module, name, torch.nn.Parameter(view))
    check_cell_parity(reference, fast, make_cell_inputs(kind, 4, 6, 3, True, dtype))


# ---- a decoder loop -------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [None, 3], ids=["unbatched", "B3"])
@parametrize_dtypes
@parametrize_cells
def test_cell_decoder_loop(kind, dtype, batch):
    """50 steps of a decoder: each step's input is a fresh input plus a projection of the previous
    h'; the loss reads every step's h' (and c').  Gradients w.r.t. every step's input, h0, c0, the
    cell's parameters and the projection's (shared by both runs) go through all 50 steps."""
    steps, input_size, hidden_size = 50, 4, 7
    reference, fast = cell_pair(kind, input_size, hidden_size, dtype=dtype)
    feedback = torch.nn.Linear(hidden_size, input_size, dtype=dtype)
    lead = () if batch is None else (batch,)
    xs = torch.randn(steps, *lead, input_size, dtype=dtype, requires_grad=True)
    h0 = torch.randn(*lead, hidden_size, dtype=dtype, requires_grad=True)
    c0 = torch.randn(*lead, hidden_size, dtype=dtype, requires_grad=True)
    is_lstm = kind[0] == "LSTMCell"
    loss_weights = torch.randn(steps, 2, *lead, hidden_size, dtype=dtype)

    def run(cell):
        state = (h0, c0) if is_lstm else h0
        loss, outputs = 0, []
        for t in range(steps):
            h = state[0] if is_lstm else state
            state = cell(xs[t] + feedback(h), state)
            for k, out in enumerate(cell_outputs(state)):
                loss = loss + (out * loss_weights[t, k]).sum()
                outputs.append(out)
        wrt = [xs, h0, *([c0] if is_lstm else []), *feedback.parameters(), *cell.parameters()]
        return outputs, torch.autograd.grad(loss, wrt)

    exp_outputs, exp_grads = run(reference)
    act_outputs, act_grads = run(fast)
    for t, (a, e) in enumerate(zip(act_outputs, exp_outputs)):
        assert_close(a, e, f"output {t}")
    names = ["xs", "h0", *(["c0"] if is_lstm else []), "feedback.weight", "feedback.bias",
             *(n for n, _ in reference.named_parameters())]
    assert len(names) == len(exp_grads)
    for name, a, e in zip(names, act_grads, exp_grads):
        assert torch.count_nonzero(e) > 0, f"gradient of {name} is zero: the loop does not reach it"
        assert_close(a, e, f"gradient of {name}")


# ---- which tensors require grad; train / eval / no_grad ------------------------------------------


@pytest.mark.parametrize("params_grad", [False, True], ids=["frozen", "params"])
@pytest.mark.parametrize("hx_grad", [False, True], ids=["hx_nograd", "hx_grad"])
@pytest.mark.parametrize("input_grad", [False, True], ids=["x_nograd", "x_grad"])
@parametrize_cells
def test_cell_requires_grad_combinations(kind, input_grad, hx_grad, params_grad):
    reference, fast = cell_pair(kind, 3, 4, dtype=torch.float64)
    for module in (reference, fast):
        module.requires_grad_(params_grad)
    inputs = make_cell_inputs(kind, 3, 4, 2, True, torch.float64, input_requires_grad=input_grad)
    for name, t in zip(inputs.names, inputs.leaves):
        if name in ("hx", "cx"):
            t.requires_grad_(hx_grad)
    expected, actual = reference(inputs.x, inputs.hx), fast(inputs.x, inputs.hx)
    assert_cell_outputs_close(expected, actual)  # includes requires_grad of every output
    wrt = [(n, t) for n, t in zip(inputs.names, inputs.leaves) if t.requires_grad]
    if not (wrt or params_grad):
        return
    grad_outputs = [torch.randn_like(t) for t in cell_outputs(expected)]
    names, leaves = [n for n, _ in wrt], [t for _, t in wrt]
    exp_grads = cell_gradients(reference, cell_outputs(expected), grad_outputs, leaves, names, params=params_grad)
    act_grads = cell_gradients(fast, cell_outputs(actual), grad_outputs, leaves, names, params=params_grad)
    for name in exp_grads:
        assert_close(act_grads[name], exp_grads[name], f"gradient of {name}")


@pytest.mark.parametrize("context", ["grad", "no_grad", "inference_mode"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("batch", [None, 3], ids=["unbatched", "B3"])
@parametrize_dtypes
@parametrize_cells
def test_cell_train_eval_no_grad(kind, dtype, batch, training, context):
    """Cells have no dropout: train and eval compute the same, with or without autograd."""
    reference, fast = cell_pair(kind, 5, 8, training=training, dtype=dtype)
    inputs = make_cell_inputs(kind, 5, 8, batch, True, dtype)
    if context == "grad":
        check_cell_parity(reference, fast, inputs)
        return
    with getattr(torch, context)():
        _, actual = check_cell_parity(reference, fast, inputs, backward=False)
    for t in cell_outputs(actual):
        assert not t.requires_grad, f"output requires grad under {context}"


@parametrize_cells
def test_cell_deterministic(kind, two_threads):
    """Two identical runs give bitwise identical outputs and gradients."""
    _, fast = cell_pair(kind, 16, 32, dtype=torch.float32)
    inputs = make_cell_inputs(kind, 16, 32, 24, True, torch.float32)
    runs = []
    for _ in range(2):
        outputs = cell_outputs(fast(inputs.x, inputs.hx))
        runs.append((outputs, cell_gradients(fast, outputs, [torch.ones_like(t) for t in outputs],
                                             inputs.leaves, inputs.names)))
    (out_a, grads_a), (out_b, grads_b) = runs
    for a, b in zip(out_a, out_b):
        assert torch.equal(a, b), "output differs between two identical runs"
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), f"gradient of {name} differs between two identical runs"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@parametrize_cells
def test_cell_non_finite_input_like_torch(kind, value):
    """One non-finite input element: same NaN/Inf positions and finite values as torch."""
    reference, fast = cell_pair(kind, 4, 5, dtype=torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64)
    x[1, 2] = value
    hx = make_cell_inputs(kind, 4, 5, 3, True, torch.float64).hx
    expected, actual = cell_outputs(reference(x, hx)), cell_outputs(fast(x, hx))
    for e, a in zip(expected, actual):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, equal_nan=True)
    if value != value:  # NaN must actually have reached h', or the test proves nothing
        assert torch.isnan(expected[0]).any()


# ---- dtypes of the states -------------------------------------------------------------------------


@pytest.mark.parametrize("c_dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["f16", "bf16", "f32"])
def test_lstm_cell_lower_precision_cx_promoted_like_torch(c_dtype):
    """A cx of lower precision than the module is promoted (torch: f * cx promotes); its gradient
    comes back in cx's own dtype."""
    reference, fast = cell_pair(("LSTMCell", "tanh"), 3, 4, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 4, dtype=c_dtype).requires_grad_()
    check_cell_parity(reference, fast, CellInputs(x, (h, c), [x, h, c], ["input", "hx", "cx"]))


@pytest.mark.parametrize("c_dtype", [torch.float64, torch.int64], ids=["f64", "i64"])
def test_lstm_cell_cx_of_other_dtype_like_torch(c_dtype):
    reference, fast = cell_pair(("LSTMCell", "tanh"), 3, 4, dtype=torch.float32)
    x = torch.randn(2, 3)
    hx = (torch.randn(2, 4), torch.randn(2, 4).mul(3).to(c_dtype))
    expected = reference(x, hx)
    actual = capture(lambda: fast(x, hx))
    assert actual[0] == "ok", f"rnnfast raised {type(actual[1]).__name__}: {actual[1]}"
    assert [t.dtype for t in actual[1]] == [t.dtype for t in expected]
    for a, e in zip(actual[1], expected):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


# ---- the module contract --------------------------------------------------------------------------

# (class name, constructor kwargs): the options that change the parameter set or the repr.
VARIANTS = [
    ("LSTMCell", {}), ("LSTMCell", {"bias": False}),
    ("GRUCell", {}), ("GRUCell", {"bias": False}),
    ("RNNCell", {}), ("RNNCell", {"nonlinearity": "relu"}), ("RNNCell", {"bias": False, "nonlinearity": "relu"}),
]
VARIANT_IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw in VARIANTS]
parametrize_variants = pytest.mark.parametrize("name, kwargs", VARIANTS, ids=VARIANT_IDS)


def construct(name, kwargs, seed=0, input_size=5, hidden_size=7):
    """torch.nn and rnnfast cells constructed from the same RNG state."""
    torch.manual_seed(seed)
    reference = getattr(torch.nn, name)(input_size, hidden_size, **kwargs)
    torch.manual_seed(seed)
    fast = getattr(rnnfast, name)(input_size, hidden_size, **kwargs)
    return reference, fast


def forward_matches(reference, fast, dtype=torch.float32):
    x = torch.randn(3, reference.input_size, dtype=dtype)
    assert_cell_outputs_close(reference(x), fast(x))


@parametrize_variants
def test_cell_is_an_instance_of_torch_cell(name, kwargs):
    _, fast = construct(name, kwargs)
    assert isinstance(fast, getattr(torch.nn, name))
    assert isinstance(fast, torch.nn.RNNCellBase)
    assert type(fast) is getattr(rnnfast, name) and type(fast) is not getattr(torch.nn, name)


@parametrize_variants
def test_cell_same_parameters_and_init_from_same_seed(name, kwargs):
    reference, fast = construct(name, kwargs)
    ref_params, fast_params = dict(reference.named_parameters()), dict(fast.named_parameters())
    assert list(fast_params) == list(ref_params)
    for pname, expected in ref_params.items():
        actual = fast_params[pname]
        assert isinstance(actual, torch.nn.Parameter), pname
        assert actual.shape == expected.shape and actual.dtype == expected.dtype, pname
        assert torch.equal(actual, expected), f"{pname} initialised differently"
    for attribute in ("input_size", "hidden_size", "bias", "nonlinearity"):
        assert getattr(fast, attribute, None) == getattr(reference, attribute, None), attribute
    if not fast.bias:
        assert fast.bias_ih is None and fast.bias_hh is None
    torch.manual_seed(3)
    reference.reset_parameters()
    torch.manual_seed(3)
    fast.reset_parameters()
    for (pname, a), (_, e) in zip(fast.named_parameters(), reference.named_parameters()):
        assert torch.equal(a, e), f"{pname} after reset_parameters"


@parametrize_variants
def test_cell_state_dict_round_trip_strict(name, kwargs):
    reference, fast = construct(name, kwargs, seed=1)
    ref_state, fast_state = reference.state_dict(), fast.state_dict()
    assert list(fast_state) == list(ref_state)
    assert {k: v.shape for k, v in fast_state.items()} == {k: v.shape for k, v in ref_state.items()}

    _, fresh_fast = construct(name, kwargs, seed=2)
    fresh_fast.load_state_dict(ref_state, strict=True)  # torch checkpoint -> rnnfast
    forward_matches(reference, fresh_fast)

    fresh_reference, _ = construct(name, kwargs, seed=3)
    fresh_reference.load_state_dict(fresh_fast.state_dict(), strict=True)  # rnnfast checkpoint -> torch
    for key, value in fresh_reference.state_dict().items():
        assert torch.equal(value, ref_state[key]), key


@parametrize_variants
def test_cell_repr_matches_torch(name, kwargs):
    reference, fast = construct(name, kwargs)
    assert repr(fast) == repr(reference)
    assert repr(reference).startswith(name + "(")


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
@parametrize_variants
def test_cell_copy_pickle_and_save_whole_module(name, kwargs, how):
    reference, fast = construct(name, kwargs)
    if how == "deepcopy":
        clone = copy.deepcopy(fast)
    elif how == "pickle":
        clone = pickle.loads(pickle.dumps(fast))
    else:
        buffer = io.BytesIO()
        torch.save(fast, buffer)
        buffer.seek(0)
        clone = torch.load(buffer, weights_only=False)
    assert type(clone) is type(fast)
    assert repr(clone) == repr(fast)
    for (pname, a), (_, e) in zip(clone.named_parameters(), fast.named_parameters()):
        assert torch.equal(a, e) and a.data_ptr() != e.data_ptr(), pname
    forward_matches(reference, clone)
    with torch.no_grad():
        next(clone.parameters()).add_(1.0)  # the copy owns its weights
    forward_matches(reference, fast)


@pytest.mark.parametrize("convert", ["double", "to_float64_then_float"])
@parametrize_variants
def test_cell_dtype_conversion_then_forward(name, kwargs, convert):
    reference, fast = construct(name, kwargs)
    if convert == "double":
        reference, fast, dtype = reference.double(), fast.double(), torch.float64
    else:
        reference, fast = reference.to(torch.float64).float(), fast.to(torch.float64).float()
        dtype = torch.float32
    for pname, p in fast.named_parameters():
        assert p.dtype == dtype, pname
    forward_matches(reference, fast, dtype)


@parametrize_variants
def test_cell_parameters_read_at_call_time(name, kwargs):
    """Weights changed in place, replaced, or swapped by functional_call are used by the next call."""
    reference, fast = construct(name, kwargs)
    with torch.no_grad():
        for module in (reference, fast):
            module.weight_hh.mul_(2.0)
    forward_matches(reference, fast)
    replacement = torch.randn_like(reference.weight_ih)
    reference.weight_ih = torch.nn.Parameter(replacement.clone())
    fast.weight_ih = torch.nn.Parameter(replacement.clone())
    forward_matches(reference, fast)
    other = {pname: torch.randn_like(p) for pname, p in reference.named_parameters()}
    x = torch.randn(3, 5)
    expected = torch.func.functional_call(reference, other, (x,))
    actual = torch.func.functional_call(fast, other, (x,))
    assert_cell_outputs_close(expected, actual)
    forward_matches(reference, fast)


@parametrize_variants
def test_cell_forward_signature_and_keywords(name, kwargs):
    reference, fast = construct(name, kwargs)
    assert list(inspect.signature(fast.forward).parameters) == list(inspect.signature(reference.forward).parameters)
    x = torch.randn(3, 5)
    assert_cell_outputs_close(reference(input=x, hx=None), fast(input=x, hx=None))


# ---- constructor errors ---------------------------------------------------------------------------

# torch's cells validate nothing themselves: bad arguments fail in torch.empty or in the call.
CONSTRUCTOR_CASES = {
    "input_size_negative": ((-1, 5), {}),
    "hidden_size_negative": ((3, -2), {}),
    "input_size_float": ((3.0, 5), {}),
    "hidden_size_str": ((3, "5"), {}),
    "unknown_keyword": ((3, 5), {"foo": 1}),
    "missing_sizes": ((), {}),
    "missing_hidden_size": ((3,), {}),
    "too_many_positional": ((3, 5, True, "tanh", None, None, 1), {}),
    "dtype_not_a_dtype": ((3, 5), {"dtype": "float32"}),
    "num_layers": ((3, 5), {"num_layers": 2}),
}
RNN_CELL_CONSTRUCTOR_CASES = {"nonlinearity_positional_extra": ((3, 5, True, "relu", None, None, 7), {})}
CONSTRUCTOR_IDS = [(name, case) for name in ("LSTMCell", "GRUCell", "RNNCell") for case in CONSTRUCTOR_CASES]
CONSTRUCTOR_IDS += [("RNNCell", case) for case in RNN_CELL_CONSTRUCTOR_CASES]


@pytest.mark.parametrize("name, case", CONSTRUCTOR_IDS, ids=[f"{n}-{c}" for n, c in CONSTRUCTOR_IDS])
def test_cell_constructor_error(name, case):
    args, kwargs = {**CONSTRUCTOR_CASES, **RNN_CELL_CONSTRUCTOR_CASES}[case]
    expected = capture(lambda: getattr(torch.nn, name)(*args, **kwargs))
    actual = capture(lambda: getattr(rnnfast, name)(*args, **kwargs))
    assert_same_error(expected, actual, compare_message=True)


@pytest.mark.parametrize("args, kwargs", [((3, 5, False, "relu"), {}), ((3, 5), {"nonlinearity": "relu", "bias": False}),
                                          ((3, 5, True, "gelu"), {})], ids=["positional", "keyword", "unknown"])
def test_rnn_cell_arguments_read_like_torch(args, kwargs):
    """RNNCell(input_size, hidden_size, bias, nonlinearity): torch validates the nonlinearity only
    when called, so an unknown one constructs (and fails in forward, see the error cases)."""
    torch.manual_seed(0)
    reference = torch.nn.RNNCell(*args, **kwargs)
    torch.manual_seed(0)
    fast = rnnfast.RNNCell(*args, **kwargs)
    assert (fast.bias, fast.nonlinearity) == (reference.bias, reference.nonlinearity)
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in reference.named_parameters()]


# ---- forward errors -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CellErrorCase:
    """Call a cell (input_size 3, hidden_size 4, float32 unless `kwargs` say otherwise) badly."""

    name: str  # LSTMCell, GRUCell, RNNCell
    origin: str  # where torch raises: "python" (a raise in rnn.py) or "aten"
    make_args: Callable[[], tuple]
    kwargs: tuple = ()  # constructor kwargs as (name, value) pairs
    nonlinearity_after: str | None = None  # assigned to both modules after construction
    replicated: bool = False  # an ATen message rnnfast replicates (rnnfast/modules.py): compared too


def r(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def pair(h_shape, c_shape, h_dtype=torch.float32, c_dtype=torch.float32):
    return r(*h_shape, dtype=h_dtype), r(*c_shape, dtype=c_dtype)


F64 = (("dtype", torch.float64),)
RELU = (("nonlinearity", "relu"),)


def _cases_for_single_state(name: str, extra=()) -> dict:
    """The cases GRUCell and RNNCell share (one state tensor)."""
    p = name + ("_relu" if extra else "")

    def C(origin, make_args, kwargs=(), **more):
        return CellErrorCase(name, origin, make_args, kwargs=extra + kwargs, **more)

    return {
        f"{p}_input_3d": C("python", lambda: (r(2, 2, 3),)),
        f"{p}_input_0d": C("python", lambda: (r(()),)),
        f"{p}_hx_3d": C("python", lambda: (r(2, 3), r(1, 2, 4))),
        f"{p}_hx_0d": C("python", lambda: (r(2, 3), r(()))),
        f"{p}_input_3d_and_hx_3d": C("python", lambda: (r(2, 2, 3), r(1, 2, 4))),
        f"{p}_input_size": C("aten", lambda: (r(2, 7),), replicated=True),
        f"{p}_input_size_unbatched": C("aten", lambda: (r(7),), replicated=True),
        f"{p}_input_size_and_hx_size": C("aten", lambda: (r(2, 7), r(2, 5)), replicated=True),
        f"{p}_hx_batch": C("aten", lambda: (r(2, 3), r(3, 4)), replicated=True),
        f"{p}_hx_size": C("aten", lambda: (r(2, 3), r(2, 5)), replicated=True),
        f"{p}_hx_1d_input_2d": C("aten", lambda: (r(2, 3), r(4)), replicated=True),
        f"{p}_hx_1d_input_2d_same_batch": C("aten", lambda: (r(4, 3), r(4)), replicated=True),  # IndexError
        f"{p}_hx_2d_input_1d": C("aten", lambda: (r(3), r(1, 4)), replicated=True),
        f"{p}_hx_unbatched_size": C("aten", lambda: (r(3), r(5)), replicated=True),
        f"{p}_hx_2d_input_1d_hx_rows_match": C("aten", lambda: (r(3), r(2, 4)), replicated=True),
        f"{p}_hx_tuple": C("aten", lambda: (r(2, 3), pair((2, 4), (2, 4)))),  # AttributeError: no .dim()
        f"{p}_double_input": C("aten", lambda: (r(2, 3, dtype=torch.float64),)),
        f"{p}_double_input_and_hx": C("aten", lambda: (r(2, 3, dtype=torch.float64), r(2, 4, dtype=torch.float64))),
        f"{p}_double_hx": C("aten", lambda: (r(2, 3), r(2, 4, dtype=torch.float64))),
        f"{p}_float_input_double_module": C("aten", lambda: (r(2, 3),), kwargs=F64),
        f"{p}_float_hx_double_module": C("aten", lambda: (r(2, 3, dtype=torch.float64), r(2, 4)), kwargs=F64),
        f"{p}_int_input": C("aten", lambda: (torch.randint(-3, 3, (2, 3)),)),
        f"{p}_half_input": C("aten", lambda: (r(2, 3, dtype=torch.float16),)),
    }


CELL_ERROR_CASES = {
    **_cases_for_single_state("GRUCell"),
    **_cases_for_single_state("RNNCell"),
    **_cases_for_single_state("RNNCell", RELU),
    # LSTMCell: the (h, c) pair
    "LSTMCell_input_3d": CellErrorCase("LSTMCell", "python", lambda: (r(2, 2, 3),)),
    "LSTMCell_input_0d": CellErrorCase("LSTMCell", "python", lambda: (r(()),)),
    "LSTMCell_h_3d": CellErrorCase("LSTMCell", "python", lambda: (r(2, 3), pair((1, 2, 4), (2, 4)))),
    "LSTMCell_c_3d": CellErrorCase("LSTMCell", "python", lambda: (r(2, 3), pair((2, 4), (1, 2, 4)))),
    "LSTMCell_c_0d": CellErrorCase("LSTMCell", "python", lambda: (r(2, 3), (r(2, 4), r(())))),
    "LSTMCell_third_state_3d": CellErrorCase("LSTMCell", "python", lambda: (r(2, 3), (r(2, 4), r(2, 4), r(1, 1, 4)))),
    "LSTMCell_input_size": CellErrorCase("LSTMCell", "aten", lambda: (r(2, 7),), replicated=True),
    "LSTMCell_input_size_unbatched": CellErrorCase("LSTMCell", "aten", lambda: (r(7), pair((4,), (4,))), replicated=True),
    "LSTMCell_h_batch": CellErrorCase("LSTMCell", "aten", lambda: (r(2, 3), pair((3, 4), (2, 4))), replicated=True),
    "LSTMCell_h_size": CellErrorCase("LSTMCell", "aten", lambda: (r(2, 3), pair((2, 5), (2, 4))), replicated=True),
    "LSTMCell_c_batch": CellErrorCase("LSTMCell", "aten", lambda: (r(2, 3), pair((2, 4), (3, 4))), replicated=True),
    "LSTMCell_c_size": CellErrorCase("LSTMCell", "aten", lambda: (r(2, 3), pair((2, 4), (2, 5))), replicated=True),
    "LSTMCell_c_unbatched_size": CellErrorCase("LSTMCell", "aten", lambda: (r(3), pair((4,), (5,))), replicated=True),
    "LSTMCell_h_1d_input_2d": CellErrorCase("LSTMCell", "aten", lambda: (r(2, 3), pair((4,), (2, 4))), replicated=True),
    "LSTMCell_c_1d_input_2d_same_batch": CellErrorCase("LSTMCell", "aten", lambda: (r(4, 3), pair((4, 4), (4,))),
                                                       replicated=True),  # IndexError
    "LSTMCell_h_2d_input_1d": CellErrorCase("LSTMCell", "aten", lambda: (r(3), pair((1, 4), (4,))), replicated=True),
    "LSTMCell_hx_2d_square_input_1d": CellErrorCase("LSTMCell", "aten", lambda: (r(3), pair((4, 4), (4, 4)))),
    "GRUCell_hx_2d_square_input_1d": CellErrorCase("GRUCell", "aten", lambda: (r(3), r(4, 4))),
    "LSTMCell_hx_three_states": CellErrorCase("LSTMCell", "aten", lambda: (r(2, 3), (r(2, 4), r(2, 4), r(2, 4))),
                                              replicated=True),
    "LSTMCell_hx_one_state": CellErrorCase("LSTMCell", "aten", lambda: (r(2, 3), (r(2, 4),)), replicated=True),
    "LSTMCell_hx_empty_tuple": CellErrorCase("LSTMCell", "aten", lambda: (r(2, 3), ()), replicated=True),
    "LSTMCell_hx_one_state_unbatched": CellErrorCase("LSTMCell", "aten", lambda: (r(3), (r(4),))),  # IndexError
    "LSTMCell_hx_a_tensor": CellErrorCase("LSTMCell", "aten", lambda: (r(2, 3), r(2, 2, 4))),  # TypeError
    "LSTMCell_hx_none_in_tuple": CellErrorCase("LSTMCell", "aten", lambda: (r(2, 3), (r(2, 4), None))),
    "LSTMCell_double_input": CellErrorCase("LSTMCell", "aten", lambda: (r(2, 3, dtype=torch.float64),)),
    "LSTMCell_double_h": CellErrorCase("LSTMCell", "aten", lambda: (r(2, 3), pair((2, 4), (2, 4), h_dtype=torch.float64))),
    "LSTMCell_float_input_double_module": CellErrorCase("LSTMCell", "aten", lambda: (r(2, 3),), kwargs=F64),
    "LSTMCell_float_h_double_module": CellErrorCase("LSTMCell", "aten", lambda: (
        r(2, 3, dtype=torch.float64), pair((2, 4), (2, 4), c_dtype=torch.float64)), kwargs=F64),
    "LSTMCell_int_input": CellErrorCase("LSTMCell", "aten", lambda: (torch.randint(-3, 3, (2, 3)),)),
    "LSTMCell_half_input": CellErrorCase("LSTMCell", "aten", lambda: (r(2, 3, dtype=torch.float16),)),
    # RNNCell's nonlinearity set to an unknown value after construction: torch checks the ranks of
    # input and hx first, then the nonlinearity, and never reaches ATen's size checks.
    "RNNCell_unknown_nonlinearity": CellErrorCase("RNNCell", "python", lambda: (r(2, 3),), nonlinearity_after="gelu"),
    "RNNCell_unknown_nonlinearity_unbatched": CellErrorCase("RNNCell", "python", lambda: (r(3), r(4)),
                                                            nonlinearity_after="Tanh"),
    "RNNCell_unknown_nonlinearity_and_input_size": CellErrorCase("RNNCell", "python", lambda: (r(2, 7),),
                                                                 nonlinearity_after="sigmoid"),
    "RNNCell_unknown_nonlinearity_in_constructor": CellErrorCase("RNNCell", "python", lambda: (r(2, 3), r(2, 4)),
                                                                 kwargs=(("nonlinearity", "gelu"),)),
    "RNNCell_unknown_nonlinearity_and_input_3d": CellErrorCase("RNNCell", "python", lambda: (r(2, 2, 3),),
                                                               nonlinearity_after="gelu"),
    "RNNCell_unknown_nonlinearity_and_hx_3d": CellErrorCase("RNNCell", "python", lambda: (r(2, 3), r(1, 2, 4)),
                                                            nonlinearity_after="gelu"),
}

def _cell_error_param(case_id):
    return pytest.param(case_id, id=case_id)


def build_error_pair(case: CellErrorCase):
    kwargs = dict(case.kwargs)
    reference = getattr(torch.nn, case.name)(3, 4, **kwargs)
    fast = getattr(rnnfast, case.name)(3, 4, **kwargs)
    fast.load_state_dict(reference.state_dict())
    if case.nonlinearity_after is not None:
        reference.nonlinearity = fast.nonlinearity = case.nonlinearity_after
    return reference, fast


@pytest.mark.parametrize("case_id", [_cell_error_param(c) for c in CELL_ERROR_CASES])
def test_cell_forward_error(case_id):
    case = CELL_ERROR_CASES[case_id]
    reference, fast = build_error_pair(case)
    args = case.make_args()
    expected = capture(lambda: reference(*args))
    actual = capture(lambda: fast(*args))
    assert expected[0] == "raised", "torch.nn did not raise: the case is wrong"
    assert origin(expected[1]) == case.origin, (
        f"torch raises this from {origin(expected[1])}, the case says {case.origin}: {expected[1]}"
    )
    assert_same_error(expected, actual, compare_message=case.origin == "python" or case.replicated)


# ---- inputs torch accepts although they look wrong -------------------------------------------

LENIENT_CASES = {
    # hx as a list, or (unbatched input) as one [2, H] tensor: torch.nn.LSTMCell indexes hx[0], hx[1].
    "LSTMCell_hx_list": ("LSTMCell", lambda: (r(2, 3), [r(2, 4), r(2, 4)])),
    "LSTMCell_hx_stacked_tensor_unbatched": ("LSTMCell", lambda: (r(3), r(2, 4))),
    # Unbatched input with a 3-tuple hx: torch.nn.LSTMCell uses hx[0], hx[1] and drops the third.
    "LSTMCell_hx_three_states_unbatched": ("LSTMCell", lambda: (r(3), (r(4), r(4), r(4)))),
    # A float32 cx with a float64 module: torch promotes f * cx.
    "LSTMCell_float_c_double_module": ("LSTMCell", lambda: (r(2, 3, dtype=torch.float64),
                                                            pair((2, 4), (2, 4), h_dtype=torch.float64))),
}
@pytest.mark.parametrize("case_id", list(LENIENT_CASES))
def test_cell_lenient_input_accepted_like_torch(case_id):
    name, make_args = LENIENT_CASES[case_id]
    dtype = torch.float64 if "double_module" in case_id else torch.float32
    reference, fast = cell_pair((name, "tanh"), 3, 4, dtype=dtype)
    args = make_args()
    expected = capture(lambda: reference(*args))
    assert expected[0] == "ok", f"torch.nn now raises {expected[1]!r}: move the case to CELL_ERROR_CASES"
    actual = capture(lambda: fast(*args))
    assert actual[0] == "ok", f"rnnfast raised where torch.nn does not: {type(actual[1]).__name__}: {actual[1]}"
    assert_cell_outputs_close(expected[1], actual[1])


# ---- documented divergences -----------------------------------------------------------------------


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_cell_square_2d_hx_with_1d_input_is_refused(nonlinearity):
    """Unbatched input with a 2-D [H, H] hx: torch.nn.RNNCell unsqueezes both, ATen's checks
    (batch 1 == 1, hx.size(1) == H) pass on the 3-D hx, and broadcasting returns an [H, H] result:
    the input applied to each row of hx as a batch.  torch's LSTMCell / GRUCell fail on the same
    call (see the error cases).  rnnfast refuses it with a RuntimeError rather than copy a shape
    rule that torch has by accident."""
    reference, fast = cell_pair(("RNNCell", nonlinearity), 3, 4, dtype=torch.float64)
    x, hx = torch.randn(3, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
    expected = reference(x, hx)
    assert expected.shape == (4, 4), "torch.nn.RNNCell changed: compare with rnnfast instead"
    assert_close(expected, reference(x.expand(4, 3), hx), "torch's broadcast result")
    with pytest.raises(RuntimeError):
        fast(x, hx)


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_common_step_agrees_with_the_checks(kind):
    """The cells decide the common call of a decoding loop without torch.nn's full checks
    (_common_step); wherever they do, the full checks (_step_arguments) give the same operator
    arguments, and where they do not, the full checks run. So the two cannot drift apart."""
    import itertools

    for dtype, batch, bias in itertools.product((torch.float32, torch.float64), (1, 3), (True, False)):
        fast = getattr(rnnfast, kind)(5, 7, bias=bias, dtype=dtype)
        x = torch.randn(batch, 5, dtype=dtype)
        h = torch.randn(batch, 7, dtype=dtype)
        hx = (h, torch.randn(batch, 7, dtype=dtype)) if kind == "LSTMCell" else h
        common = fast._common_step(x, hx)
        assert common is not None, (dtype, batch, bias)
        full, is_batched = fast._step_arguments(x, hx)
        assert is_batched and len(common) == len(full) == 8
        assert common[0] == full[0]
        for k, (a, b) in enumerate(zip(common[1:], full[1:])):
            assert (a is None and b is None) or a is b or torch.equal(a, b), (k, dtype, batch, bias)
        # Calls the common path leaves to the full checks.
        state = (h, hx[1]) if kind == "LSTMCell" else h
        assert fast._common_step(x[0], hx) is None  # unbatched
        assert fast._common_step(x, None) is None  # no hx
        assert fast._common_step(x.to(torch.float16), state) is None  # dtype
        assert fast._common_step(torch.randn(batch, 4, dtype=dtype), state) is None  # input size
