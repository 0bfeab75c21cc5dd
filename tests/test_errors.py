"""Exception type and message parity with torch.nn for bad constructor arguments and bad inputs.

All six modules: the networks first, then the cells (whose torch versions validate nothing in
their constructors and little in Python).  Each case runs torch.nn and rnnfast.  The exception type must always match.  The message must
match exactly when torch raises it from Python (torch/nn/modules/rnn.py, a ``raise`` statement
there); when torch's error comes out of an ATen kernel the message is torch's implementation
detail (oneDNN or GEMM wording) and only the type is compared.  Each case declares its origin and
the test checks the declaration against torch's traceback, so a torch upgrade that moves a check
shows up here.

Cases whose torch message comes from ATen (torch 2.13, CPU):
  * sequence length 0: "Expected sequence length to be larger than 0 in RNN"
  * hx dtype differs from the weights: LSTM float32 "get_mkldnn_dtype: unsupported data type",
    LSTM float64, GRU and RNN "mat1 and mat2 must have the same dtype, but got ..."
  * LSTM with a PackedSequence: torch does not validate hx (nor the input dtype) in Python, so a
    wrong batch gives "The size of tensor a (3) must match ...", a wrong feature size "got an
    incorrect number of RNN parameters", too few layers "Expected more hidden states in
    stacked_rnn", a 2-D hx an IndexError "Dimension out of range", a double input "mat1 and mat2
    must have the same dtype"
  * unsorted PackedSequence whose hx has too few batch entries: index_select's "INDICES element is
    out of DATA bounds" (LSTM, GRU and RNN: the permutation happens before GRU's and RNN's check).
    With too *many* batch entries torch raises nothing: the permutation picks the first B of them.
  * RNN (or GRU) given an (h, c) tuple: AttributeError "'tuple' object has no attribute 'dim'"
    (a failing attribute access in rnn.py, not a raise statement)
"""

import dataclasses
import warnings
from collections.abc import Callable

import pytest
import torch
from cases import (
    CELL_OUTPUT_NAMES,
    MODES,
    Case,
    assert_close,
    assert_outputs_close,
    assert_raises_like_torch,
    assert_same_error,
    capture,
    fast_module_class,
    torch_module_class,
)
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast


# ---- constructor ------------------------------------------------------------------------------

CONSTRUCTOR_CASES = {
    "hidden_size_0": ((10, 0, 1), {}),
    "num_layers_0": ((10, 10, 0), {}),
    "input_size_0": ((0, 5), {}),
    "input_size_negative": ((-1, 5), {}),
    "input_size_float": ((3.0, 5), {}),
    "input_size_str": (("10", 5), {}),
    "hidden_size_float": ((3, 5.0), {}),
    "hidden_size_negative": ((3, -2), {}),
    "num_layers_float": ((3, 5, 1.5), {}),
    "bias_int": ((3, 5), {"bias": 1}),
    "bias_str": ((3, 5), {"bias": "True"}),
    "batch_first_int": ((3, 5), {"batch_first": 0}),
    "batch_first_str": ((3, 5), {"batch_first": "False"}),
    "dropout_negative": ((3, 5, 2), {"dropout": -0.1}),
    "dropout_above_one": ((3, 5, 2), {"dropout": 1.5}),
    "dropout_bool": ((3, 5, 2), {"dropout": True}),
    "dropout_str": ((3, 5, 2), {"dropout": "0.5"}),
    "proj_size_negative": ((3, 5), {"proj_size": -1}),
    "proj_size_equal_hidden": ((3, 5), {"proj_size": 5}),
    "proj_size_above_hidden": ((3, 5), {"proj_size": 7}),
    "unknown_keyword": ((3, 5), {"foo": 1}),
    "missing_sizes": ((), {}),
    "too_many_positional": ((3, 4, 1, True, False, 0.0, False, 0, None, None, 5), {}),
}


# Cases of some modes only: RNN's nonlinearity (4th positional argument or keyword), and what
# torch.nn.GRU / RNN do with arguments of LSTM and LSTM / GRU with RNN's.
MODE_CONSTRUCTOR_CASES = {
    "RNN": {
        "nonlinearity_unknown": ((3, 5), {"nonlinearity": "sigmoid"}),
        "nonlinearity_capitalised": ((3, 5), {"nonlinearity": "Tanh"}),
        "nonlinearity_none": ((3, 5), {"nonlinearity": None}),
        "nonlinearity_positional_unknown": ((3, 5, 1, "gelu"), {}),
        "nonlinearity_positional_and_keyword": ((3, 5, 1, "relu"), {"nonlinearity": "tanh"}),
        "nonlinearity_positional_bad_after_it": ((3, 5, 1, "relu", 1), {}),
        "too_many_positional_with_nonlinearity": ((3, 5, 1, "tanh", True, False, 0.0, False, None, None, 5), {}),
        "proj_size_zero": ((3, 5), {"proj_size": 0}),
        "proj_size_valid_for_lstm": ((3, 5), {"proj_size": 2}),
        "proj_size_and_bad_nonlinearity": ((3, 5), {"proj_size": 2, "nonlinearity": "gelu"}),
    },
    "GRU": {
        "proj_size_zero": ((3, 5), {"proj_size": 0}),
        "proj_size_valid_for_lstm": ((3, 5), {"proj_size": 2}),
        "nonlinearity": ((3, 5), {"nonlinearity": "tanh"}),
    },
    "LSTM": {
        "nonlinearity": ((3, 5), {"nonlinearity": "tanh"}),
    },
}
MODE_CONSTRUCTOR_IDS = [(mode, case) for mode, cases in MODE_CONSTRUCTOR_CASES.items() for case in cases]


