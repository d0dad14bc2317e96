"""Test setup: float64 for the parity tests, 8 host CPU devices for the sharding tests.

Both must be set before JAX initialises its backend, hence here. Solver tests that are not
about sharding pass a one-device mesh so that they do not pay for eight.

Compiling is most of the suite's time (2026-12-01: 1265 s of XLA compiles and 460 s of
tracing and lowering in 2372 s of tests), in programs that are mostly distinct. The session
shares one persistent compilation cache (``compilation_cache``) for those that are not.
Cheaper XLA:CPU settings for the whole suite were measured and left: LLVM without its
expensive passes compiles to the same bits but no faster, level 1 changes float64 results by
up to 1e-10 (experiments/compile_levels.py; BENCHMARKS.md, "What was tried").
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import gc  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "biggan_pytorch"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reverse-order",
        action="store_true",
        help="run the collected tests in reverse order (the order-independence check, .ci/orders)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cheap_compiles: compile this test's programs with jax_disable_most_optimizations "
        "(for tests that compile much and run few steps; tests/_compiling.py)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--reverse-order"):
        items.reverse()


@pytest.fixture(scope="module", autouse=True)
def release_compiled_programs():
    """Each test module ends by dropping the programs it compiled. A process that keeps every
    module's programs (one xdist worker, or a serial run) ran out of memory for XLA:CPU's
    JIT code late in the suite ("LLVM compilation error: Cannot allocate memory", then an
    abort), with most of the machine's memory free."""
    yield
    jax.clear_caches()
    gc.collect()


def _session_cache(tmp_path_factory, cheap: bool):
    from tests._compiling import fast_compiles, session_cache_dir

    path = session_cache_dir(tmp_path_factory)
    with fast_compiles(path, cheap=cheap), pytest.MonkeyPatch.context() as patch:
        patch.setenv("DGP_JAX_CACHE", str(path))  # read by the CLI and its subprocesses
        yield path


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """The session's persistent compilation cache, for every test: shared by both xdist
    workers and every CLI subprocess, so a program compiles once per session (2026-12-01:
    1195 of 3462 compiles were hits, 90 s of compile time by JAX's count; the suite's time
    changed within its spread between runs). Until the session ends, JAX's cache and
    DGP_JAX_CACHE name that folder; yields its path."""
    yield from _session_cache(tmp_path_factory, cheap=False)


@pytest.fixture(scope="module")
def cheap_compilation_cache(tmp_path_factory):
    """The session's cache and cheap XLA compiles (tests/_compiling.py) for the whole
    module, its module fixtures included: for modules that compile much and run few
    steps (measured per module: the others lose more at run time than they gain)."""
    yield from _session_cache(tmp_path_factory, cheap=True)


@pytest.fixture(autouse=True)
def cheap_compiles_when_marked(request):
    if request.node.get_closest_marker("cheap_compiles") is None:
        yield
        return
    from tests._compiling import fast_compiles

    with fast_compiles(None):
        yield


def load_experiment(name: str):
    """experiments/<name>.py as a module (the experiments folder is not a package)."""
    import importlib.util

    folder = Path(__file__).resolve().parents[1] / "experiments"
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    # As when it runs as `python experiments/<name>.py`: its folder is on sys.path, for
    # the experiments it imports.
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module


def fixture_path(name: str) -> Path:
    path = FIXTURES / name
    if not path.exists():
        raise FileNotFoundError(
            f"reference fixture {path} is missing: tests read ../shared beside the repository"
        )
    return path


@pytest.fixture(scope="session")
def one_device_mesh() -> Mesh:
    return Mesh(np.array(jax.devices()[:1]), ("data",))


_MODELS: dict = {}


def reference_model(resolution: int, dtype=jnp.float64):
    """The fixture BigGAN (G_ch = D_ch = 8) loaded from its released-format .pth files."""
    import dgp_jax

    key = (resolution, jnp.dtype(dtype).name)
    if key not in _MODELS:
        _MODELS[key] = dgp_jax.load_biggan(
            fixture_path(f"G_ema_{resolution}_ch8_f64.pth"),
            fixture_path(f"D_{resolution}_ch8_f64.pth"),
            dtype=dtype,
        )
    return _MODELS[key]
