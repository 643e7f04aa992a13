"""Test-wide setup.

Triton kernels run on CPU through the Triton interpreter, which must be chosen before triton is
imported; the GPU suite (tests/gpu, run with STATEX_GPU_TESTS=1 on a CUDA machine) runs them natively.
"""

import os

if os.environ.get("STATEX_GPU_TESTS") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Subprocesses (`python -m statex_hf.cli ...`) run from the repository root, whose top-level kernels/ folder
# would shadow the PyPI package `kernels` that transformers imports: keep the working directory off sys.path.
os.environ["PYTHONSAFEPATH"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

# The GPU suite is not collected on CPU runs at all (rather than reported as skipped).
collect_ignore_glob = [] if os.environ.get("STATEX_GPU_TESTS") == "1" else ["gpu/*"]


@pytest.fixture(autouse=True, scope="session")
def triton_autotuner_without_benchmarks():
    """Under the interpreter there is no GPU to time configs on: give every config the same timing."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    from triton.runtime import autotuner

    original = autotuner.Autotuner.do_bench
    # `do_bench` is a property that returns the timing function; every config then times the same.
    autotuner.Autotuner.do_bench = property(lambda self: lambda kernel_call, quantiles=None, **kw: [1.0, 1.0, 1.0])
    yield
    autotuner.Autotuner.do_bench = original


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def norms_apart(monkeypatch):
    """A block's norms and residual adds at one row as before they went into its sublayers' products
    (``kernels/linear/row_norm.py``): the add + norm kernel and the residual stream's kernels, which the tests that
    use this look at (``pytestmark = pytest.mark.usefixtures("norms_apart")``)."""
    from statex_hf.modeling.gla import modeling_statex_gla
    from statex_hf.modeling.mamba2 import modeling_statex_mamba2

    for module in (modeling_statex_gla, modeling_statex_mamba2):
        monkeypatch.setattr(module, "norms_go_into_products", lambda *args: False)


@pytest.fixture
def on_cuda_dispatch(monkeypatch):
    """``kernels/dispatch.py`` as on a GPU (every tensor counts as CUDA), the kernels under the interpreter."""
    from statex_hf.kernels import dispatch

    monkeypatch.setattr(dispatch, "use_triton", lambda *tensors: True)


@pytest.fixture
def narrow_row_tiles(monkeypatch):
    """The one-row products (GEMV, grouped GEMV, SwiGLU GEMV) in 32 x 32 tiles, not the table's 2 x 1024 or 8 x 1024:
    the same kernels and paths in a tiny model's shapes, in a fraction of the interpreter's time (it pays per program
    and per element of a tile, and a 1024-column tile over a 32-column row is mostly mask). All three take the same
    tiles, so the fused kernels still sum as the separate GEMV does. For tests of what a decode step launches and
    computes; the table's tiles have their own tests (``test_gemv_kernel.py``, ``test_gemv_group.py``,
    ``test_decode_linear.py``)."""
    from statex_hf.kernels import launch
    from statex_hf.kernels.launch import LaunchConfig

    for name in ("linear.gemv", "linear.gemv_group", "linear.gemv_swiglu"):
        monkeypatch.setitem(launch.OVERRIDES, name, LaunchConfig.of(2, 1, BM=1, BN=32, BK=32, SPLIT_K=1))


@pytest.fixture(params=["table", "small-tiles"])
def norm_tiles(request, monkeypatch):
    """The norm kernels' tiles from their table, or small ones: 2 rows a block (the last one masked) and a row
    walked in chunks of 16 channels (the wide-row path). The add + norm kernel takes the norm's."""
    if request.param == "small-tiles":
        from statex_hf.kernels import launch
        from statex_hf.kernels.launch import LaunchConfig

        monkeypatch.setitem(launch.OVERRIDES, "norm.fwd", LaunchConfig.of(1, 1, BM=2, BS=16))
