"""rnnfast.backend() and the behaviour without a compiled extension."""

import subprocess
import sys
import textwrap

import torch

import rnnfast


def test_backend_reports_the_build():
    info = rnnfast.backend()
    assert info["compiled"] is True and info["error"] is None
    assert info["version"] == rnnfast.__version__
    assert info["torch_version"] == torch.__version__
    # Built against the torch it runs with (local version suffix aside).
    assert torch.__version__.split("+")[0] == info["built_with_torch"]
    assert info["cpu_capability"] in info["cpu_capabilities"]
    assert "default" in info["cpu_capabilities"]
    assert info["openmp"] is True
    assert info["cuda"] is False and info["cuda_arches"] == []


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
