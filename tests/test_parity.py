"""rnnfast modules against torch.nn: outputs and every gradient over the option matrix.

A grid over the axes most likely to break a kernel (cell, dtype, input form, direction, hx,
layout), a seeded random sample over the rest (sizes, lengths, layers, bias, projection),
hand-picked edge cases, and the behaviours around the numbers: train/eval, no_grad, dropout,
empty batches, determinism and NaN/Inf propagation.
"""

import dataclasses
import math
import random

import pytest
import torch
from cases import (
    CELL_OUTPUT_NAMES,
    CELLS,
    FORMS,
    KINDS,
    OUTPUT_NAMES,
    MODES,
    TOL,
    Case,
    Inputs,
    assert_close,
    assert_outputs_close,
    capture,
    check_parity,
    flatten,
    gradients,
    kind_id,
)
from layouts import offset, strided, transposed

DTYPES = (torch.float32, torch.float64)
DTYPE_IDS = ("f32", "f64")

# ---- grid over the important axes ---------------------------------------------------------------

# (mode, proj_size, nonlinearity): LSTM with and without projection, GRU, RNN with tanh and relu.
RECURRENCES = [("LSTM", 0, "tanh"), ("LSTM", 3, "tanh"), ("GRU", 0, "tanh"), ("RNN", 0, "tanh"), ("RNN", 0, "relu")]


def cell_id(cell) -> str:
    mode, proj_size, nonlinearity = cell
    return f"RNN_{nonlinearity}" if mode == "RNN" else f"{mode}_proj{proj_size}"


def recurrence_config(cell, **kwargs) -> Case:
    """Case of a (mode, proj_size, nonlinearity) triple of RECURRENCES."""
    mode, proj_size, nonlinearity = cell
    return Case(kind=mode, proj_size=proj_size, nonlinearity=nonlinearity, **kwargs)


def kind_config(kind, **kwargs) -> Case:
    """Case of a (kind, nonlinearity) pair of KINDS or CELLS."""
    name, nonlinearity = kind
    return Case(kind=name, nonlinearity=nonlinearity, **kwargs)


def output_names(cfg: Case) -> tuple[str, ...]:
    return CELL_OUTPUT_NAMES if cfg.is_cell else OUTPUT_NAMES


parametrize_kinds = pytest.mark.parametrize("kind", KINDS, ids=kind_id)


@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", RECURRENCES, ids=cell_id)
def test_parity_grid(cell, dtype, form, bidirectional, with_hx, batch_first):
    cfg = recurrence_config(
        cell, dtype=dtype, form=form, bidirectional=bidirectional, with_hx=with_hx, batch_first=batch_first, num_layers=2,
        input_size=3, hidden_size=17, batch=3, seq_len=7,
    )
    check_parity(*cfg.build_pair(), cfg.inputs())


# ---- seeded random sample over everything --------------------------------------------------------


def random_config(rng: random.Random) -> Case:
    mode = rng.choice(MODES)
    nonlinearity = rng.choice(["tanh", "relu"]) if mode == "RNN" else "tanh"
    hidden_size = rng.choice([1, 3, 17])
    proj_size = 0
    if mode == "LSTM" and hidden_size > 1 and rng.random() < 0.4:
        proj_size = rng.randrange(1, hidden_size)
    roll = rng.random()
    if roll < 0.06:
        seq_len = rng.randint(150, 300)
    elif roll < 0.2:
        seq_len = 1
    else:
        seq_len = rng.choice([2, 3, 5, 8, 13, 21, 34, 64])
    return Case(
        kind=mode,
        nonlinearity=nonlinearity,
        dtype=rng.choice(DTYPES),
        num_layers=rng.choice([1, 2, 3]),
        bidirectional=rng.random() < 0.5,
        batch_first=rng.random() < 0.5,
        bias=rng.random() < 0.75,
        proj_size=proj_size,
        form=rng.choice(FORMS),
        with_hx=rng.random() < 0.6,
        input_requires_grad=rng.random() < 0.85,
        input_size=rng.choice([1, 3, 17]),
        hidden_size=hidden_size,
        batch=rng.choice([1, 3, 17]),
        seq_len=seq_len,
    )


_rng = random.Random(20250601)
RANDOM_CONFIGS = [random_config(_rng) for _ in range(225)]


