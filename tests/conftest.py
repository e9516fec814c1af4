"""Shared fixtures: tiny SE networks built in code, and the real data in ../shared.

Tiny nets (random weights, CPU, milliseconds per forward):

- ``tiny_seresnet``: a paper-style SE-ResNet. Each residual block applies timm's ``SEModule`` to the residual
  branch *before* the addition with the shortcut (Hu et al., Fig. 3). 64x64 input, stem at stride 4, four stages
  at strides 4/8/16/32 (paper stages 2..5) with 1, 2, 2, 2 blocks, 10 classes.
- ``tiny_custom``: a user's own SE class (``ChannelGate``: pool -> Linear C->C/r -> ReLU -> Linear -> Sigmoid,
  multiply the input), unknown to timm/torchvision, so discovery must find it structurally.
- ``tiny_decoy``: one real SE block plus a spatial sigmoid attention (gate N x 1 x H x W) that looks like an SE
  module by its layers; discovery must reject it with a reason.

Prerequisites (the shared folder ../shared, tracked assets, Chromium, Playwright) go through :func:`require` (or
its mark form :func:`requires`): a missing one skips the test on a developer's machine and fails it under CI
(``CI`` set to true), where everything must be there.

Isolation: the test session runs with a fresh temporary HOME, so a developer's caches cannot change outcomes: the
weights download cache (``$SENET_VIZ_CACHE``, else ``~/.cache/senet_viz/weights``, see
:func:`senet_viz.models.download.download_dir`), the Fashion-MNIST download cache, the Hugging Face and torch hub
caches, and ``$SENET_VIZ_WEIGHTS_DIR`` / ``$SENET_VIZ_FMNIST_DIR`` (unset). The embedded model is still found: it
ships in assets/, which :func:`senet_viz.models.download.local_weights_file` reads whatever the cache. The variables
are set here, at import, before torch, timm (huggingface_hub) and senet_viz read them into module constants, and
subprocesses (the CLI, streamlit servers) inherit them; the ``isolated_home`` fixture checks them, and the folder is
removed when the session ends.
"""

from __future__ import annotations

import os
import tempfile

os.environ["HOME"] = tempfile.mkdtemp(prefix="senet-viz-tests-home-")
os.environ["XDG_CACHE_HOME"] = os.path.join(os.environ["HOME"], ".cache")
os.environ["SENET_VIZ_CACHE"] = os.path.join(os.environ["XDG_CACHE_HOME"], "senet_viz")
os.environ.pop("SENET_VIZ_WEIGHTS_DIR", None)
os.environ.pop("SENET_VIZ_FMNIST_DIR", None)
os.environ.pop("HF_HOME", None)
os.environ.pop("HF_HUB_CACHE", None)
os.environ.pop("HUGGINGFACE_HUB_CACHE", None)
os.environ.pop("TORCH_HOME", None)

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

    from senet_viz.models.loaded import LoadedModel

# A pytest-xdist worker (`make test`) computes on one thread: the workers already fill the cores, and torch's
# intra-op threads on an oversubscribed CPU spin-wait for each other (tests ran up to 100 times slower). The
# controller process imports no torch (nor timm: the tiny nets live in tests/tiny_nets.py).
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REPO_ROOT = Path(__file__).resolve().parents[1]
TFLITE_FILE = SHARED / "models" / "mobilenet_v3_small_224_1.0_uint8.tflite"
IMAGENET_SAMPLES = SHARED / "data" / "imagenet-samples"
TINY_CLASSES = [f"class_{i}" for i in range(10)]
TEST_HOME = Path(os.environ["HOME"])
CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# ------------------------------------------------------------------------------------------ prerequisites


def require(ok: object, what: str) -> None:
    """A test's prerequisite ``what`` (a file, folder or tool, and how to get it) must hold: skip the test when it
    does not, but fail it under CI, where a missing prerequisite is a broken checkout or machine, not an option."""
    if ok:
        return
    if CI:
        pytest.fail(f"missing prerequisite under CI (CI={os.environ.get('CI')!r}): {what}", pytrace=False)
    pytest.skip(f"missing prerequisite: {what}")


def requires(ok: object, what: str) -> pytest.MarkDecorator:
    """:func:`require` as a mark (``pytestmark = requires(...)`` or a decorator), checked as each test is set up."""
    return pytest.mark.requires(ok=bool(ok), what=what)


@pytest.hookimpl(tryfirst=True)  # before any fixture of the test is set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires"):
        require(mark.kwargs["ok"], mark.kwargs["what"])


