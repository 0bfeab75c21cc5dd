"""rnnfast.backend() and the behaviour without a compiled extension."""

import io
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest
import torch

import rnnfast
from build_kind import PYTHON_AUTOGRAD, STABLE_ABI


def test_backend_reports_the_build():
    info = rnnfast.backend()
    assert info["compiled"] is True and info["error"] is None
    assert info["version"] == rnnfast.__version__
    assert info["torch_version"] == torch.__version__
    if info["stable_abi"]:
        # On the stable ABI the library loads in any torch from 2.11 on, whichever it was built with.
        assert tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 11)
    else:
        # Built against the torch it runs with (local version suffix aside).
        assert torch.__version__.split("+")[0] == info["built_with_torch"]
    # CI states which build it made (RNNFAST_EXPECT_STABLE_ABI=0/1), as for CUDA below.
    expected_stable = os.environ.get("RNNFAST_EXPECT_STABLE_ABI")
    if expected_stable is not None:
        assert info["stable_abi"] is (expected_stable == "1"), (expected_stable, info)
    assert info["cpu_capability"] in info["cpu_capabilities"]
    assert "default" in info["cpu_capabilities"]
    assert info["openmp"] is True
    # A build with CUDA names its arches and CUDA version; a CPU build names none.
    if info["cuda"]:
        assert info["cuda_arches"] and info["cuda_version"], info
    else:
        assert info["cuda_arches"] == [] and info["cuda_version"] is None, info
    # The CUDA library is loaded exactly where it was built and torch is a CUDA build of its CUDA
    # major (the wheel, built against a CUDA torch, also installs beside CPU-only torches); its
    # kernels are registered exactly when it is loaded, and backend() says why not otherwise.
    same_major = (torch.version.cuda is not None and info["cuda"]
                  and torch.version.cuda.split(".")[0] == info["cuda_version"].split(".")[0])
    assert info["cuda_loaded"] is bool(same_major), info
    assert (info["cuda_error"] is None) is info["cuda_loaded"], info
    if not info["cuda"]:
        assert info["cuda_error"] == "this build of rnnfast has no CUDA kernels", info
    elif torch.version.cuda is None:
        assert info["cuda_error"] == f"torch {torch.__version__} is a CPU-only build", info
    for op in ("layer_forward", "layer_forward_train", "layer_backward"):
        registered = torch._C._dispatch_has_kernel_for_dispatch_key(f"rnnfast::{op}", "CUDA")
        assert registered is info["cuda_loaded"], (op, info)
    # CI states which build it made (RNNFAST_EXPECT_CUDA=0/1): a build that silently dropped
    # (or gained) the CUDA kernels fails here.
    expected = os.environ.get("RNNFAST_EXPECT_CUDA")
    if expected is not None:
        assert info["cuda"] is (expected == "1"), (expected, info)


def test_backend_names_the_autograd_in_use():
    """The operators' autograd: csrc/autograd.cpp's, or rnnfast/_autograd.py's (the stable-ABI
    build's, what CI's wheel step runs the autograd suites with, and under RNNFAST_AUTOGRAD=python). The
    graph node is a Python one exactly when backend() says "python"."""
    expected = "python" if PYTHON_AUTOGRAD else "c++"
    assert rnnfast.backend()["autograd"] == expected
    x = torch.randn(2, 1, 3, requires_grad=True)
    y, _ = rnnfast.LSTM(3, 4)(x)
    node = y.grad_fn.next_functions[0][0]  # through the module's view of the rows
    assert node.name() == "rnnfast::LayerForwardBackward"
    assert isinstance(node, torch.autograd.function.BackwardCFunction) is (expected == "python")