@pytest.mark.parametrize("case", CONSTRUCTOR_CASES)
@pytest.mark.parametrize("mode", MODES)
def test_constructor_error(mode, case):
    args, kwargs = CONSTRUCTOR_CASES[case]
    expected = capture(lambda: torch_module_class(mode)(*args, **kwargs))
    actual = capture(lambda: fast_module_class(mode)(*args, **kwargs))
    assert_same_error(expected, actual, compare_message=True)


@pytest.mark.parametrize("mode, case", MODE_CONSTRUCTOR_IDS, ids=[f"{m}-{c}" for m, c in MODE_CONSTRUCTOR_IDS])
def test_mode_specific_constructor_error(mode, case):
    args, kwargs = MODE_CONSTRUCTOR_CASES[mode][case]
    expected = capture(lambda: torch_module_class(mode)(*args, **kwargs))
    actual = capture(lambda: fast_module_class(mode)(*args, **kwargs))
    assert_same_error(expected, actual, compare_message=True)


@pytest.mark.parametrize(
    "args, kwargs",
    [((3, 5, 2, "relu"), {}), ((3, 5, 2, "relu", False, True), {}), ((3, 5), {"nonlinearity": "relu"}),
     ((3, 5, 1, "tanh", True, True, 0.0, True), {}), ((3, 5), {})],
    ids=["positional_relu", "positional_relu_bias_batch_first", "keyword_relu", "all_positional", "default"],
)
def test_rnn_arguments_read_like_torch(args, kwargs):
    """RNN's 4th positional argument is `nonlinearity`: the arguments after it land where torch puts them."""
    reference = torch.nn.RNN(*args, **kwargs)
    fast = fast_module_class("RNN")(*args, **kwargs)
    for attribute in ("mode", "nonlinearity", "num_layers", "bias", "batch_first", "dropout", "bidirectional"):
        assert getattr(fast, attribute) == getattr(reference, attribute), attribute
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in reference.named_parameters()]


@pytest.mark.parametrize("mode", MODES)
def test_dropout_with_one_layer_warns_like_torch(mode):
    def warnings_of(cls):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cls(3, 5, num_layers=1, dropout=0.5)
        return [(w.category, str(w.message)) for w in caught]

    expected = warnings_of(torch_module_class(mode))
    assert expected, "torch.nn no longer warns: the test is out of date"
    assert warnings_of(fast_module_class(mode)) == expected


# ---- forward ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ForwardCase:
    """Call a 2-layer module (input_size 3, hidden_size 4) with bad arguments."""

    mode: str
    origin: str  # where torch raises: "python" (rnn.py) or "aten"
    make_args: Callable[[], tuple]  # -> forward arguments
    kwargs: tuple = ()  # extra constructor kwargs as (name, value) pairs


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def packed(batch_sizes=(5, 3), dtype=torch.float32, enforce_sorted=True):
    """A PackedSequence of 3-feature sequences with the given lengths."""
    lengths = torch.tensor(batch_sizes)
    return pack_padded_sequence(randn(int(lengths.max()), len(lengths), 3, dtype=dtype), lengths,
                                enforce_sorted=enforce_sorted)


def lstm_hx(h_shape, c_shape, h_dtype=torch.float32, c_dtype=torch.float32):
    return randn(*h_shape, dtype=h_dtype), randn(*c_shape, dtype=c_dtype)


F64 = (("dtype", torch.float64),)
BF = (("batch_first", True),)
RELU = (("nonlinearity", "relu"),)

