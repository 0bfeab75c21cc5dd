"""The module contract around the numbers, for all six modules: class relation, parameters,
state_dict, init, repr, copying and pickling, dtype moves, weights read at call time."""

import copy
import inspect
import io
import pickle

import pytest
import torch
from cases import assert_close, fast_module_class, torch_module_class

# (module, constructor kwargs): the options that change the parameter set or the repr, for all
# six modules.
VARIANTS = [
    ("LSTM", dict()),
    ("LSTM", dict(num_layers=3, bidirectional=True)),
    ("LSTM", dict(num_layers=2, proj_size=3, bias=False)),
    ("LSTM", dict(num_layers=2, proj_size=2, bidirectional=True, batch_first=True, dropout=0.25)),
    ("GRU", dict()),
    ("GRU", dict(num_layers=3, bidirectional=True, bias=False)),
    ("GRU", dict(num_layers=2, batch_first=True, dropout=0.5)),
    ("RNN", dict()),
    ("RNN", dict(nonlinearity="relu", num_layers=2, bidirectional=True)),
    ("RNN", dict(num_layers=2, bias=False, batch_first=True, dropout=0.3)),
    ("LSTMCell", dict()),
    ("LSTMCell", dict(bias=False)),
    ("GRUCell", dict()),
    ("GRUCell", dict(bias=False)),
    ("RNNCell", dict()),
    ("RNNCell", dict(nonlinearity="relu")),
    ("RNNCell", dict(bias=False, nonlinearity="relu")),
]
VARIANT_IDS = [f"{m}-" + "-".join(f"{k}={v}" for k, v in kw.items()) for m, kw in VARIANTS]

parametrize_variants = pytest.mark.parametrize("mode, kwargs", VARIANTS, ids=VARIANT_IDS)
NETWORKS = [(m, kw) for m, kw in VARIANTS if not m.endswith("Cell")]
parametrize_networks = pytest.mark.parametrize("mode, kwargs", NETWORKS, ids=[i for i in VARIANT_IDS if "Cell" not in i])


def is_cell(module) -> bool:
    return isinstance(module, torch.nn.RNNCellBase)


def construct(mode, kwargs, seed=0):
    """torch.nn and rnnfast modules constructed from the same RNG state (sizes 5 -> 7)."""
    torch.manual_seed(seed)
    reference = torch_module_class(mode)(5, 7, **kwargs)
    torch.manual_seed(seed)
    fast = fast_module_class(mode)(5, 7, **kwargs)
    return reference, fast


def sample_input(module, dtype=torch.float32):
    """A batch of 3 (a cell) or 4 steps x 3 sequences in the module's layout."""
    if is_cell(module):
        return torch.randn(3, 5, dtype=dtype)
    x = torch.randn(4, 3, 5, dtype=dtype)
    return x.transpose(0, 1) if module.batch_first else x


def first_output(result):
    """The output (networks) or h' (cells)."""
    return result[0] if isinstance(result, tuple) else result


def forward_matches(reference, fast, dtype=torch.float32, **call):
    x = sample_input(reference, dtype)
    reference.eval()
    fast.eval()
    expected, actual = reference(x, **call), fast(x, **call)
    assert_close(first_output(actual), first_output(expected), "output")
    if is_cell(reference) and isinstance(expected, tuple):
        assert_close(actual[1], expected[1], "c'")


@parametrize_variants
def test_class_relation_to_torch_module(mode, kwargs):
    """Cells: an instance of torch's cell class. Networks: a torch.nn.RNNBase with torch's mode,
    but not an instance of torch.nn.LSTM/GRU/RNN: TorchDynamo refuses every instance of those (see
    rnnfast/modules.py and the README)."""
    reference, fast = construct(mode, kwargs)
    assert type(fast) is fast_module_class(mode) and type(fast) is not type(reference)
    if is_cell(reference):
        assert isinstance(fast, type(reference)) and isinstance(fast, torch.nn.RNNCellBase)
    else:
        assert isinstance(fast, torch.nn.RNNBase)
        assert not isinstance(fast, (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN))
        assert fast.mode == reference.mode
    assert getattr(fast, "nonlinearity", None) == getattr(reference, "nonlinearity", None)


@parametrize_variants
def test_same_parameters_and_init_from_same_seed(mode, kwargs):
    """Same names, shapes, dtypes, order and values (same init distribution, same RNG draws)."""
    reference, fast = construct(mode, kwargs)
    ref_params, fast_params = dict(reference.named_parameters()), dict(fast.named_parameters())
    assert list(fast_params) == list(ref_params)
    for name, expected in ref_params.items():
        actual = fast_params[name]
        assert isinstance(actual, torch.nn.Parameter), name
        assert actual.shape == expected.shape and actual.dtype == expected.dtype, name
        assert torch.equal(actual, expected), f"{name} initialised differently"
    for attribute in ("input_size", "hidden_size", "bias", "nonlinearity", "num_layers", "proj_size"):
        assert getattr(fast, attribute, None) == getattr(reference, attribute, None), attribute
    if is_cell(fast):
        if not fast.bias:
            assert fast.bias_ih is None and fast.bias_hh is None
        return
    assert fast._flat_weights_names == reference._flat_weights_names
    assert [[p.shape for p in layer] for layer in fast.all_weights] == [[p.shape for p in layer] for layer in reference.all_weights]


@parametrize_variants
def test_reset_parameters_matches_torch(mode, kwargs):
    reference, fast = construct(mode, kwargs)
    torch.manual_seed(3)
    reference.reset_parameters()
    torch.manual_seed(3)
    fast.reset_parameters()
    for (name, a), (_, e) in zip(fast.named_parameters(), reference.named_parameters()):
        assert torch.equal(a, e), name


