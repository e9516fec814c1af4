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

import copy
import shutil
from pathlib import Path

import pytest
import torch
from timm.layers import SEModule
from torch import nn

from senet_viz.models.embedded.model import SEBasicBlock as LibrarySEBasicBlock
from senet_viz.models.loaded import LoadedModel

# A pytest-xdist worker (`make test`) computes on one thread: the workers already fill the cores, and torch's
# intra-op threads on an oversubscribed CPU spin-wait for each other (tests ran up to 100 times slower).
if os.environ.get("PYTEST_XDIST_WORKER"):
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


# ------------------------------------------------------------------------------------------- tiny SE-ResNet


class SEBasicBlock(LibrarySEBasicBlock):
    """The library's SE basic block (SE on the residual branch, before the addition: the paper's SE-ResNet
    module; :class:`senet_viz.models.embedded.model.SEBasicBlock`) with r = 4 and timm's default rounding of the SE
    bottleneck to a multiple of 8."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__(c_in, c_out, stride, reduction=4, rd_divisor=8)


class TinySEResNet(nn.Module):
    """64x64 input; stem (stride 4) then layer1..layer4 = paper stages 2..5 with DEPTHS blocks."""

    WIDTHS = (16, 32, 48, 64)
    DEPTHS = (1, 2, 2, 2)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        c_in = 16
        for i, (width, depth) in enumerate(zip(self.WIDTHS, self.DEPTHS, strict=True)):
            blocks = []
            for j in range(depth):
                blocks.append(SEBasicBlock(c_in, width, 2 if (j == 0 and i > 0) else 1))
                c_in = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x).flatten(1))


TINY_SERESNET_NAMES = ["SE_2_1", "SE_3_1", "SE_3_2", "SE_4_1", "SE_4_2", "SE_5_1", "SE_5_2"]


def make_tiny_seresnet(seed: int = 0) -> TinySEResNet:
    torch.manual_seed(seed)
    model = TinySEResNet()
    # Non-trivial batch-norm statistics so eval-mode outputs differ from the raw convolutions.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


# ------------------------------------------------------------------------------------- a user's own SE class


class ChannelGate(nn.Module):
    """A hand-written SE block (not a timm/torchvision class): pool -> FC -> ReLU -> FC -> sigmoid, rescale."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.squeeze = nn.Linear(channels, channels // reduction)
        self.relu = nn.ReLU()
        self.excite = nn.Linear(channels // reduction, channels)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        s = self.sigmoid(self.excite(self.relu(self.squeeze(self.pool(x).flatten(1)))))  # N x C
        return x * s.view(n, c, 1, 1)


class TinyCustomSENet(nn.Module):
    """32x32 input; three conv stages at strides 2, 4, 8, each followed by a ChannelGate."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU())
        self.gate1 = ChannelGate(16)
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
        self.gate2 = ChannelGate(32)
        self.conv3 = nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU())
        self.gate3 = ChannelGate(32)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gate1(self.conv1(x))
        x = self.gate2(self.conv2(x))
        x = self.gate3(self.conv3(x))
        return self.head(x)


def make_tiny_custom(seed: int = 0) -> TinyCustomSENet:
    torch.manual_seed(seed)
    return TinyCustomSENet().eval()


# ------------------------------------------------------------------------------------ a decoy (spatial gate)


class SpatialGate(nn.Module):
    """Looks like SE by its layers (1x1 conv C -> C/r -> C and a sigmoid) but gates *positions*:
    the sigmoid sees the channel mean, N x 1 x H x W. Not a channel excitation, so not an SE block."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.fc2(self.relu(self.fc1(x)))
        return x * self.sigmoid(a.mean(dim=1, keepdim=True))  # N x 1 x H x W


class TinyDecoyNet(nn.Module):
    """32x32 input: conv (stride 2) -> real timm SE -> conv (stride 4) -> spatial decoy -> head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU())
        self.se = SEModule(16, rd_ratio=1 / 4)
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
        self.decoy = SpatialGate(32)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoy(self.conv2(self.se(self.conv1(x)))))


def make_tiny_decoy(seed: int = 0) -> TinyDecoyNet:
    torch.manual_seed(seed)
    return TinyDecoyNet().eval()


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def tiny_seresnet() -> LoadedModel:
    return LoadedModel.from_module(make_tiny_seresnet(), "tiny_seresnet", TINY_CLASSES, input_size=(3, 64, 64))


@pytest.fixture
def tiny_custom() -> LoadedModel:
    return LoadedModel.from_module(make_tiny_custom(), "tiny_custom", TINY_CLASSES, input_size=(3, 32, 32))


@pytest.fixture
def tiny_decoy() -> LoadedModel:
    return LoadedModel.from_module(make_tiny_decoy(), "tiny_decoy", TINY_CLASSES, input_size=(3, 32, 32))


@pytest.fixture
def tiny_input() -> torch.Tensor:
    """A fixed batch of 4 images for the 64x64 tiny SE-ResNet."""
    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(123))


@pytest.fixture
def small_input() -> torch.Tensor:
    """A fixed batch of 4 images for the 32x32 tiny nets."""
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(321))


def clone_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()


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