@pytest.mark.parametrize("cfg", RANDOM_CONFIGS, ids=[c.id for c in RANDOM_CONFIGS])
def test_parity_random(cfg):
    check_parity(*cfg.build_pair(), cfg.inputs())


# ---- hand-picked edge cases ---------------------------------------------------------------------

SPECIAL_CONFIGS = [
    # long sequences (the recurrence error compounds; packed with ragged lengths)
    Case(kind="LSTM", dtype=torch.float32, num_layers=2, bidirectional=True, form="packed_unsorted",
           input_size=3, hidden_size=17, batch=17, seq_len=300),
    Case(kind="GRU", dtype=torch.float32, num_layers=2, bidirectional=True, form="packed_unsorted",
           input_size=3, hidden_size=17, batch=17, seq_len=300),
    Case(kind="LSTM", dtype=torch.float64, proj_size=5, batch_first=True, input_size=17, hidden_size=17,
           batch=3, seq_len=300),
    Case(kind="GRU", dtype=torch.float64, batch_first=True, input_size=17, hidden_size=17, batch=3, seq_len=300),
    *(Case(kind="RNN", nonlinearity=nl, dtype=torch.float32, num_layers=2, bidirectional=True,
             form="packed_unsorted", input_size=3, hidden_size=17, batch=17, seq_len=300) for nl in ("tanh", "relu")),
    *(Case(kind="RNN", nonlinearity=nl, dtype=torch.float64, batch_first=True, input_size=17, hidden_size=17,
             batch=3, seq_len=300) for nl in ("tanh", "relu")),
    # a single step
    *(kind_config(k, dtype=d, num_layers=3, bidirectional=True, form=f, seq_len=1)
      for k in KINDS for d in DTYPES for f in ("padded", "packed_unsorted")),
    # batch of one, packed (sorted and not)
    *(kind_config(k, form=f, batch=1, seq_len=9, bidirectional=True) for k in KINDS
      for f in ("packed_sorted", "packed_unsorted")),
    # every sequence of length 1 but one
    *(kind_config(k, form="packed_unsorted", batch=17, seq_len=2, bidirectional=True) for k in KINDS),
]

# Larger GEMMs, run with two threads (the sizes where a kernel may split work across threads).
LARGE_CONFIGS = [
    *(kind_config(k, dtype=torch.float32, num_layers=2, bidirectional=True, form=f,
                  input_size=64, hidden_size=128, batch=64, seq_len=20)
      for k in KINDS for f in ("padded", "packed_unsorted")),
    Case(kind="LSTM", dtype=torch.float32, proj_size=64, input_size=64, hidden_size=128, batch=64, seq_len=20),
]


@pytest.mark.parametrize("cfg", SPECIAL_CONFIGS, ids=[c.id for c in SPECIAL_CONFIGS])
def test_parity_special(cfg):
    check_parity(*cfg.build_pair(), cfg.inputs())


@pytest.mark.parametrize("cfg", LARGE_CONFIGS, ids=[c.id for c in LARGE_CONFIGS])
def test_parity_large(cfg, two_threads):
    check_parity(*cfg.build_pair(), cfg.inputs())


# ---- memory layouts -----------------------------------------------------------------------------


def check_layout_parity(cfg: Case, layout) -> None:
    """Input and states passed as `layout` copies (checked to really be non-contiguous, or offset
    in their storage): the same numbers as torch.nn."""
    inputs = cfg.inputs(layout=layout)
    for name, leaf in zip(inputs.leaf_names, inputs.leaves):
        if layout is offset:
            assert leaf.is_contiguous() and leaf.storage_offset() > 0, name
        else:
            assert not leaf.is_contiguous(), f"{name} should be non-contiguous"
    check_parity(*cfg.build_pair(), inputs)


def check_noncontiguous_weights_parity(cfg: Case) -> None:
    """Parameters replaced by non-contiguous ones (same values) in both modules."""
    reference, fast = cfg.build_pair()
    for module in (reference, fast):
        for name, p in list(module.named_parameters()):
            view = transposed(p.detach()) if p.dim() == 2 else strided(p.detach())
            assert not view.is_contiguous(), name
            setattr(module, name, torch.nn.Parameter(view))
    check_parity(reference, fast, cfg.inputs())