FORWARD_CASES = {
    # input rank
    "LSTM_input_1d": ForwardCase("LSTM", "python", lambda: (randn(3),)),
    "LSTM_input_4d": ForwardCase("LSTM", "python", lambda: (randn(2, 2, 2, 3),)),
    "GRU_input_1d": ForwardCase("GRU", "python", lambda: (randn(3),)),
    "GRU_input_4d": ForwardCase("GRU", "python", lambda: (randn(2, 2, 2, 3),)),
    # input_size
    "LSTM_input_size": ForwardCase("LSTM", "python", lambda: (randn(5, 2, 4),)),
    "LSTM_input_size_unbatched": ForwardCase("LSTM", "python", lambda: (randn(5, 4),)),
    "LSTM_input_size_packed_with_hx": ForwardCase("LSTM", "aten", lambda: (
        pack_padded_sequence(randn(5, 2, 4), [5, 3]), lstm_hx((2, 2, 4), (2, 2, 4)))),
    "GRU_input_size": ForwardCase("GRU", "python", lambda: (randn(5, 2, 4),)),
    "GRU_input_size_batch_first": ForwardCase("GRU", "python", lambda: (randn(2, 5, 4),), BF),
    "GRU_input_size_packed": ForwardCase("GRU", "python", lambda: (pack_padded_sequence(randn(5, 2, 4), [5, 3]),)),
    # hx shape, batched
    "LSTM_h_batch": ForwardCase("LSTM", "python", lambda: (randn(5, 2, 3), lstm_hx((2, 3, 4), (2, 2, 4)))),
    "LSTM_h_hidden": ForwardCase("LSTM", "python", lambda: (randn(5, 2, 3), lstm_hx((2, 2, 5), (2, 2, 4)))),
    "LSTM_h_layers": ForwardCase("LSTM", "python", lambda: (randn(5, 2, 3), lstm_hx((1, 2, 4), (2, 2, 4)))),
    "LSTM_c_batch": ForwardCase("LSTM", "python", lambda: (randn(5, 2, 3), lstm_hx((2, 2, 4), (2, 3, 4)))),
    "LSTM_c_hidden": ForwardCase("LSTM", "python", lambda: (randn(5, 2, 3), lstm_hx((2, 2, 4), (2, 2, 3)))),
    "LSTM_proj_c_has_proj_size": ForwardCase("LSTM", "python", lambda: (randn(5, 2, 3), lstm_hx((2, 2, 2), (2, 2, 2))),
                                             (("proj_size", 2),)),
    "LSTM_proj_h_has_hidden_size": ForwardCase("LSTM", "python", lambda: (randn(5, 2, 3), lstm_hx((2, 2, 4), (2, 2, 4))),
                                               (("proj_size", 2),)),
    "LSTM_h_batch_first": ForwardCase("LSTM", "python", lambda: (randn(2, 5, 3), lstm_hx((2, 5, 4), (2, 5, 4))), BF),
    "GRU_h_batch": ForwardCase("GRU", "python", lambda: (randn(5, 2, 3), randn(2, 3, 4))),
    "GRU_h_hidden": ForwardCase("GRU", "python", lambda: (randn(5, 2, 3), randn(2, 2, 5))),
    "GRU_h_bidirectional_layers": ForwardCase("GRU", "python", lambda: (randn(5, 2, 3), randn(2, 2, 4)),
                                              (("bidirectional", True),)),
    # hx rank
    "LSTM_h_rank_batched": ForwardCase("LSTM", "python", lambda: (randn(5, 2, 3), lstm_hx((2, 4), (2, 2, 4)))),
    "LSTM_c_rank_batched": ForwardCase("LSTM", "python", lambda: (randn(5, 2, 3), lstm_hx((2, 2, 4), (2, 4)))),
    "LSTM_h_rank_unbatched": ForwardCase("LSTM", "python", lambda: (randn(5, 3), lstm_hx((2, 1, 4), (2, 4)))),
    "LSTM_hx_not_a_tuple": ForwardCase("LSTM", "python", lambda: (randn(5, 2, 3), randn(2, 2, 4))),
    "GRU_h_rank_batched": ForwardCase("GRU", "python", lambda: (randn(5, 2, 3), randn(2, 4))),
    "GRU_h_rank_unbatched": ForwardCase("GRU", "python", lambda: (randn(5, 3), randn(2, 1, 4))),
    # hx shape, unbatched
    "LSTM_h_unbatched": ForwardCase("LSTM", "python", lambda: (randn(5, 3), lstm_hx((3, 4), (2, 4)))),
    "LSTM_c_unbatched": ForwardCase("LSTM", "python", lambda: (randn(5, 3), lstm_hx((2, 4), (2, 5)))),
    "GRU_h_unbatched": ForwardCase("GRU", "python", lambda: (randn(5, 3), randn(3, 4))),
    # dtypes
    "LSTM_double_input": ForwardCase("LSTM", "python", lambda: (randn(5, 2, 3, dtype=torch.float64),)),
    "LSTM_float_input_double_module": ForwardCase("LSTM", "python", lambda: (randn(5, 2, 3),), F64),
    "LSTM_double_input_unbatched": ForwardCase("LSTM", "python", lambda: (randn(5, 3, dtype=torch.float64),)),
    "GRU_double_input": ForwardCase("GRU", "python", lambda: (randn(5, 2, 3, dtype=torch.float64),)),
    "GRU_float_input_double_module": ForwardCase("GRU", "python", lambda: (randn(5, 2, 3),), F64),
    "GRU_double_input_packed": ForwardCase("GRU", "python", lambda: (packed(dtype=torch.float64),)),
    "LSTM_double_input_packed": ForwardCase("LSTM", "aten", lambda: (packed(dtype=torch.float64),)),
    "LSTM_double_h": ForwardCase("LSTM", "aten", lambda: (randn(5, 2, 3), lstm_hx((2, 2, 4), (2, 2, 4), h_dtype=torch.float64))),
    "LSTM_float_h_double_module": ForwardCase("LSTM", "aten", lambda: (
        randn(5, 2, 3, dtype=torch.float64), lstm_hx((2, 2, 4), (2, 2, 4), c_dtype=torch.float64)), F64),
    "GRU_double_h": ForwardCase("GRU", "aten", lambda: (randn(5, 2, 3), randn(2, 2, 4, dtype=torch.float64))),
    "GRU_float_h_double_module": ForwardCase("GRU", "aten", lambda: (randn(5, 2, 3, dtype=torch.float64), randn(2, 2, 4)), F64),
    # zero-length sequences
    "LSTM_T0": ForwardCase("LSTM", "aten", lambda: (randn(0, 2, 3),)),
    "LSTM_T0_unbatched": ForwardCase("LSTM", "aten", lambda: (randn(0, 3),)),
    "LSTM_T0_batch_first": ForwardCase("LSTM", "aten", lambda: (randn(2, 0, 3),), BF),
    "LSTM_T0_with_hx": ForwardCase("LSTM", "aten", lambda: (randn(0, 2, 3), lstm_hx((2, 2, 4), (2, 2, 4)))),
    "GRU_T0": ForwardCase("GRU", "aten", lambda: (randn(0, 2, 3),)),
    "GRU_T0_unbatched": ForwardCase("GRU", "aten", lambda: (randn(0, 3),)),
    "GRU_T0_batch_first": ForwardCase("GRU", "aten", lambda: (randn(2, 0, 3),), BF),
    # PackedSequence with a bad hx
    "LSTM_packed_h_batch": ForwardCase("LSTM", "aten", lambda: (packed(), lstm_hx((2, 3, 4), (2, 3, 4)))),
    "LSTM_packed_h_hidden": ForwardCase("LSTM", "aten", lambda: (packed(), lstm_hx((2, 2, 5), (2, 2, 4)))),
    "LSTM_packed_c_hidden": ForwardCase("LSTM", "aten", lambda: (packed(), lstm_hx((2, 2, 4), (2, 2, 5)))),
    "LSTM_packed_h_layers": ForwardCase("LSTM", "aten", lambda: (packed(), lstm_hx((1, 2, 4), (1, 2, 4)))),
    "LSTM_packed_h_rank": ForwardCase("LSTM", "aten", lambda: (packed(), lstm_hx((2, 4), (2, 2, 4)))),
    "LSTM_packed_unsorted_h_batch": ForwardCase("LSTM", "aten", lambda: (
        packed((2, 5, 3), enforce_sorted=False), lstm_hx((2, 2, 4), (2, 2, 4)))),
    "GRU_packed_h_batch": ForwardCase("GRU", "python", lambda: (packed(), randn(2, 3, 4))),
    "GRU_packed_h_hidden": ForwardCase("GRU", "python", lambda: (packed(), randn(2, 2, 5))),
    "GRU_packed_h_rank": ForwardCase("GRU", "python", lambda: (packed(), randn(2, 4))),
    "GRU_packed_unsorted_h_batch_too_small": ForwardCase("GRU", "aten", lambda: (
        packed((2, 5, 3), enforce_sorted=False), randn(2, 2, 4))),
    # RNN (tanh unless the case says relu): torch.nn.RNN checks like GRU, with its own wording
    # of the input-rank message.
    "RNN_input_1d": ForwardCase("RNN", "python", lambda: (randn(3),)),
    "RNN_input_4d": ForwardCase("RNN", "python", lambda: (randn(2, 2, 2, 3),)),
    "RNN_relu_input_0d": ForwardCase("RNN", "python", lambda: (randn(()),), RELU),
    "RNN_input_size": ForwardCase("RNN", "python", lambda: (randn(5, 2, 4),)),
    "RNN_relu_input_size_unbatched": ForwardCase("RNN", "python", lambda: (randn(5, 4),), RELU),
    "RNN_input_size_batch_first": ForwardCase("RNN", "python", lambda: (randn(2, 5, 4),), BF),
    "RNN_input_size_packed": ForwardCase("RNN", "python", lambda: (pack_padded_sequence(randn(5, 2, 4), [5, 3]),)),
    "RNN_h_batch": ForwardCase("RNN", "python", lambda: (randn(5, 2, 3), randn(2, 3, 4))),
    "RNN_relu_h_hidden": ForwardCase("RNN", "python", lambda: (randn(5, 2, 3), randn(2, 2, 5)), RELU),
    "RNN_h_layers": ForwardCase("RNN", "python", lambda: (randn(5, 2, 3), randn(1, 2, 4))),
    "RNN_h_bidirectional_layers": ForwardCase("RNN", "python", lambda: (randn(5, 2, 3), randn(2, 2, 4)),
                                              (("bidirectional", True),)),
    "RNN_h_batch_first": ForwardCase("RNN", "python", lambda: (randn(2, 5, 3), randn(2, 5, 4)), BF),
    "RNN_h_rank_batched": ForwardCase("RNN", "python", lambda: (randn(5, 2, 3), randn(2, 4))),
    "RNN_h_rank_unbatched": ForwardCase("RNN", "python", lambda: (randn(5, 3), randn(2, 1, 4))),
    "RNN_relu_h_rank_unbatched": ForwardCase("RNN", "python", lambda: (randn(5, 3), randn(4)), RELU),
    "RNN_h_unbatched": ForwardCase("RNN", "python", lambda: (randn(5, 3), randn(3, 4))),
    "RNN_h_tuple": ForwardCase("RNN", "aten", lambda: (randn(5, 2, 3), lstm_hx((2, 2, 4), (2, 2, 4)))),
    "RNN_double_input": ForwardCase("RNN", "python", lambda: (randn(5, 2, 3, dtype=torch.float64),)),
    "RNN_relu_double_input_unbatched": ForwardCase("RNN", "python", lambda: (randn(5, 3, dtype=torch.float64),), RELU),
    "RNN_float_input_double_module": ForwardCase("RNN", "python", lambda: (randn(5, 2, 3),), F64),
    "RNN_double_input_packed": ForwardCase("RNN", "python", lambda: (packed(dtype=torch.float64),)),
    "RNN_double_h": ForwardCase("RNN", "aten", lambda: (randn(5, 2, 3), randn(2, 2, 4, dtype=torch.float64))),
    "RNN_relu_float_h_double_module": ForwardCase("RNN", "aten", lambda: (
        randn(5, 2, 3, dtype=torch.float64), randn(2, 2, 4)), F64 + RELU),
    "RNN_T0": ForwardCase("RNN", "aten", lambda: (randn(0, 2, 3),)),
    "RNN_relu_T0_unbatched": ForwardCase("RNN", "aten", lambda: (randn(0, 3),), RELU),
    "RNN_T0_batch_first": ForwardCase("RNN", "aten", lambda: (randn(2, 0, 3),), BF),
    "RNN_T0_with_hx": ForwardCase("RNN", "aten", lambda: (randn(0, 2, 3), randn(2, 2, 4))),
    "RNN_packed_h_batch": ForwardCase("RNN", "python", lambda: (packed(), randn(2, 3, 4))),
    "RNN_relu_packed_h_hidden": ForwardCase("RNN", "python", lambda: (packed(), randn(2, 2, 5)), RELU),
    "RNN_packed_h_layers": ForwardCase("RNN", "python", lambda: (packed(), randn(1, 2, 4))),
    "RNN_packed_h_rank": ForwardCase("RNN", "python", lambda: (packed(), randn(2, 4))),
    "RNN_packed_unsorted_h_batch_too_small": ForwardCase("RNN", "aten", lambda: (
        packed((2, 5, 3), enforce_sorted=False), randn(2, 2, 4))),
}


