"""Model registry: `create_model(name)`; every model maps ``(B, 3, 96, 96)`` to raw logits ``(B,)``.

`sigmoid` happens only in inference and metrics. Weights are never downloaded: `weights` may name a
local file (a state dict, or one of our checkpoints).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import COMBINES, DEFAULT_COMBINE, ModelConfig
from .p4m import P4MNet

log = logging.getLogger(__name__)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Identity()
            if cin == cout and stride == 1
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x), inplace=True)


class PCamNet(nn.Module):
    """The compact CPU default: a VGG-style network that keeps full resolution in its first stage.

    Four stages of two 3x3 conv-BN-ReLU layers, each followed by 2x2 max-pooling (96 -> 48 -> 24 ->
    12 -> 6), widths 16-32-64-128, global average pooling, dropout and one logit: 0.29 M parameters,
    0.24 GFLOP per patch forward. On 4,000 real patches it learns faster per epoch than a residual net
    of the same cost that downsamples at once (`pcamresnet`): nuclear texture is only a few pixels wide.

    With `padding=0` (`pcamscan`) its convolutions are valid ones: no zero padding, so a window's output depends on
    its own pixels only, and the pooling steps (16 px) divide the slide stride (32 px). Scored densely over a whole
    region, every window's logit is then the one it gets alone, to float rounding (`slides.dense`). Each stage
    shrinks the map by 4 (96 -> 92 -> 46 -> 42 -> 21 -> 17 -> 8 -> 4 -> 2): the last features see the patch's
    central 68 px with their whole receptive field, and less of its border than the padded net.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), dropout: float = 0.0, padding: int = 1) -> None:
        super().__init__()
        cin = 3
        for i, width in enumerate(widths, start=1):
            setattr(self, f"stage{i}", nn.Sequential(_conv_bn_relu(cin, width, padding=padding),
                                                     _conv_bn_relu(width, width, padding=padding)))
            cin = width
        self.n_stages = len(widths)
        self.padding = padding
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, 1)

    def stage_grid(self, side: int = 96) -> list[tuple[int, float, float]]:
        """Where each stage's output cells sit on a `side`-px input (before the stage's pooling): (cells a side, the
        centre of cell 0 in input pixels, the cells' pitch in pixels). Each 3 x 3 convolution trims 1 - padding cells
        a side and moves cell 0's centre by as much; each 2 x 2 pooling halves the cells (floor), moves the centre by
        half a cell and doubles the pitch."""
        grid, centre, pitch = [], 0.0, 1.0
        for i in range(self.n_stages):
            if i:
                side, centre, pitch = side // 2, centre + 0.5 * pitch, 2 * pitch  # the pooling before stage i + 1
            trim = 2 * (1 - self.padding)  # the stage's two convolutions
            side, centre = side - 2 * trim, centre + trim * pitch
            grid.append((side, centre, pitch))
        return grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.n_stages + 1):
            x = self.pool(getattr(self, f"stage{i}")(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(self.dropout(x)).squeeze(1)


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, padding: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PCamResNet(nn.Module):
    """A compact residual network: a stride-2 stem, then four stages of basic residual blocks at 48,
    24, 12 and 6 pixels, global average pooling, dropout and one logit. About 1.2 M parameters and
    0.28 GFLOP per patch forward."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), depths: tuple[int, ...] = (1, 1, 1, 1), dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, widths[0], stride=2)
        stages = []
        cin = widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = [_BasicBlock(cin if j == 0 else width, width, 2 if (j == 0 and i > 0) else 1) for j in range(depth)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.stage1, self.stage2, self.stage3, self.stage4 = stages
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.stem(x)))))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(self.dropout(x)).squeeze(1)


# torchvision is imported when one of its models is built: importing it also imports torch._dynamo,
# a slow import that the dashboard's first page and `pcamnet` need not pay for.

def _torchvision_resnet(arch: str) -> Callable[[float], nn.Module]:
    def build(dropout: float) -> nn.Module:
        import torchvision.models

        model = getattr(torchvision.models, arch)(weights=None)
        model.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(model.fc.in_features, 1))
        return _SqueezeLogit(model)

    return build


def _densenet121(dropout: float) -> nn.Module:
    import torchvision.models

    model = torchvision.models.densenet121(weights=None)
    model.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(model.classifier.in_features, 1))
    return _SqueezeLogit(model)


class _SqueezeLogit(nn.Module):
    """Wraps a torchvision classifier with a 1-unit head so that it returns ``(B,)`` logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: how to build it, and which layers Grad-CAM may use.

    `target_layers` maps a layer's dotted path in the model to the size of its feature map on a 96x96
    patch; the first entry is the default Grad-CAM layer.
    """

    name: str
    build: Callable[[float], nn.Module]
    description: str
    target_layers: dict[str, int] = field(default_factory=dict)
    cpu_friendly: bool = False
    # The early layers whose feature statistics (`pcam_core.scope`) tell tissue like the training data from
    # tissue unlike it: stain, texture and scale live there; the last layers only know tumour from normal.
    scope_layers: tuple[str, ...] = ()


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "pcamnet",
            lambda dropout: PCamNet(dropout=dropout),
            "compact VGG-style net at full resolution (0.29 M parameters): trains on a CPU in minutes; the CPU default",
            {"stage4": 12, "stage3": 24, "stage2": 48},
            cpu_friendly=True, scope_layers=("stage1", "stage2"),
        ),
        ModelSpec(
            "pcamscan",
            lambda dropout: PCamNet(dropout=dropout, padding=0),
            "pcamnet with valid (unpadded) convolutions (0.29 M parameters): scores a slide densely with exactly the "
            "per-window answers",
            {"stage4": 4, "stage3": 17, "stage2": 42},
            cpu_friendly=True, scope_layers=("stage1", "stage2"),
        ),
        ModelSpec(
            "pcamnet_p4m",
            lambda dropout: P4MNet(dropout=dropout),
            "pcamnet with p4m group convolutions (Veeling et al. 2018): the same cost, 8x fewer weights (0.04 M), and "
            "the same logit for every rotation and mirror of a patch",
            {"stage4": 12, "stage3": 24, "stage2": 48},
            cpu_friendly=True, scope_layers=("stage1", "stage2"),
        ),
        ModelSpec(
            "pcamnet_wide",
            lambda dropout: PCamNet(widths=(32, 64, 128, 256), dropout=dropout),
            "pcamnet with twice the channels (1.2 M parameters, about 3x slower)",
            {"stage4": 12, "stage3": 24, "stage2": 48},
            cpu_friendly=True, scope_layers=("stage1", "stage2"),
        ),
        ModelSpec(
            "pcamresnet",
            lambda dropout: PCamResNet(dropout=dropout),
            "compact residual net that downsamples at once (1.2 M parameters)",
            {"stage4": 6, "stage3": 12, "stage2": 24},
            cpu_friendly=True, scope_layers=("stage1", "stage2"),
        ),
        ModelSpec("resnet18", _torchvision_resnet("resnet18"), "torchvision ResNet-18, one-logit head; the CUDA default",
                  {"net.layer4": 3, "net.layer3": 6, "net.layer2": 12}, scope_layers=("net.layer1", "net.layer2")),
        ModelSpec("resnet34", _torchvision_resnet("resnet34"), "torchvision ResNet-34, one-logit head",
                  {"net.layer4": 3, "net.layer3": 6, "net.layer2": 12}, scope_layers=("net.layer1", "net.layer2")),
        ModelSpec("resnet50", _torchvision_resnet("resnet50"), "torchvision ResNet-50, one-logit head",
                  {"net.layer4": 3, "net.layer3": 6, "net.layer2": 12}, scope_layers=("net.layer1", "net.layer2")),
        ModelSpec("densenet121", _densenet121, "torchvision DenseNet-121, one-logit head",
                  {"net.features.norm5": 3, "net.features.denseblock3": 6, "net.features.denseblock2": 12},
                  scope_layers=("net.features.denseblock1", "net.features.denseblock2")),
    )
}
CPU_DEFAULT = "pcamnet"
CUDA_DEFAULT = "resnet18"


def model_names() -> list[str]:
    return list(MODELS)


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}") from None


def resolve_model_name(name: str, device: torch.device | str) -> str:
    """"auto" -> the compact model on the CPU, ResNet-18 on CUDA; other names are checked."""
    if name == "auto":
        return CUDA_DEFAULT if torch.device(device).type == "cuda" else CPU_DEFAULT
    return get_spec(name).name


def create_model(name: str, *, weights: str | Path | None = None, dropout: float = ModelConfig.dropout) -> nn.Module:
    """Build a registered model; optionally load a local weights file (never a download). The dropout
    default is the recipe's (`ModelConfig.dropout`).

    The model comes in the channels-last memory format, as training has always used it (`TrainConfig.channels_last`,
    which `pcam train` can turn off): every model loaded to score is then in it too. Batches cut from a slide's
    channels-first region are NCHW; against NCHW weights they ran NCHW convolutions. On this CPU pcamnet now scores
    such batches 1.6x faster, the bundled ensemble 1.5x (a slide's window mode 1.35-1.5x), resnet18 1.3x, pcamresnet
    alike, pcamnet_p4m 0.9x (its kernels are built anew each pass), with the same logits up to rounding
    (benchmarks/bench_channels_last.py). Batches of patches (loaders, `pcam predict`, Grad-CAM) are channels-last
    already and score as before."""
    model = get_spec(name).build(dropout).to(memory_format=torch.channels_last)
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict (or the ``model`` entry of one of our checkpoints) from a local file.

    Tensors whose names and shapes match are loaded; the rest (an ImageNet head, say) keep their
    initialisation, and what was skipped is logged. Loaded with ``weights_only=True``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, unsafe globals, truncated files: all mean "not loadable"
        raise ValueError(f"{path}: not a loadable weights file ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"{path}: none of its {len(state)} tensors match this model's parameters")
    skipped = sorted(set(state) - set(usable))
    missing = sorted(set(own) - set(usable))
    model.load_state_dict(usable, strict=False)
    log.info("loaded %d tensors from %s (skipped %d, left initialised %d)", len(usable), path, len(skipped), len(missing))


class EnsembleModel(nn.Module):
    """Several models of one architecture scored as one: logits ``(B,)`` whose sigmoid is the mean of the
    members' probabilities (`combine="prob"`), or the mean of their logits (`"logit"`, a geometric mean of
    odds). One graph, so it exports to ONNX/TorchScript as one model (`pcam_core.export`)."""

    def __init__(self, members: list[nn.Module], combine: str = DEFAULT_COMBINE) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if combine not in COMBINES:
            raise ValueError(f"unknown ensemble combine {combine!r}; valid: {', '.join(COMBINES)}")
        self.members = nn.ModuleList(members)
        self.combine = combine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for member in self.members:  # a loop, not a comprehension: TorchScript scripts it
            outputs.append(member(x).float())
        return combine_logits(torch.stack(outputs), self.combine)  # (K, B) -> (B,)


def combine_logits(z: torch.Tensor, combine: str) -> torch.Tensor:
    """The ensemble's logits from its members' logits `z` stacked on the first axis (K, ...): the logit of the mean
    probability ("prob") or the mean logit ("logit"). The one formula of `EnsembleModel` and of the dense scan of an
    ensemble (`slides.dense`)."""
    if combine == "logit":
        return z.mean(dim=0)
    # logit(mean sigmoid(z)) = log mean p - log mean (1 - p), computed in log space (no 0/1 saturation)
    return torch.logsumexp(F.logsigmoid(z), dim=0) - torch.logsumexp(F.logsigmoid(-z), dim=0)


def guard_network(model: nn.Module) -> nn.Module:
    """The network whose features the out-of-scope guard (`pcam_core.scope`) reads: the model itself, or an
    ensemble's first member (its features alone, at one member's cost). Grad-CAM on an ensemble averages every
    member's map instead (`explain`)."""
    return model.members[0] if isinstance(model, EnsembleModel) else model


def get_layer(model: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path, with an error listing the valid Grad-CAM layers when absent. On an
    `EnsembleModel`, the layer of its first member: the member whose features the out-of-scope guard reads."""
    try:
        return guard_network(model).get_submodule(path)
    except AttributeError:
        raise ValueError(f"model has no layer {path!r}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