@pytest.mark.parametrize("form", ["padded", "unbatched", "packed_unsorted"])
@pytest.mark.parametrize("layout", [strided, transposed, offset], ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", RECURRENCES, ids=cell_id)
def test_parity_noncontiguous(cell, dtype, layout, form):
    cfg = recurrence_config(cell, dtype=dtype, form=form, num_layers=2, bidirectional=True,
                            batch_first=True, input_size=4, hidden_size=6, batch=3, seq_len=5)
    check_layout_parity(cfg, layout)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", RECURRENCES, ids=cell_id)
def test_parity_noncontiguous_weights(cell, dtype):
    """Parameters replaced by non-contiguous ones (same values) in both modules."""
    cfg = recurrence_config(cell, dtype=dtype, num_layers=2, bidirectional=True,
                      form="packed_unsorted", input_size=4, hidden_size=6, batch=3, seq_len=5)
    check_noncontiguous_weights_parity(cfg)


@parametrize_kinds
def test_parity_expanded_inputs(kind):
    """Stride-0 (broadcast) input and hx, as made by `.expand`: gradients flow to the bases."""
    cfg = kind_config(kind, num_layers=2, bidirectional=True, input_size=4, hidden_size=6, batch=5, seq_len=7)
    mode = cfg.mode
    x_base = torch.randn(cfg.seq_len, 1, cfg.input_size, dtype=cfg.dtype, requires_grad=True)
    h_base = torch.randn(4, 1, cfg.out_size, dtype=cfg.dtype, requires_grad=True)
    c_base = torch.randn(4, 1, cfg.hidden_size, dtype=cfg.dtype, requires_grad=True)
    x = x_base.expand(-1, cfg.batch, -1)
    h0, c0 = h_base.expand(-1, cfg.batch, -1), c_base.expand(-1, cfg.batch, -1)
    hx, leaves = ((h0, c0), [x_base, h_base, c_base]) if mode == "LSTM" else (h0, [x_base, h_base])
    inputs = Inputs(x, hx, leaves, ["x_base", "h_base", "c_base"][: len(leaves)])
    check_parity(*cfg.build_pair(), inputs)


@parametrize_kinds
def test_parity_across_changing_shapes(kind):
    """One module called with varying batch, length and form in turn (no stale per-shape state)."""
    base = kind_config(kind, num_layers=2, bidirectional=True, input_size=4, hidden_size=6)
    reference, fast = base.build_pair()
    for batch, seq_len, form in [(3, 5, "padded"), (7, 2, "packed_unsorted"), (1, 9, "padded"),
                                 (3, 5, "unbatched"), (5, 1, "packed_sorted"), (3, 5, "padded")]:
        cfg = dataclasses.replace(base, batch=batch, seq_len=seq_len, form=form)
        check_parity(reference, fast, cfg.inputs())


# ---- which tensors require grad -----------------------------------------------------------------


@pytest.mark.parametrize("params_grad", [False, True], ids=["frozen", "params"])
@pytest.mark.parametrize("hx_grad", [False, True], ids=["hx_nograd", "hx_grad"])
@pytest.mark.parametrize("input_grad", [False, True], ids=["x_nograd", "x_grad"])
@pytest.mark.parametrize("kind", KINDS + CELLS, ids=kind_id)
def test_requires_grad_combinations(kind, input_grad, hx_grad, params_grad):
    if kind[0].endswith("Cell"):
        cfg = kind_config(kind, input_size=3, hidden_size=4, batch=2, input_requires_grad=input_grad)
    else:
        cfg = kind_config(kind, num_layers=2, bidirectional=True, form="packed_unsorted", input_requires_grad=input_grad)
    reference, fast = cfg.build_pair()
    for module in (reference, fast):
        module.requires_grad_(params_grad)
    inputs = cfg.inputs()
    hx_leaves = [t for name, t in zip(inputs.leaf_names, inputs.leaves) if name in ("h0", "c0")]
    for t in hx_leaves:
        t.requires_grad_(hx_grad)
    expected, actual = reference(inputs.input, inputs.hx), fast(inputs.input, inputs.hx)
    assert_outputs_close(expected, actual, output_names(cfg))  # requires_grad of every output included
    wrt = {n: t for n, t in zip(inputs.leaf_names, inputs.leaves) if t.requires_grad}
    if not (wrt or params_grad):
        return
    grad_outputs = [torch.randn_like(t) for t in flatten(expected)]
    for_grad = dataclasses.replace(inputs, leaves=list(wrt.values()), leaf_names=list(wrt))
    exp_grads = gradients(reference, flatten(expected), grad_outputs, for_grad, params=params_grad)
    act_grads = gradients(fast, flatten(actual), grad_outputs, for_grad, params=params_grad)
    for name in exp_grads:
        assert_close(act_grads[name], exp_grads[name], f"gradient of {name}")


# ---- train / eval / no_grad ---------------------------------------------------------------------


@pytest.mark.parametrize("form", ["padded", "packed_unsorted"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", RECURRENCES, ids=cell_id)
def test_eval_mode_matches_torch(cell, dtype, form):
    cfg = recurrence_config(cell, dtype=dtype, form=form, num_layers=2, bidirectional=True)
    check_parity(*cfg.build_pair(training=False), cfg.inputs())


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("form", ["padded", "unbatched", "packed_unsorted"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", RECURRENCES, ids=cell_id)
def test_inference_path_matches_torch(cell, dtype, form, training, context):
    cfg = recurrence_config(cell, dtype=dtype, form=form, num_layers=2, bidirectional=True,
                      input_size=5, hidden_size=8, batch=4, seq_len=11)
    reference, fast = cfg.build_pair(training=training)
    inputs = cfg.inputs()
    with getattr(torch, context)():
        _, actual = check_parity(reference, fast, inputs, backward=False)
    for name, t in zip(("output", "h_n", "c_n"), flatten(actual)):
        assert not t.requires_grad, f"{name} requires grad under {context}"


# ---- inter-layer dropout ------------------------------------------------------------------------


def _dropout_config(kind, dropout: float) -> Case:
    return kind_config(kind, num_layers=3, bidirectional=True, form="packed_unsorted", dropout=dropout,
                  input_size=4, hidden_size=6, batch=5, seq_len=8)


@parametrize_kinds
def test_dropout_is_inactive_in_eval_mode(kind):
    """In eval mode a module with dropout > 0 computes exactly what dropout = 0 computes."""
    reference, _ = _dropout_config(kind, 0.0).build_pair(training=False)
    _, fast = _dropout_config(kind, 0.6).build_pair(training=False)
    fast.load_state_dict(reference.state_dict())
    check_parity(reference, fast, _dropout_config(kind, 0.6).inputs())


@parametrize_kinds
def test_dropout_one_zeroes_upper_layer_inputs(kind):
    """dropout = 1 is deterministic (layers above the first see zeros): equal to torch, gradients too."""
    cfg = _dropout_config(kind, 1.0)
    check_parity(*cfg.build_pair(training=True), cfg.inputs())


@parametrize_kinds
def test_dropout_in_training(kind):
    """With 0 < p < 1 in training: the first layer is untouched (its final states equal torch's),
    the output differs from the dropout-free one, the masks come from torch's RNG (same seed,
    bitwise same result; another seed, another result), and backward runs."""
    cfg = _dropout_config(kind, 0.5)
    reference, fast = cfg.build_pair(training=True)
    inputs = cfg.inputs()
    num_first_layer_states = cfg.num_directions

    torch.manual_seed(1)
    first = fast(inputs.input, inputs.hx)
    torch.manual_seed(1)
    again = fast(inputs.input, inputs.hx)
    torch.manual_seed(2)
    other = fast(inputs.input, inputs.hx)
    without_dropout = reference.eval()(inputs.input, inputs.hx)

    for name, a, b in zip(("output", "h_n", "c_n"), flatten(first), flatten(again)):
        assert torch.equal(a, b), f"{name} differs between two runs with the same seed"
    assert not torch.equal(flatten(first)[0], flatten(other)[0]), "dropout mask ignores the RNG"
    assert not torch.allclose(flatten(first)[0], flatten(without_dropout)[0]), "no dropout applied"
    for name, a, e in zip(("h_n", "c_n"), flatten(first)[1:], flatten(without_dropout)[1:]):
        assert_close(a[:num_first_layer_states], e[:num_first_layer_states], f"first-layer {name}")
    grad_outputs = [torch.randn_like(t) for t in flatten(first)]
    grads = gradients(fast, flatten(first), grad_outputs, inputs)
    for name, g in grads.items():
        assert torch.isfinite(g).all(), f"gradient of {name} not finite"


@pytest.mark.parametrize("p", [0.25, 0.6])
@parametrize_kinds
def test_dropout_mask_rate_and_scale(kind, p):
    """Reads the dropped-out input of layer 1 back from the output and checks it is
    mask * y0 / (1 - p) with mask ~ Bernoulli(1 - p), where y0 is layer 0's output.

    T = 1, zero initial state, no bias, and layer 1's input weights select one gate only
    (LSTM: g = tanh(s*x1), i = o = 1/2, so h = tanh(tanh(s*x1)/2)/2; GRU: n = tanh(s*x1),
    z = 1/2, so h = tanh(s*x1)/2; RNN: h = tanh(s*x1), or relu(s*x1) = s*x1 as x1 >= 0 when
    layer 0 is a relu RNN too), which is invertible elementwise.  Where y0 is exactly 0 (relu) a
    dropped element cannot be told from a kept one; the rate is measured over the others.
    """
    mode, nonlinearity = kind
    hidden, batch, s = 64, 512, 0.5
    cfg = kind_config(kind, num_layers=2, bias=False, dropout=p, input_size=5, hidden_size=hidden,
                      batch=batch, seq_len=1, with_hx=False)
    reference, fast = cfg.build_pair(training=True)
    gate_rows = {"LSTM": 2, "GRU": 2, "RNN": 0}[mode]  # g (LSTM) / n (GRU) / the only (RNN) rows
    with torch.no_grad():
        weight = torch.zeros_like(fast.weight_ih_l1)
        weight[gate_rows * hidden : (gate_rows + 1) * hidden] = s * torch.eye(hidden, dtype=weight.dtype)
        fast.weight_ih_l1.copy_(weight)
    x = torch.randn(1, batch, 5, dtype=cfg.dtype)
    output, hidden_state = fast(x)
    h_n = hidden_state[0] if mode == "LSTM" else hidden_state
    y0 = h_n[0]  # layer 0 output at the single step
    _, torch_hidden = reference(x)
    assert_close(y0, (torch_hidden[0] if mode == "LSTM" else torch_hidden)[0], "layer-0 h_n")

    y1 = output[0]
    if mode == "LSTM":
        x1 = torch.atanh(2 * torch.atanh(2 * y1)) / s
    elif mode == "GRU":
        x1 = torch.atanh(2 * y1) / s
    elif nonlinearity == "tanh":
        x1 = torch.atanh(y1) / s
    else:
        x1 = y1 / s
    dropped = x1.abs() < 1e-9
    kept_ok = (x1 - y0 / (1 - p)).abs() <= 1e-8 * (1 + y0.abs())
    assert (dropped | kept_ok).all(), "layer-1 input is neither 0 nor y0 / (1 - p)"
    informative = y0 != 0
    assert informative.sum() > y0.numel() // 4, "too few nonzero layer-0 outputs to measure the rate"
    rate = dropped[informative].double().mean().item()
    sigma = math.sqrt(p * (1 - p) / informative.sum().item())
    assert abs(rate - p) < 5 * sigma, f"dropped fraction {rate:.4f}, expected {p} +- {5 * sigma:.4f}"


# ---- empty batch, determinism, non-finite values ------------------------------------------------


@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@parametrize_kinds
def test_empty_batch_like_torch(kind, batch_first, with_hx):
    """torch 2.13 accepts batch size 0: empty outputs, empty states, zero parameter gradients."""
    cfg = kind_config(kind, batch=0, batch_first=batch_first, with_hx=with_hx, num_layers=2, bidirectional=True)
    reference, fast = cfg.build_pair()
    inputs = cfg.inputs()
    expected = capture(lambda: reference(inputs.input, inputs.hx))
    if expected[0] == "raised":
        with pytest.raises(type(expected[1])):
            fast(inputs.input, inputs.hx)
    else:
        check_parity(reference, fast, inputs)


@pytest.mark.parametrize("form", ["padded", "packed_unsorted"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", RECURRENCES, ids=cell_id)
def test_deterministic(cell, dtype, form, two_threads):
    """Two identical runs give bitwise identical outputs and gradients."""
    cfg = recurrence_config(cell, dtype=dtype, form=form, num_layers=2, bidirectional=True,
                      input_size=16, hidden_size=32, batch=24, seq_len=16)
    _, fast = cfg.build_pair()
    inputs = cfg.inputs()
    runs = []
    for _ in range(2):
        outputs = flatten(fast(inputs.input, inputs.hx))
        grad_outputs = [torch.ones_like(t) for t in outputs]
        runs.append((outputs, gradients(fast, outputs, grad_outputs, inputs)))
    (out_a, grads_a), (out_b, grads_b) = runs
    for name, a, b in zip(("output", "h_n", "c_n"), out_a, out_b):
        assert torch.equal(a, b), f"{name} differs between two identical runs"
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), f"gradient of {name} differs between two identical runs"


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@parametrize_kinds
def test_non_finite_input_propagates_like_torch(kind, value, bidirectional):
    """One non-finite input element: same NaN positions (and same finite values) as torch."""
    cfg = kind_config(kind, dtype=torch.float64, num_layers=2, bidirectional=bidirectional,
                 input_size=4, hidden_size=5, batch=3, seq_len=6)
    reference, fast = cfg.build_pair()
    x = torch.randn(cfg.seq_len, cfg.batch, cfg.input_size, dtype=cfg.dtype)
    x[2, 1, 0] = value
    expected, actual = reference(x), fast(x)
    for name, e, a in zip(("output", "h_n", "c_n"), flatten(expected), flatten(actual)):
        torch.testing.assert_close(a, e, **TOL[cfg.dtype], equal_nan=True,
                                   msg=lambda m, name=name: f"{name} differs from torch.nn:\n{m}")
    if value != value:  # NaN must actually have reached the output, or the test proves nothing
        assert torch.isnan(flatten(expected)[0]).any()


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_nonlinearity_attribute_changed_after_construction(nonlinearity):
    """torch.nn.RNN reads `mode`, fixed at construction: assigning `nonlinearity` afterwards
    changes nothing (rnnfast likewise), while assigning `mode` switches the recurrence."""
    cfg = Case(kind="RNN", nonlinearity=nonlinearity, num_layers=2, bidirectional=True)
    reference, fast = cfg.build_pair()
    other = "relu" if nonlinearity == "tanh" else "tanh"
    for module in (reference, fast):
        module.nonlinearity = other
    check_parity(reference, fast, cfg.inputs())
    for module in (reference, fast):
        module.mode = f"RNN_{other.upper()}"
    check_parity(reference, fast, cfg.inputs())


# ---- the cells ----------------------------------------------------------------------------------
# Numbers of rnnfast.LSTMCell / GRUCell / RNNCell against torch.nn's: batched and unbatched input,
# hx given or not, bias, odd sizes (input or hidden size 0 included), batch 1 and larger,
# non-contiguous and broadcast inputs and states, a 50-step decoder loop, train/eval/no_grad, batch
# size 0, determinism, non-finite values, the dtypes of cx.

parametrize_cells = pytest.mark.parametrize("kind", CELLS, ids=kind_id)
parametrize_dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)


def cell_config(kind, input_size, hidden_size, batch=3, **kwargs) -> Case:
    """Case of a (cell, nonlinearity) pair of CELLS; batch None: one unbatched (1-D) input."""
    form = "unbatched" if batch is None else "padded"
    return kind_config(kind, input_size=input_size, hidden_size=hidden_size, batch=batch or 1, form=form, **kwargs)


CELL_SIZES = [(1, 1), (3, 17), (17, 3)]  # (input_size, hidden_size)
CELL_BATCHES = [None, 1, 5]  # None: unbatched


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
@pytest.mark.parametrize("batch", CELL_BATCHES, ids=lambda b: "unbatched" if b is None else f"B{b}")
@pytest.mark.parametrize("sizes", CELL_SIZES, ids=lambda s: f"I{s[0]}H{s[1]}")
@parametrize_dtypes
@parametrize_cells
def test_cell_parity_grid(kind, dtype, sizes, batch, with_hx, bias):
    cfg = cell_config(kind, *sizes, batch, with_hx=with_hx, bias=bias, dtype=dtype)
    check_parity(*cfg.build_pair(), cfg.inputs())


@parametrize_dtypes
@parametrize_cells
def test_cell_parity_large(kind, dtype, two_threads):
    """GEMM sizes where a kernel may split work across threads."""
    cfg = cell_config(kind, 64, 128, 64, dtype=dtype)
    check_parity(*cfg.build_pair(), cfg.inputs())


@pytest.mark.parametrize("sizes", [(0, 4), (3, 0)], ids=["input_size0", "hidden_size0"])
@parametrize_cells
def test_cell_parity_size_zero(kind, sizes):
    """torch's cells accept input_size 0 (torch.nn.LSTM etc. do not; h' then depends on hx only)
    and hidden_size 0."""
    cfg = cell_config(kind, *sizes, with_hx=sizes[1] > 0)
    check_parity(*cfg.build_pair(), cfg.inputs())


@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
@parametrize_cells
def test_cell_empty_batch_like_torch(kind, with_hx):
    cfg = cell_config(kind, 3, 5, 0, with_hx=with_hx)
    reference, fast = cfg.build_pair()
    inputs = cfg.inputs()
    assert capture(lambda: reference(inputs.input, inputs.hx))[0] == "ok", "torch.nn now rejects batch size 0"
    check_parity(reference, fast, inputs)


@pytest.mark.parametrize("layout, batch", [(strided, 4), (transposed, 4), (offset, 4), (strided, None), (offset, None)],
                         ids=["strided", "transposed", "offset", "strided-unbatched", "offset-unbatched"])
@parametrize_dtypes
@parametrize_cells
def test_cell_parity_noncontiguous(kind, dtype, layout, batch):
    cfg = cell_config(kind, 5, 6, batch, dtype=dtype)
    check_layout_parity(cfg, layout)


@parametrize_cells
def test_cell_parity_expanded_inputs(kind):
    """Stride-0 (broadcast) input and states, as made by `.expand`: gradients flow to the bases."""
    cfg = cell_config(kind, 4, 6, 5)
    x_base = torch.randn(1, 4, dtype=cfg.dtype, requires_grad=True)
    h_base = torch.randn(1, 6, dtype=cfg.dtype, requires_grad=True)
    c_base = torch.randn(6, dtype=cfg.dtype, requires_grad=True)
    x, h = x_base.expand(5, -1), h_base.expand(5, -1)
    if cfg.has_cell_state:
        inputs = Inputs(x, (h, c_base.expand(5, -1)), [x_base, h_base, c_base], ["x_base", "h_base", "c_base"])
    else:
        inputs = Inputs(x, h, [x_base, h_base], ["x_base", "h_base"])
    check_parity(*cfg.build_pair(), inputs)


@parametrize_dtypes
@parametrize_cells
def test_cell_parity_noncontiguous_weights(kind, dtype):
    """Parameters replaced by non-contiguous ones (same values) in both modules."""
    cfg = cell_config(kind, 4, 6, dtype=dtype)
    check_noncontiguous_weights_parity(cfg)


@pytest.mark.parametrize("batch", [None, 3], ids=["unbatched", "B3"])
@parametrize_dtypes
@parametrize_cells
def test_cell_decoder_loop(kind, dtype, batch):
    """50 steps of a decoder: each step's input is a fresh input plus a projection of the previous
    h'; the loss reads every step's h' (and c').  Gradients w.r.t. every step's input, h0, c0, the
    cell's parameters and the projection's (shared by both runs) go through all 50 steps."""
    steps, input_size, hidden_size = 50, 4, 7
    cfg = cell_config(kind, input_size, hidden_size, batch, dtype=dtype)
    reference, fast = cfg.build_pair()
    feedback = torch.nn.Linear(hidden_size, input_size, dtype=dtype)
    xs = torch.randn(steps, *cfg.input_shape(), dtype=dtype, requires_grad=True)
    states = [torch.randn(shape, dtype=dtype, requires_grad=True) for shape in cfg.state_shapes()]
    loss_weights = torch.randn(steps, 2, *cfg.state_shapes()[0], dtype=dtype)

    def run(cell):
        state = tuple(states) if cfg.has_cell_state else states[0]
        loss, outputs = 0, []
        for t in range(steps):
            h = state[0] if cfg.has_cell_state else state
            state = cell(xs[t] + feedback(h), state)
            for k, out in enumerate(flatten(state)):
                loss = loss + (out * loss_weights[t, k]).sum()
                outputs.append(out)
        return outputs, torch.autograd.grad(loss, [xs, *states, *feedback.parameters(), *cell.parameters()])

    exp_outputs, exp_grads = run(reference)
    act_outputs, act_grads = run(fast)
    for t, (a, e) in enumerate(zip(act_outputs, exp_outputs)):
        assert_close(a, e, f"output {t}")
    names = ["xs", "h0", "c0"][: 1 + len(states)] + ["feedback.weight", "feedback.bias"]
    names += [n for n, _ in reference.named_parameters()]
    assert len(names) == len(exp_grads)
    for name, a, e in zip(names, act_grads, exp_grads):
        assert torch.count_nonzero(e) > 0, f"gradient of {name} is zero: the loop does not reach it"
        assert_close(a, e, f"gradient of {name}")


@pytest.mark.parametrize("context", ["grad", "no_grad", "inference_mode"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("batch", [None, 3], ids=["unbatched", "B3"])
@parametrize_dtypes
@parametrize_cells
def test_cell_train_eval_no_grad(kind, dtype, batch, training, context):
    """Cells have no dropout: train and eval compute the same, with or without autograd."""
    cfg = cell_config(kind, 5, 8, batch, dtype=dtype)
    reference, fast = cfg.build_pair(training)
    inputs = cfg.inputs()
    if context == "grad":
        check_parity(reference, fast, inputs)
        return
    with getattr(torch, context)():
        _, actual = check_parity(reference, fast, inputs, backward=False)
    for t in flatten(actual):
        assert not t.requires_grad, f"output requires grad under {context}"


@parametrize_cells
def test_cell_deterministic(kind, two_threads):
    """Two identical runs give bitwise identical outputs and gradients."""
    cfg = cell_config(kind, 16, 32, 24, dtype=torch.float32)
    _, fast = cfg.build_pair()
    inputs = cfg.inputs()
    runs = []
    for _ in range(2):
        outputs = flatten(fast(inputs.input, inputs.hx))
        runs.append((outputs, gradients(fast, outputs, [torch.ones_like(t) for t in outputs], inputs)))
    (out_a, grads_a), (out_b, grads_b) = runs
    for a, b in zip(out_a, out_b):
        assert torch.equal(a, b), "output differs between two identical runs"
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), f"gradient of {name} differs between two identical runs"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@parametrize_cells
def test_cell_non_finite_input_like_torch(kind, value):
    """One non-finite input element: same NaN/Inf positions and finite values as torch."""
    cfg = cell_config(kind, 4, 5, 3)
    reference, fast = cfg.build_pair()
    inputs = cfg.inputs()
    x = inputs.input.detach().clone()
    x[1, 2] = value
    expected, actual = flatten(reference(x, inputs.hx)), flatten(fast(x, inputs.hx))
    for e, a in zip(expected, actual):
        torch.testing.assert_close(a, e, **TOL[cfg.dtype], equal_nan=True)
    if value != value:  # NaN must actually have reached h', or the test proves nothing
        assert torch.isnan(expected[0]).any()


@pytest.mark.parametrize("c_dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["f16", "bf16", "f32"])
def test_lstm_cell_lower_precision_cx_promoted_like_torch(c_dtype):
    """A cx of lower precision than the module is promoted (torch: f * cx promotes); its gradient
    comes back in cx's own dtype."""
    cfg = cell_config(("LSTMCell", "tanh"), 3, 4, 2)
    inputs = cfg.inputs()
    c = inputs.hx[1].detach().to(c_dtype).requires_grad_()
    check_parity(*cfg.build_pair(), Inputs(inputs.input, (inputs.hx[0], c), [*inputs.leaves[:2], c], ["input", "h0", "c0"]))


@pytest.mark.parametrize("c_dtype", [torch.float64, torch.int64], ids=["f64", "i64"])
def test_lstm_cell_cx_of_other_dtype_like_torch(c_dtype):
    reference, fast = cell_config(("LSTMCell", "tanh"), 3, 4, 2, dtype=torch.float32).build_pair()
    x = torch.randn(2, 3)
    hx = (torch.randn(2, 4), torch.randn(2, 4).mul(3).to(c_dtype))
    expected = reference(x, hx)
    actual = capture(lambda: fast(x, hx))
    assert actual[0] == "ok", f"rnnfast raised {type(actual[1]).__name__}: {actual[1]}"
    assert [t.dtype for t in actual[1]] == [t.dtype for t in expected]
    for a, e in zip(actual[1], expected):  # float32 arithmetic whatever cx's dtype
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)
