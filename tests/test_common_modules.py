"""PyTorch's own module samples (torch.testing._internal.common_modules) run through rnnfast.

Every forward sample of torch.nn.LSTM / GRU / RNN / LSTMCell / GRUCell / RNNCell in `module_db`
(GRU and RNN with their PackedSequence samples) is run on a torch.nn module and an rnnfast module
with the same weights: same outputs, same gradients w.r.t. every input tensor and parameter, and
for unbatched samples the sample's own reference function (the batched call) holds for rnnfast too.
Every error sample must raise the exception type and message regex the sample specifies.
"""

import pytest
import torch
from cases import (
    Inputs,
    assert_close,
    assert_outputs_close,
    fast_module_class,
    flatten,
    gradients,
    torch_module_class,
)
from torch.nn.utils.rnn import PackedSequence

# common_modules imports expecttest (a PyTorch test dependency) through common_utils.
common_modules = pytest.importorskip(
    "torch.testing._internal.common_modules", reason="PyTorch's module samples need the expecttest package"
)

NETWORKS = ("LSTM", "GRU", "RNN")
CELLS = ("LSTMCell", "GRUCell", "RNNCell")
MODES = NETWORKS + CELLS
WITH_PACKED_SAMPLES = ("GRU", "RNN")  # their sample function takes with_packed_sequence
INFOS = {info.module_cls.__name__: info for info in common_modules.module_db if info.module_cls.__name__ in MODES}
DTYPES = {"f32": torch.float32, "f64": torch.float64}


def forward_samples(mode: str, dtype: torch.dtype, training: bool) -> list:
    info = INFOS[mode]
    extra = dict(with_packed_sequence=True) if mode in WITH_PACKED_SAMPLES else {}
    return list(info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True, training=training, **extra))


def error_samples(mode: str, dtype: torch.dtype) -> list:
    info = INFOS[mode]
    return list(info.module_error_inputs_func(info, device="cpu", dtype=dtype, requires_grad=False, training=True))


def _count(make) -> int:
    state = torch.random.get_rng_state()
    try:
        return len(make())
    finally:
        torch.random.set_rng_state(state)


FORWARD_IDS = [(m, i) for m in MODES if m in INFOS for i in range(_count(lambda m=m: forward_samples(m, torch.float64, True)))]
ERROR_IDS = [(m, i) for m in MODES if m in INFOS for i in range(_count(lambda m=m: error_samples(m, torch.float32)))]


def test_module_db_has_the_samples():
    """Guards against a torch upgrade silently emptying the parametrizations below."""
    assert set(INFOS) == set(MODES)
    count = {mode: sum(1 for m, _ in FORWARD_IDS if m == mode) for mode in MODES}
    assert count["LSTM"] >= 16
    assert count["GRU"] >= 32  # 16 padded/unbatched + 16 packed
    assert count["RNN"] >= 64  # the GRU samples for tanh and for relu
    assert count["LSTMCell"] >= 2 and count["GRUCell"] >= 2 and count["RNNCell"] >= 3
    errors = {mode: sum(1 for m, _ in ERROR_IDS if m == mode) for mode in MODES}
    assert all(errors[m] >= 14 for m in NETWORKS) and all(errors[m] >= 4 for m in CELLS), errors


def flat(mode: str, result) -> list[torch.Tensor]:
    """All output tensors of a call: [output, h_n(, c_n)] of a network, [h'(, c')] of a cell."""
    if mode in CELLS:
        return list(result) if isinstance(result, tuple) else [result]
    return flatten(result)


def assert_results_close(mode: str, expected, actual) -> None:
    if mode not in CELLS:
        assert_outputs_close(expected, actual)
        return
    assert isinstance(actual, tuple) == isinstance(expected, tuple)
    for name, e, a in zip(("h'", "c'"), flat(mode, expected), flat(mode, actual)):
        assert a.shape == e.shape and a.dtype == e.dtype, f"{name}: {a.shape} {a.dtype} != {e.shape} {e.dtype}"
        assert_close(a, e, name)


def tensors_in(value) -> list[torch.Tensor]:
    """The differentiable tensors a forward argument carries (PackedSequence: its data)."""
    if isinstance(value, PackedSequence):
        return tensors_in(value.data)
    if isinstance(value, torch.Tensor):
        return [value] if value.requires_grad else []
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors_in(v)]
    return []


def build(mode: str, constructor_input, dtype: torch.dtype, training: bool):
    args, kwargs = constructor_input.args, constructor_input.kwargs
    reference = torch_module_class(mode)(*args, **kwargs).to(dtype)
    fast = fast_module_class(mode)(*args, **kwargs).to(dtype)
    fast.load_state_dict(reference.state_dict(), strict=True)
    return reference.train(training), fast.train(training)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("mode, index", FORWARD_IDS, ids=[f"{m}-{i}" for m, i in FORWARD_IDS])
def test_forward_sample(mode, index, dtype, training):
    sample = forward_samples(mode, dtype, training)[index]
    reference, fast = build(mode, sample.constructor_input, dtype, training)
    args, kwargs = sample.forward_input.args, sample.forward_input.kwargs

    expected = reference(*args, **kwargs)
    actual = fast(*args, **kwargs)
    assert_results_close(mode, expected, actual)

    leaves = tensors_in(args)
    assert leaves, "the sample has no differentiable input"
    inputs = Inputs(input=None, hx=None, leaves=leaves, leaf_names=[f"input tensor {i}" for i in range(len(leaves))])
    grad_outputs = [torch.randn_like(t) for t in flat(mode, expected)]
    exp_grads = gradients(reference, flat(mode, expected), grad_outputs, inputs)
    act_grads = gradients(fast, flat(mode, actual), grad_outputs, inputs)
    for name in exp_grads:
        assert_close(act_grads[name], exp_grads[name], f"gradient of {name}")

    if sample.reference_fn is not None and not isinstance(args[0], PackedSequence):
        # the sample's own check: an unbatched call equals the batched call, squeezed
        batched = sample.reference_fn(fast, *args, **kwargs)
        assert_results_close(mode, batched, actual)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("mode, index", ERROR_IDS, ids=[f"{m}-{i}" for m, i in ERROR_IDS])
def test_error_sample(mode, index, dtype):
    sample = error_samples(mode, dtype)[index]
    module_input = sample.module_error_input
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    if sample.error_on == common_modules.ModuleErrorEnum.CONSTRUCTION_ERROR:
        with pytest.raises(sample.error_type, match=sample.error_regex):
            fast_module_class(mode)(*args, **kwargs)
        return
    fast = fast_module_class(mode)(*args, **kwargs)
    forward = module_input.forward_input
    with pytest.raises(sample.error_type, match=sample.error_regex):
        fast(*forward.args, **forward.kwargs)