@pytest.mark.parametrize("case_id", FORWARD_CASES)
def test_forward_error(case_id):
    case = FORWARD_CASES[case_id]
    kwargs = dict(num_layers=2, **dict(case.kwargs))
    reference = torch_module_class(case.mode)(3, 4, **kwargs)
    fast = fast_module_class(case.mode)(3, 4, **kwargs)
    fast.load_state_dict(reference.state_dict())
    args = case.make_args()
    assert_raises_like_torch(lambda: reference(*args), lambda: fast(*args), case.origin,
                             compare_message=case.origin == "python")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="device mismatch needs a CUDA device")
@pytest.mark.parametrize("mode", MODES)
def test_device_mismatch(mode):
    reference = torch_module_class(mode)(3, 4).cuda()
    fast = fast_module_class(mode)(3, 4).cuda()
    x = randn(5, 2, 3)
    assert_same_error(capture(lambda: reference(x)), capture(lambda: fast(x)), compare_message=False)


# ---- inputs torch accepts although they look wrong -------------------------------------------

LENIENT_CASES = {
    # The c0 dtype is never checked: torch computes f * c0 with type promotion (float64 module).
    "LSTM_float_c0_double_module": ("LSTM", F64, lambda: (
        randn(5, 2, 3, dtype=torch.float64), lstm_hx((2, 2, 4), (2, 2, 4), h_dtype=torch.float64))),
    # ... an integer c0 too (float64 module, any input form; float32 module with a PackedSequence,
    # whose path in torch does not go through oneDNN).
    "LSTM_int_c0_double_module": ("LSTM", F64, lambda: (
        randn(5, 2, 3, dtype=torch.float64), (randn(2, 2, 4, dtype=torch.float64), torch.randint(-3, 4, (2, 2, 4))))),
    "LSTM_int_c0_packed": ("LSTM", (), lambda: (packed(), (randn(2, 2, 4), torch.randint(-3, 4, (2, 2, 4))))),
    # Unsorted PackedSequence: hx is permuted by sorted_indices before any check, so extra
    # batch entries are dropped silently.
    "LSTM_packed_unsorted_h_batch_too_large": ("LSTM", (), lambda: (
        packed((2, 5, 3), enforce_sorted=False), lstm_hx((2, 4, 4), (2, 4, 4)))),
    "GRU_packed_unsorted_h_batch_too_large": ("GRU", (), lambda: (
        packed((2, 5, 3), enforce_sorted=False), randn(2, 4, 4))),
    "RNN_packed_unsorted_h_batch_too_large": ("RNN", (), lambda: (
        packed((2, 5, 3), enforce_sorted=False), randn(2, 4, 4))),
    "RNN_relu_packed_unsorted_h_batch_too_large": ("RNN", RELU, lambda: (
        packed((2, 5, 3), enforce_sorted=False), randn(2, 4, 4))),
}