@pytest.mark.skipif(STABLE_ABI, reason="the stable-ABI build has no C++ autograd to compare with")
def test_python_autograd_gives_the_cpp_autograds_gradients():
    """The same fused kernels under either autograd, each in its own process: bit-identical
    first-order gradients, through the plain backward (the Python autograd's direct path to the
    kernel) and under create_graph; second-order ones equal to rounding (both differentiate the
    reference equations). LSTM with a projection on an unsorted packed batch whose input needs no
    gradient (only the states and weights do), and a 2-layer bidirectional GRU."""
    script = textwrap.dedent("""
        import sys, torch, rnnfast
        from torch.nn.utils.rnn import pack_padded_sequence
        torch.manual_seed(0)
        lstm = rnnfast.LSTM(3, 5, proj_size=2).double()
        x = torch.randn(4, 3, 3, dtype=torch.float64)
        packed = pack_padded_sequence(x, torch.tensor([2, 4, 3]), enforce_sorted=False)
        h0 = torch.randn(1, 3, 2, dtype=torch.float64, requires_grad=True)
        c0 = torch.randn(1, 3, 5, dtype=torch.float64, requires_grad=True)
        y, (h, c) = lstm(packed, (h0, c0))
        (y.data * torch.randn_like(y.data)).sum().add((c * torch.randn_like(c)).sum()).backward()
        plain = [h0.grad, c0.grad, *[p.grad for p in lstm.parameters()]]

        gru = rnnfast.GRU(3, 5, num_layers=2, bidirectional=True).double()
        x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
        y, h = gru(x)
        loss = (y * torch.randn_like(y)).sum() + (h * torch.randn_like(h)).sum()
        first = torch.autograd.grad(loss, [x, *gru.parameters()], create_graph=True)
        second = torch.autograd.grad(sum((g * g).sum() for g in first), [x, *gru.parameters()])
        torch.save([rnnfast.backend()["autograd"], plain, first, second], sys.argv[1])
    """)
    results = {}
    for kind in ("c++", "python"):
        env = {k: v for k, v in os.environ.items() if k != "RNNFAST_AUTOGRAD"}
        if kind == "python":
            env["RNNFAST_AUTOGRAD"] = "python"
        with tempfile.NamedTemporaryFile(suffix=".pt") as f:
            subprocess.run([sys.executable, "-c", script, f.name], env=env, check=True, timeout=300)
            results[kind] = torch.load(f.name)
    assert [r[0] for r in results.values()] == ["c++", "python"]
    for a, b in zip([*results["c++"][1], *results["c++"][2]], [*results["python"][1], *results["python"][2]], strict=True):
        assert torch.equal(a.detach(), b.detach())
    for a, b in zip(results["c++"][3], results["python"][3], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_missing_extension_is_loud():
    # A fresh interpreter in which importing rnnfast._C fails.
    script = textwrap.dedent(
        """
        import sys, warnings
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "rnnfast._C":
                    raise ImportError("simulated: no compiled extension")
        sys.meta_path.insert(0, Block())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import rnnfast
        assert any("could not be loaded" in str(w.message) for w in caught), caught
        info = rnnfast.backend()
        assert info["compiled"] is False and "simulated" in info["error"], info
        import torch
        # The reference equations stay usable without the extension.
        h = rnnfast.reference.gru_cell(torch.randn(2, 3), torch.randn(2, 4), torch.randn(12, 3),
                                       torch.randn(12, 4))
        assert h.shape == (2, 4), h.shape
        try:
            rnnfast.LSTM(3, 4)
        except RuntimeError as e:
            assert "pip install --no-build-isolation" in str(e), e
        else:
            raise AssertionError("rnnfast.LSTM built without its extension")
        print("OK")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("OK")


def test_activation_buffer_pool():
    # Saved activations of a training step come from a pool that keeps freed
    # buffers for the next step; results stay right when buffers are reused for
    # other shapes, and empty_cache() releases everything.
    rnnfast.empty_cache()
    assert rnnfast.cached_bytes() == 0
    torch.manual_seed(0)
    for T, H in [(600, 128), (300, 96), (600, 128)]:  # gates of 600x16x512 floats: 19.7 MB
        ref = torch.nn.LSTM(8, H)
        fast = rnnfast.LSTM(8, H)
        fast.load_state_dict(ref.state_dict())
        x = torch.randn(T, 16, 8, requires_grad=True)
        for module in (ref, fast):
            out, _ = module(x)
            out.pow(2).sum().backward()
        torch.testing.assert_close(fast.weight_hh_l0.grad, ref.weight_hh_l0.grad, rtol=1e-4, atol=1e-4)
    assert rnnfast.cached_bytes() > 0
    rnnfast.empty_cache()
    assert rnnfast.cached_bytes() == 0


def test_pooled_outputs_behave_like_torch_tensors():
    # Layer outputs and input gradients come from the pool too (> 1 MB here):
    # they must stay ordinary tensors for the user: resizable, savable,
    # shareable, and handed back to the pool only when the user drops them.
    torch.manual_seed(0)
    fast = rnnfast.LSTM(64, 256)
    x = torch.randn(50, 40, 64, requires_grad=True)
    y, _ = fast(x)  # 50*40*256 floats: 2 MB
    y.sum().backward()
    assert y.untyped_storage().nbytes() >= 2**20
    kept = y.detach().clone()
    rnnfast.empty_cache()
    y2, _ = fast(torch.randn(50, 40, 64))  # must not reuse y's block: y is alive
    assert torch.equal(y.detach(), kept)
    buf = io.BytesIO()
    torch.save(y.detach(), buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf), kept)
    grown = y.detach()
    if STABLE_ABI:
        # The stable ABI wraps a pooled block with from_blob: growing raises, shrinking works.
        with pytest.raises(RuntimeError, match="not resizable"):
            grown.resize_(100, 40, 256)
        grown.resize_(25, 40, 256)
        assert torch.equal(grown, kept[:25])
    else:
        grown.resize_(100, 40, 256)  # storage must be resizable like at::empty's
        assert torch.equal(grown[:50], kept)
    shared = y2.detach()  # a pooled output itself
    values = shared.clone()
    shared.share_memory_()
    assert torch.equal(shared, values)
    del y, y2, grown
    assert rnnfast.cached_bytes() > 0
    rnnfast.empty_cache()


def test_pool_can_be_disabled():
    script = textwrap.dedent(
        """
        import torch, rnnfast
        m = rnnfast.LSTM(8, 128)
        out, _ = m(torch.randn(600, 16, 8, requires_grad=True))
        out.sum().backward()
        print(rnnfast.cached_bytes())
        """
    )
    env = dict(os.environ, RNNFAST_POOL_BYTES="0")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def test_tracing_and_device_modes_do_not_poison_later_calls():
    # rnnfast caches the batch_sizes of padded input per (T, B); a call made
    # under a default-device context or a FakeTensorMode must neither fail
    # later calls of the same shape nor use anything but a CPU tensor.
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch.manual_seed(0)
    ref = torch.nn.GRU(8, 16)
    fast = rnnfast.GRU(8, 16)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 8)
    with torch.device("meta"):  # torch.nn runs CPU input on the CPU here; so does rnnfast
        torch.testing.assert_close(fast(x)[0], ref(x)[0])
    x5 = torch.randn(5, 6, 8)
    with FakeTensorMode(allow_non_fake_inputs=True):
        try:
            fast(x5)
        except Exception:
            pass  # the extension cannot run on fake tensors; only the aftermath matters
    torch.testing.assert_close(fast(x5)[0], ref(x5)[0])