def embedded_model_ready(name: str = "se_resnet_fmnist") -> bool:
    """The embedded model's weights (assets/<name>.safetensors) and its samples (assets/fmnist_samples/)."""
    import senet_viz.models.zoo  # noqa: F401  (registers every model: the registry itself knows none)
    from senet_viz.models import download

    return download.weights_status(name) == "file" and (REPO_ROOT / "assets" / "fmnist_samples").is_dir()


EMBEDDED_MISSING = ("the embedded model and samples, tracked in assets/ (se_resnet_fmnist.safetensors, "
                    "fmnist_samples/): restore them with `git checkout assets/` or `python -m senet_viz train`")


@pytest.fixture(scope="session", autouse=True)
def isolated_home() -> Path:
    """The temporary HOME of the session (see the module doc), checked before any test runs."""
    from senet_viz.models import download
    assert Path(os.environ["HOME"]) == TEST_HOME and download.download_dir().is_relative_to(TEST_HOME)
    return TEST_HOME


# ------------------------------------------------------------------------------------------- parallel runs


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: without the plugin, never called
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`make test` (``-n 2 --dist loadfile``): each module goes to one worker whole, so its module-scoped fixtures (a
    torchrun launch, Streamlit servers, an extract) run once; the browser modules (tests/test_browser*.py) go to one
    worker together, one after the other: each of their tests runs a Streamlit server and Chromium beside it, and two
    such tests at once on two cores starve each other."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class BrowserModulesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = module_of(nodeid)
            return "browser" if Path(module).name.startswith("test_browser") else module

    return BrowserModulesTogether(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist the work is handed out in collection order (the Makefile passes --no-loadscope-reorder):
    the longest first, the browser modules and then the torchrun ones, so that the other worker fills in around them
    with the short ones."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return

    def rank(item: pytest.Item) -> int:
        return 0 if item.get_closest_marker("browser") else 1 if item.get_closest_marker("torchrun") else 2

    modules: dict[str, int] = {}  # a module ranks as its highest-ranked test: it moves in one piece
    for item in items:
        modules[module_of(item.nodeid)] = min(modules.get(module_of(item.nodeid), 2), rank(item))
    items.sort(key=lambda item: modules[module_of(item.nodeid)])  # stable: the rest keeps its order


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(TEST_HOME, ignore_errors=True)  # the session's temporary HOME, whatever ran or failed


# ------------------------------------------------------------------------------------------------ fixtures


def _tiny_loaded(make: str, name: str, size: int) -> LoadedModel:
    import tiny_nets

    from senet_viz.models.loaded import LoadedModel

    return LoadedModel.from_module(getattr(tiny_nets, make)(), name, TINY_CLASSES, input_size=(3, size, size))


@pytest.fixture
def tiny_seresnet() -> LoadedModel:
    return _tiny_loaded("make_tiny_seresnet", "tiny_seresnet", 64)


@pytest.fixture
def tiny_custom() -> LoadedModel:
    return _tiny_loaded("make_tiny_custom", "tiny_custom", 32)


@pytest.fixture
def tiny_decoy() -> LoadedModel:
    return _tiny_loaded("make_tiny_decoy", "tiny_decoy", 32)


@pytest.fixture
def tiny_input() -> torch.Tensor:
    """A fixed batch of 4 images for the 64x64 tiny SE-ResNet."""
    import torch

    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(123))


@pytest.fixture
def small_input() -> torch.Tensor:
    """A fixed batch of 4 images for the 32x32 tiny nets."""
    import torch

    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(321))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    require(SHARED.is_dir(), f"the shared folder at {SHARED} (see ../shared/README.md)")
    return SHARED


@pytest.fixture(scope="session")
def tflite_file(shared_dir: Path) -> Path:
    require(TFLITE_FILE.is_file(), f"the shared MobileNetV3-Small .tflite at {TFLITE_FILE}")
    return TFLITE_FILE


@pytest.fixture(scope="session")
def imagenet_samples(shared_dir: Path) -> Path:
    require(IMAGENET_SAMPLES.is_dir() and any(IMAGENET_SAMPLES.glob("*.JPEG")),
            f"the shared ImageNet samples at {IMAGENET_SAMPLES}")
    return IMAGENET_SAMPLES


@pytest.fixture(scope="session")
def mnv3_tflite(tflite_file: Path) -> LoadedModel:
    """The real MobileNetV3-Small, loaded by the zoo from its default (the shared .tflite), on the CPU."""
    from senet_viz.models.zoo import load_model

    return load_model("tf_mobilenetv3_small_100", device="cpu")