@parametrize_variants
def test_state_dict_round_trip_strict(mode, kwargs):
    reference, fast = construct(mode, kwargs, seed=1)
    ref_state, fast_state = reference.state_dict(), fast.state_dict()
    assert list(fast_state) == list(ref_state)
    assert {k: v.shape for k, v in fast_state.items()} == {k: v.shape for k, v in ref_state.items()}

    _, fresh_fast = construct(mode, kwargs, seed=2)
    fresh_fast.load_state_dict(ref_state, strict=True)  # torch checkpoint -> rnnfast
    forward_matches(reference, fresh_fast)

    fresh_reference, _ = construct(mode, kwargs, seed=3)
    fresh_reference.load_state_dict(fresh_fast.state_dict(), strict=True)  # rnnfast checkpoint -> torch
    for name, value in fresh_reference.state_dict().items():
        assert torch.equal(value, ref_state[name]), name


@parametrize_variants
def test_repr_matches_torch(mode, kwargs):
    reference, fast = construct(mode, kwargs)
    expected = repr(reference)
    actual = repr(fast).replace(type(fast).__name__, type(reference).__name__, 1)
    assert actual == expected
    assert expected.startswith(type(reference).__name__ + "(")


@parametrize_variants
def test_save_and_load_whole_module(mode, kwargs):
    _, fast = construct(mode, kwargs)
    buffer = io.BytesIO()
    torch.save(fast, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is type(fast)
    for (name, a), (_, e) in zip(loaded.named_parameters(), fast.named_parameters()):
        assert torch.equal(a, e), name
    forward_matches(fast, loaded)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@parametrize_variants
def test_copy_and_pickle(mode, kwargs, how):
    _, fast = construct(mode, kwargs)
    clone = copy.deepcopy(fast) if how == "deepcopy" else pickle.loads(pickle.dumps(fast))
    assert repr(clone) == repr(fast)
    assert type(clone) is type(fast)
    for (name, a), (_, e) in zip(clone.named_parameters(), fast.named_parameters()):
        assert torch.equal(a, e) and a.data_ptr() != e.data_ptr(), name
    forward_matches(fast, clone)
    with torch.no_grad():
        next(clone.parameters()).add_(1.0)  # the copy owns its weights: changing it leaves fast as is
    reference, _ = construct(mode, kwargs)
    forward_matches(reference, fast)


@pytest.mark.parametrize("convert", ["to_float64", "double", "to_float64_then_float"])
@parametrize_variants
def test_dtype_conversion_then_forward(mode, kwargs, convert):
    reference, fast = construct(mode, kwargs)
    if convert == "to_float64":
        modules, dtype = [m.to(torch.float64) for m in (reference, fast)], torch.float64
    elif convert == "double":
        modules, dtype = [m.double() for m in (reference, fast)], torch.float64
    else:
        modules, dtype = [m.to(torch.float64).float() for m in (reference, fast)], torch.float32
    reference, fast = modules
    for name, p in fast.named_parameters():
        assert p.dtype == dtype, name
    forward_matches(reference, fast, dtype)


@parametrize_variants
def test_parameters_are_read_at_call_time(mode, kwargs):
    """Weights changed in place or replaced after construction are used by the next forward."""
    reference, fast = construct(mode, kwargs)
    w_hh, w_ih = ("weight_hh", "weight_ih") if is_cell(reference) else ("weight_hh_l0", "weight_ih_l0")
    with torch.no_grad():
        for module in (reference, fast):
            getattr(module, w_hh).mul_(2.0)
    forward_matches(reference, fast)
    replacement = torch.nn.Parameter(torch.randn_like(getattr(reference, w_ih)))
    setattr(reference, w_ih, replacement)
    setattr(fast, w_ih, torch.nn.Parameter(replacement.detach().clone()))
    forward_matches(reference, fast)


@parametrize_variants
def test_forward_signature_and_keywords(mode, kwargs):
    reference, fast = construct(mode, kwargs)
    assert list(inspect.signature(fast.forward).parameters) == list(inspect.signature(reference.forward).parameters)
    x = sample_input(reference)
    reference.eval()
    fast.eval()
    assert_close(first_output(fast(input=x, hx=None)), first_output(reference(input=x, hx=None)), "output")


@parametrize_networks
def test_flatten_parameters_is_harmless(mode, kwargs):
    reference, fast = construct(mode, kwargs)
    fast.flatten_parameters()
    forward_matches(reference, fast)


@parametrize_variants
def test_parametrized_weights_are_used(mode, kwargs):
    """A parametrization turns a weight into a computed property (not in _parameters):
    every forward must read its current value, as torch.nn does."""
    reference, fast = construct(mode, kwargs)
    w_hh = "weight_hh" if is_cell(reference) else "weight_hh_l0"
    for module in (reference, fast):
        torch.nn.utils.parametrizations.weight_norm(module, w_hh)
    forward_matches(reference, fast)
    with torch.no_grad():
        for module in (reference, fast):
            getattr(module.parametrizations, w_hh).original0.mul_(1.5)
    forward_matches(reference, fast)


@parametrize_variants
def test_functional_call_with_other_weights(mode, kwargs):
    """torch.func.functional_call swaps the parameters for one call only."""
    reference, fast = construct(mode, kwargs)
    reference.eval()
    fast.eval()
    other = {name: torch.randn_like(p) for name, p in reference.named_parameters()}
    x = sample_input(reference)
    expected = torch.func.functional_call(reference, other, (x,))
    actual = torch.func.functional_call(fast, other, (x,))
    assert_close(first_output(actual), first_output(expected), "output with swapped weights")
    assert_close(first_output(fast(x)), first_output(reference(x)), "output with the module's own weights again")