@pytest.mark.parametrize("case_id", list(LENIENT_CASES))
def test_lenient_input_accepted_like_torch(case_id):
    mode, extra, make_args = LENIENT_CASES[case_id]
    kwargs = dict(num_layers=2, **dict(extra))
    reference = torch_module_class(mode)(3, 4, **kwargs)
    fast = fast_module_class(mode)(3, 4, **kwargs)
    fast.load_state_dict(reference.state_dict())
    args = make_args()
    expected = capture(lambda: reference(*args))
    assert expected[0] == "ok", f"torch.nn now raises {expected[1]!r}: move the case to FORWARD_CASES"
    actual = capture(lambda: fast(*args))
    assert actual[0] == "ok", f"rnnfast raised where torch.nn does not: {type(actual[1]).__name__}: {actual[1]}"
    assert_outputs_close(expected[1], actual[1])


# ---- the cells: constructor errors ---------------------------------------------------------------------------

# torch's cells validate nothing themselves: bad arguments fail in torch.empty or in the call.
CELL_CONSTRUCTOR_CASES = {
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
CELL_CONSTRUCTOR_IDS = [(name, case) for name in ("LSTMCell", "GRUCell", "RNNCell") for case in CELL_CONSTRUCTOR_CASES]
CELL_CONSTRUCTOR_IDS += [("RNNCell", case) for case in RNN_CELL_CONSTRUCTOR_CASES]


@pytest.mark.parametrize("name, case", CELL_CONSTRUCTOR_IDS, ids=[f"{n}-{c}" for n, c in CELL_CONSTRUCTOR_IDS])
def test_cell_constructor_error(name, case):
    args, kwargs = {**CELL_CONSTRUCTOR_CASES, **RNN_CELL_CONSTRUCTOR_CASES}[case]
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


def _cases_for_single_state(name: str, extra=()) -> dict:
    """The cases GRUCell and RNNCell share (one state tensor)."""
    p = name + ("_relu" if extra else "")

    def C(origin, make_args, kwargs=(), **more):
        return CellErrorCase(name, origin, make_args, kwargs=extra + kwargs, **more)

    return {
        f"{p}_input_3d": C("python", lambda: (randn(2, 2, 3),)),
        f"{p}_input_0d": C("python", lambda: (randn(()),)),
        f"{p}_hx_3d": C("python", lambda: (randn(2, 3), randn(1, 2, 4))),
        f"{p}_hx_0d": C("python", lambda: (randn(2, 3), randn(()))),
        f"{p}_input_3d_and_hx_3d": C("python", lambda: (randn(2, 2, 3), randn(1, 2, 4))),
        f"{p}_input_size": C("aten", lambda: (randn(2, 7),), replicated=True),
        f"{p}_input_size_unbatched": C("aten", lambda: (randn(7),), replicated=True),
        f"{p}_input_size_and_hx_size": C("aten", lambda: (randn(2, 7), randn(2, 5)), replicated=True),
        f"{p}_hx_batch": C("aten", lambda: (randn(2, 3), randn(3, 4)), replicated=True),
        f"{p}_hx_size": C("aten", lambda: (randn(2, 3), randn(2, 5)), replicated=True),
        f"{p}_hx_1d_input_2d": C("aten", lambda: (randn(2, 3), randn(4)), replicated=True),
        f"{p}_hx_1d_input_2d_same_batch": C("aten", lambda: (randn(4, 3), randn(4)), replicated=True),  # IndexError
        f"{p}_hx_2d_input_1d": C("aten", lambda: (randn(3), randn(1, 4)), replicated=True),
        f"{p}_hx_unbatched_size": C("aten", lambda: (randn(3), randn(5)), replicated=True),
        f"{p}_hx_2d_input_1d_hx_rows_match": C("aten", lambda: (randn(3), randn(2, 4)), replicated=True),
        f"{p}_hx_tuple": C("aten", lambda: (randn(2, 3), lstm_hx((2, 4), (2, 4)))),  # AttributeError: no .dim()
        f"{p}_double_input": C("aten", lambda: (randn(2, 3, dtype=torch.float64),)),
        f"{p}_double_input_and_hx": C("aten", lambda: (randn(2, 3, dtype=torch.float64), randn(2, 4, dtype=torch.float64))),
        f"{p}_double_hx": C("aten", lambda: (randn(2, 3), randn(2, 4, dtype=torch.float64))),
        f"{p}_float_input_double_module": C("aten", lambda: (randn(2, 3),), kwargs=F64),
        f"{p}_float_hx_double_module": C("aten", lambda: (randn(2, 3, dtype=torch.float64), randn(2, 4)), kwargs=F64),
        f"{p}_int_input": C("aten", lambda: (torch.randint(-3, 3, (2, 3)),)),
        f"{p}_half_input": C("aten", lambda: (randn(2, 3, dtype=torch.float16),)),
    }


CELL_ERROR_CASES = {
    **_cases_for_single_state("GRUCell"),
    **_cases_for_single_state("RNNCell"),
    **_cases_for_single_state("RNNCell", RELU),
    # LSTMCell: the (h, c) pair
    "LSTMCell_input_3d": CellErrorCase("LSTMCell", "python", lambda: (randn(2, 2, 3),)),
    "LSTMCell_input_0d": CellErrorCase("LSTMCell", "python", lambda: (randn(()),)),
    "LSTMCell_h_3d": CellErrorCase("LSTMCell", "python", lambda: (randn(2, 3), lstm_hx((1, 2, 4), (2, 4)))),
    "LSTMCell_c_3d": CellErrorCase("LSTMCell", "python", lambda: (randn(2, 3), lstm_hx((2, 4), (1, 2, 4)))),
    "LSTMCell_c_0d": CellErrorCase("LSTMCell", "python", lambda: (randn(2, 3), (randn(2, 4), randn(())))),
    "LSTMCell_third_state_3d": CellErrorCase("LSTMCell", "python", lambda: (randn(2, 3), (randn(2, 4), randn(2, 4), randn(1, 1, 4)))),
    "LSTMCell_input_size": CellErrorCase("LSTMCell", "aten", lambda: (randn(2, 7),), replicated=True),
    "LSTMCell_input_size_unbatched": CellErrorCase("LSTMCell", "aten", lambda: (randn(7), lstm_hx((4,), (4,))), replicated=True),
    "LSTMCell_h_batch": CellErrorCase("LSTMCell", "aten", lambda: (randn(2, 3), lstm_hx((3, 4), (2, 4))), replicated=True),
    "LSTMCell_h_size": CellErrorCase("LSTMCell", "aten", lambda: (randn(2, 3), lstm_hx((2, 5), (2, 4))), replicated=True),
    "LSTMCell_c_batch": CellErrorCase("LSTMCell", "aten", lambda: (randn(2, 3), lstm_hx((2, 4), (3, 4))), replicated=True),
    "LSTMCell_c_size": CellErrorCase("LSTMCell", "aten", lambda: (randn(2, 3), lstm_hx((2, 4), (2, 5))), replicated=True),
    "LSTMCell_c_unbatched_size": CellErrorCase("LSTMCell", "aten", lambda: (randn(3), lstm_hx((4,), (5,))), replicated=True),
    "LSTMCell_h_1d_input_2d": CellErrorCase("LSTMCell", "aten", lambda: (randn(2, 3), lstm_hx((4,), (2, 4))), replicated=True),
    "LSTMCell_c_1d_input_2d_same_batch": CellErrorCase("LSTMCell", "aten", lambda: (randn(4, 3), lstm_hx((4, 4), (4,))),
                                                       replicated=True),  # IndexError
    "LSTMCell_h_2d_input_1d": CellErrorCase("LSTMCell", "aten", lambda: (randn(3), lstm_hx((1, 4), (4,))), replicated=True),
    "LSTMCell_hx_2d_square_input_1d": CellErrorCase("LSTMCell", "aten", lambda: (randn(3), lstm_hx((4, 4), (4, 4)))),
    "GRUCell_hx_2d_square_input_1d": CellErrorCase("GRUCell", "aten", lambda: (randn(3), randn(4, 4))),
    "LSTMCell_hx_three_states": CellErrorCase("LSTMCell", "aten", lambda: (randn(2, 3), (randn(2, 4), randn(2, 4), randn(2, 4))),
                                              replicated=True),
    "LSTMCell_hx_one_state": CellErrorCase("LSTMCell", "aten", lambda: (randn(2, 3), (randn(2, 4),)), replicated=True),
    "LSTMCell_hx_empty_tuple": CellErrorCase("LSTMCell", "aten", lambda: (randn(2, 3), ()), replicated=True),
    "LSTMCell_hx_one_state_unbatched": CellErrorCase("LSTMCell", "aten", lambda: (randn(3), (randn(4),))),  # IndexError
    "LSTMCell_hx_a_tensor": CellErrorCase("LSTMCell", "aten", lambda: (randn(2, 3), randn(2, 2, 4))),  # TypeError
    "LSTMCell_hx_none_in_tuple": CellErrorCase("LSTMCell", "aten", lambda: (randn(2, 3), (randn(2, 4), None))),
    "LSTMCell_double_input": CellErrorCase("LSTMCell", "aten", lambda: (randn(2, 3, dtype=torch.float64),)),
    "LSTMCell_double_h": CellErrorCase("LSTMCell", "aten", lambda: (randn(2, 3), lstm_hx((2, 4), (2, 4), h_dtype=torch.float64))),
    "LSTMCell_float_input_double_module": CellErrorCase("LSTMCell", "aten", lambda: (randn(2, 3),), kwargs=F64),
    "LSTMCell_float_h_double_module": CellErrorCase("LSTMCell", "aten", lambda: (
        randn(2, 3, dtype=torch.float64), lstm_hx((2, 4), (2, 4), c_dtype=torch.float64)), kwargs=F64),
    "LSTMCell_int_input": CellErrorCase("LSTMCell", "aten", lambda: (torch.randint(-3, 3, (2, 3)),)),
    "LSTMCell_half_input": CellErrorCase("LSTMCell", "aten", lambda: (randn(2, 3, dtype=torch.float16),)),
    # RNNCell's nonlinearity set to an unknown value after construction: torch checks the ranks of
    # input and hx first, then the nonlinearity, and never reaches ATen's size checks.
    "RNNCell_unknown_nonlinearity": CellErrorCase("RNNCell", "python", lambda: (randn(2, 3),), nonlinearity_after="gelu"),
    "RNNCell_unknown_nonlinearity_unbatched": CellErrorCase("RNNCell", "python", lambda: (randn(3), randn(4)),
                                                            nonlinearity_after="Tanh"),
    "RNNCell_unknown_nonlinearity_and_input_size": CellErrorCase("RNNCell", "python", lambda: (randn(2, 7),),
                                                                 nonlinearity_after="sigmoid"),
    "RNNCell_unknown_nonlinearity_in_constructor": CellErrorCase("RNNCell", "python", lambda: (randn(2, 3), randn(2, 4)),
                                                                 kwargs=(("nonlinearity", "gelu"),)),
    "RNNCell_unknown_nonlinearity_and_input_3d": CellErrorCase("RNNCell", "python", lambda: (randn(2, 2, 3),),
                                                               nonlinearity_after="gelu"),
    "RNNCell_unknown_nonlinearity_and_hx_3d": CellErrorCase("RNNCell", "python", lambda: (randn(2, 3), randn(1, 2, 4)),
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
    assert_raises_like_torch(lambda: reference(*args), lambda: fast(*args), case.origin,
                             compare_message=case.origin == "python" or case.replicated)


# ---- inputs torch accepts although they look wrong -------------------------------------------

CELL_LENIENT_CASES = {
    # hx as a list, or (unbatched input) as one [2, H] tensor: torch.nn.LSTMCell indexes hx[0], hx[1].
    "LSTMCell_hx_list": ("LSTMCell", lambda: (randn(2, 3), [randn(2, 4), randn(2, 4)])),
    "LSTMCell_hx_stacked_tensor_unbatched": ("LSTMCell", lambda: (randn(3), randn(2, 4))),
    # Unbatched input with a 3-tuple hx: torch.nn.LSTMCell uses hx[0], hx[1] and drops the third.
    "LSTMCell_hx_three_states_unbatched": ("LSTMCell", lambda: (randn(3), (randn(4), randn(4), randn(4)))),
    # A float32 cx with a float64 module: torch promotes f * cx.
    "LSTMCell_float_c_double_module": ("LSTMCell", lambda: (randn(2, 3, dtype=torch.float64),
                                                            lstm_hx((2, 4), (2, 4), h_dtype=torch.float64))),
}
@pytest.mark.parametrize("case_id", list(CELL_LENIENT_CASES))
def test_cell_lenient_input_accepted_like_torch(case_id):
    name, make_args = CELL_LENIENT_CASES[case_id]
    dtype = torch.float64 if "double_module" in case_id else torch.float32
    reference, fast = Case(name, input_size=3, hidden_size=4, dtype=dtype).build_pair()
    args = make_args()
    expected = capture(lambda: reference(*args))
    assert expected[0] == "ok", f"torch.nn now raises {expected[1]!r}: move the case to CELL_ERROR_CASES"
    actual = capture(lambda: fast(*args))
    assert actual[0] == "ok", f"rnnfast raised where torch.nn does not: {type(actual[1]).__name__}: {actual[1]}"
    assert_outputs_close(expected[1], actual[1], CELL_OUTPUT_NAMES)


# ---- documented divergences -----------------------------------------------------------------------


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_cell_square_2d_hx_with_1d_input_is_refused(nonlinearity):
    """Unbatched input with a 2-D [H, H] hx: torch.nn.RNNCell unsqueezes both, ATen's checks
    (batch 1 == 1, hx.size(1) == H) pass on the 3-D hx, and broadcasting returns an [H, H] result:
    the input applied to each row of hx as a batch.  torch's LSTMCell / GRUCell fail on the same
    call (see the error cases).  rnnfast refuses it with a RuntimeError rather than copy a shape
    rule that torch has by accident."""
    reference, fast = Case("RNNCell", nonlinearity=nonlinearity, input_size=3, hidden_size=4).build_pair()
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
        assert fast._common_step(x, [state]) is None  # hx of the wrong type: torch.nn's checks raise
        assert fast._common_step(x.to("meta"), state) is None  # device
        other = h.to(torch.float16 if dtype == torch.float32 else torch.float32)
        assert fast._common_step(x, (other, hx[1]) if kind == "LSTMCell" else other) is None  # state dtype
        assert fast._common_step(x, (h[:, :6], hx[1]) if kind == "LSTMCell" else h[:, :6]) is None  # state size
        if kind == "LSTMCell":
            assert fast._common_step(x, (h, hx[1].to("meta"))) is None
            assert fast._common_step(x, (h.to("meta"), hx[1])) is None
            assert fast._common_step(x, (h, hx[1][:1] if batch > 1 else hx[1][:, :6])) is None
            assert fast._common_step(x, [h, hx[1]]) is None  # a list: torch.nn's parser decides
            # A cell state of another dtype: the full checks promote it as torch does.
            assert fast._common_step(x, (h, hx[1].to(torch.float16 if dtype == torch.float32 else torch.float32))) is None
        else:
            assert fast._common_step(x, h.to("meta")) is None
        assert fast._common_step(x[:0], (h[:0], hx[1][:0]) if kind == "LSTMCell" else h[:0]) is None  # batch 0
        on_meta = getattr(rnnfast, kind)(5, 7, bias=bias, dtype=dtype, device="meta")
        assert on_meta._common_step(x, hx) is None  # weights on another device
        no_hidden = getattr(rnnfast, kind)(5, 0, bias=bias, dtype=dtype)
        empty = torch.randn(batch, 0, dtype=dtype)
        assert no_hidden._common_step(x, (empty, empty) if kind == "LSTMCell" else empty) is None  # hidden_size 0
        torch.nn.utils.parametrize.register_parametrization(fast, "weight_hh", _Identity())
        assert fast._common_step(x, hx) is None  # a weight moved out of _parameters


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_own_initial_states_keep_a_subclass_check(mode):
    """With hx=None a layer checks only the input where its hidden checks are torch.nn's (the zero
    states it makes pass them); a subclass that overrides one still has it called, as torch.nn does."""
    calls = []

    class Checked(getattr(rnnfast, mode)):
        def check_hidden_size(self, hx, expected_hidden_size, msg="Expected hidden size {}, got {}"):
            calls.append(tuple(expected_hidden_size))
            return super().check_hidden_size(hx, expected_hidden_size, msg)

    Checked(4, 5)(torch.randn(3, 2, 4))
    assert calls and calls[0] == (1, 2, 5)


class _Identity(torch.nn.Module):
    def forward(self, w):
        return w
