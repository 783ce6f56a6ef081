"""Tests for companion.models: the timm factory, course CNNs, stages, features and EfficientNet-Lite0."""

from __future__ import annotations

import time

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import companion.models as M


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _conv_params(cin: int, cout: int) -> int:
    return cin * cout * 9 + 2 * cout  # 3x3 conv without bias + BatchNorm weight and bias


def _run(mods, x):
    for m in mods:
        x = m(x)
    return x


def _same_tensors(a: nn.Module, b: nn.Module, skip: str = "\0") -> None:
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k in sa if not k.startswith(skip)]
    assert keys == [k for k in sb if not k.startswith(skip)]
    for k in keys:
        assert torch.equal(sa[k], sb[k]), k


def _shake_bn(model: nn.Module, x: torch.Tensor) -> None:
    """Move BatchNorm running stats away from their defaults, so a round trip has something to preserve."""
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


# ---------------------------------------------------------------- factory and course CNNs


def test_course_cnns_are_registered_with_the_expected_sizes():
    assert {"course_cnn_s", "course_cnn_m"} <= set(timm.list_models("course_cnn*"))
    s_trunk = _conv_params(1, 16) + _conv_params(16, 32) + _conv_params(32, 64) + _conv_params(64, 128)
    m_trunk = (
        _conv_params(1, 16)
        + _conv_params(16, 32)
        + _conv_params(32, 32)
        + _conv_params(32, 64)
        + _conv_params(64, 64)
        + _conv_params(64, 128)
        + _conv_params(128, 128)
    )
    for name, trunk in [("course_cnn_s", s_trunk), ("course_cnn_m", m_trunk)]:
        model = M.backbone(name, in_chans=1, num_classes=10)
        assert M.count_params(model) == trunk + 128 * 10 + 10
        assert model.num_features == 128 and model.get_classifier().out_features == 10
        assert model.pretrained_cfg["architecture"] == name
        direct = timm.create_model(
            name, in_chans=1, num_classes=10
        )  # the plain timm route builds the same net
        assert M.count_params(direct) == M.count_params(model)
    assert (s_trunk, m_trunk) == (98682 - 1290, 292666 - 1290)


@pytest.mark.parametrize("name", ["course_cnn_s", "course_cnn_m", "resnet10t"])
def test_features_match_a_manual_forward_on_28x28_gray(name):
    model = M.backbone(name, in_chans=1, num_classes=10).eval()
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        feats = M.features(model, x)
        manual = model.forward_features(x).mean(dim=(2, 3))  # global average pooling by hand
        fc = model.get_classifier()
        assert feats.shape == (5, model.num_features)
        torch.testing.assert_close(feats, manual)
        torch.testing.assert_close(model(x), manual @ fc.weight.T + fc.bias)
        headless = M.backbone(name, in_chans=1).eval()  # num_classes=0: forward returns the pooled features
        torch.testing.assert_close(headless(x), M.features(headless, x))


def test_features_only_gives_the_stage_outputs():
    torch.manual_seed(1)
    model = timm.create_model("course_cnn_s", in_chans=1).eval()
    torch.manual_seed(1)
    pyramid = timm.create_model("course_cnn_s", in_chans=1, features_only=True).eval()
    assert pyramid.feature_info.channels() == [16, 32, 64, 128]
    assert pyramid.feature_info.reduction() == [1, 2, 4, 8]
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        outs, y = pyramid(x), x
        for stage, out in zip(M.stages(model), outs, strict=True):
            y = stage(y)
            assert torch.equal(out, y)


def test_a_course_cnn_learns_a_small_batch():
    model = M.backbone("course_cnn_s", in_chans=1, num_classes=10)
    x, y = torch.randn(32, 1, 28, 28), torch.arange(32) % 10
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 2.0 and losses[-1] < 0.25 * losses[0]  # about 2.3 -> 0.05 with this seed


# ---------------------------------------------------------------- stages


@pytest.mark.parametrize(
    ("name", "in_chans", "size", "n_stages"),
    [
        ("course_cnn_s", 1, 28, 4),
        ("course_cnn_m", 3, 32, 4),
        ("resnet10t", 1, 28, 5),
        ("tf_efficientnet_lite0", 3, 64, 9),
    ],
)
def test_stages_in_order_reproduce_forward_features(name, in_chans, size, n_stages):
    model = M.backbone(name, in_chans=in_chans, num_classes=7).eval()
    parts = M.stages(model)
    assert len(parts) == n_stages
    x = torch.randn(2, in_chans, size, size)
    with torch.no_grad():
        assert torch.equal(_run(parts, x), model.forward_features(x))
    # the stages and the classifier together own every parameter, each exactly once
    owned = [id(p) for part in parts for p in part.parameters()]
    owned += [id(p) for p in model.get_classifier().parameters()]
    assert sorted(owned) == sorted(id(p) for p in model.parameters())


def test_freezing_stages_freezes_the_model():
    model = M.backbone("resnet10t", in_chans=1, num_classes=3)
    parts = M.stages(model)
    frozen = sum(p.numel() for part in parts[:2] for p in part.parameters())
    for part in parts[:2]:
        part.requires_grad_(False)
    assert M.count_params(model, trainable_only=True) == M.count_params(model) - frozen
    assert not model.conv1[0].weight.requires_grad and model.layer2[0].conv1.weight.requires_grad


# ---------------------------------------------------------------- local weights and the hub


def test_local_weights_load_exactly_the_saved_tensors(tmp_path):
    saved = M.backbone("course_cnn_s", in_chans=1, num_classes=10)
    _shake_bn(saved, torch.randn(8, 1, 28, 28))
    path = tmp_path / "cnn.pth"
    torch.save(saved.state_dict(), path)
    loaded = M.backbone("course_cnn_s", in_chans=1, num_classes=10, weights=path)
    _same_tensors(saved, loaded)
    assert loaded.pretrained_cfg["file"] == str(path)
    other = M.backbone("course_cnn_s", in_chans=1, num_classes=5, weights=str(path))  # new task: fresh head
    _same_tensors(saved, other, skip="head.")
    assert other.get_classifier().weight.shape == (5, 128)
    headless = M.backbone("course_cnn_s", in_chans=1, weights=path)
    _same_tensors(saved, headless, skip="head.")
    rgb = M.backbone("course_cnn_s", in_chans=3, weights=path)  # the file's 1 channel is spread over 3
    torch.testing.assert_close(rgb.stem.conv.weight, saved.stem.conv.weight.repeat(1, 3, 1, 1) / 3)


def test_local_weights_in_safetensors_and_in_chans_adaptation(tmp_path):
    from safetensors.torch import save_file

    saved = M.backbone("resnet10t", in_chans=3, num_classes=7)
    _shake_bn(saved, torch.randn(4, 3, 32, 32))
    path = tmp_path / "resnet.safetensors"
    save_file(saved.state_dict(), str(path))
    _same_tensors(saved, M.backbone("resnet10t", in_chans=3, num_classes=7, weights=path))
    gray = M.backbone("resnet10t", in_chans=1, weights=path)  # timm sums the RGB filters of the first conv
    torch.testing.assert_close(gray.conv1[0].weight, saved.conv1[0].weight.sum(1, keepdim=True))
    assert torch.equal(gray.layer4[0].conv2.weight, saved.layer4[0].conv2.weight)


def test_pretrained_without_reachable_hub_gives_one_clear_error(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import time, so patch the value too
    monkeypatch.setattr(
        constants, "HF_HUB_CACHE", str(tmp_path)
    )  # an empty cache, whatever this machine holds
    start = time.perf_counter()
    with pytest.raises(ConnectionError) as info:
        M.backbone("resnet10t", pretrained=True)
    assert time.perf_counter() - start < 20
    message = str(info.value)
    assert "\n" not in message and "unreachable" in message and "weights=" in message
    assert info.value.__suppress_context__


def test_a_network_failure_becomes_the_same_error(monkeypatch):
    import timm.models._builder as builder

    def fail(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(builder, "load_state_dict_from_hf", fail)
    monkeypatch.setattr(builder, "load_state_dict_from_url", fail)
    with pytest.raises(ConnectionError, match=r"resnet10t.*unreachable.*weights="):
        M.backbone("resnet10t", pretrained=True)


# ---------------------------------------------------------------- features, heads, counts


def test_extract_features_is_batched_eval_and_gradient_free():
    model = M.backbone("course_cnn_s", in_chans=1)
    x = torch.randn(10, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        ref = M.features(model, x)
    model.train()
    stats = model.stem.bn.running_mean.clone()
    out = M.extract_features(model, x, batch_size=3)
    assert not out.requires_grad and out.device.type == "cpu"
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert model.training and torch.equal(model.stem.bn.running_mean, stats)  # mode restored, stats untouched
    batches = [(x[:4], torch.zeros(4)), (x[4:], torch.zeros(6))]
    torch.testing.assert_close(M.extract_features(model, batches), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(M.extract_features(model, [x[:7], x[7:]]), ref, rtol=1e-5, atol=1e-5)


def test_new_head_replaces_only_the_classifier():
    model = M.backbone("course_cnn_s", in_chans=1, num_classes=10)
    trunk = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    assert M.new_head(model, 3) is model
    assert model.get_classifier().weight.shape == (3, 128) and model.num_classes == 3
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trunk.items())
    resnet = M.new_head(M.backbone("resnet10t"), 4)
    assert resnet.fc.out_features == 4 and resnet.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    assert M.count_params(resnet) - M.count_params(M.backbone("resnet10t")) == 512 * 4 + 4


# ---------------------------------------------------------------- EfficientNet-Lite0 with ImageNet weights


@pytest.fixture(scope="module")
def lite0():
    return M.efficientnet_lite0()


@pytest.fixture(scope="module")
def lite0_source():
    return torch.load(M.lite0_weights_file(), map_location="cpu", weights_only=True)


def test_lite0_holds_every_source_tensor_in_order(lite0, lite0_source):
    target = lite0.state_dict()
    assert len(target) == len(lite0_source) == 296
    for (skey, value), (tkey, loaded) in zip(lite0_source.items(), target.items(), strict=True):
        assert skey.rsplit(".", 1)[-1] == tkey.rsplit(".", 1)[-1]
        assert torch.equal(value, loaded), (skey, tkey)
    assert lite0.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) and lite0.pretrained_cfg["std"] == (0.5, 0.5, 0.5)


def _top5(model: nn.Module, image: np.ndarray) -> list[int]:
    x = M.imagenet_transform(model)(image).unsqueeze(0)
    with torch.no_grad():
        return model(x).topk(5).indices[0].tolist()


def test_lite0_classifies_the_scikit_image_photos(lite0):
    from skimage import data

    labels = M.imagenet_labels()
    assert len(labels) == 1000 and labels[967] == "espresso" and labels[281].startswith("tabby")
    cat = _top5(lite0, data.chelsea())
    assert set(cat) & {281, 282, 283, 284, 285}, [labels[i] for i in cat]
    coffee = _top5(lite0, data.coffee())
    assert coffee[0] in (967, 968), [labels[i] for i in coffee]


def test_imagenet_transform_maps_pixels_to_minus_one_one():
    tf = M.imagenet_transform()
    white, black = np.full((300, 400, 3), 255, np.uint8), np.zeros((300, 400), np.uint8)
    assert tf(white).shape == (3, 224, 224)
    torch.testing.assert_close(tf(white), torch.ones(3, 224, 224))
    torch.testing.assert_close(tf(black), -torch.ones(3, 224, 224))
    photo = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    torch.testing.assert_close(tf(photo / 255.0), tf(photo))  # [0, 1] floats read as uint8 pixels


def test_lite0_new_head_and_gray_input_keep_the_trunk(lite0):
    ten = M.efficientnet_lite0(num_classes=10)
    _same_tensors(lite0, ten, skip="classifier.")
    assert ten.classifier.weight.shape == (10, 1280)
    gray = M.efficientnet_lite0(in_chans=1)
    torch.testing.assert_close(gray.conv_stem.weight, lite0.conv_stem.weight.sum(1, keepdim=True))
    assert torch.equal(gray.classifier.weight, lite0.classifier.weight)


def test_remap_by_order_renames_checks_and_fills_counters():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    foreign = {"fc.weight": torch.randn(4, 3), "fc.bias": torch.randn(4)}
    foreign |= {"norm.weight": torch.rand(4), "norm.bias": torch.rand(4)}
    foreign |= {"norm.running_mean": torch.rand(4), "norm.running_var": torch.rand(4) + 1}
    out = M.remap_by_order(foreign, model)  # no num_batches_tracked in the source: the counter becomes 0
    assert list(out) == list(model.state_dict())
    assert out["1.num_batches_tracked"].item() == 0
    model.load_state_dict(out, strict=True)
    assert torch.equal(model[0].weight, foreign["fc.weight"]) and torch.equal(
        model[1].running_var, foreign["norm.running_var"]
    )
    counted = {**foreign, "norm.num_batches_tracked": torch.tensor(7)}
    assert M.remap_by_order(counted, model)["1.num_batches_tracked"].item() == 7
    swapped = {"fc.bias": foreign["fc.bias"], "fc.weight": foreign["fc.weight"], **foreign}
    with pytest.raises(ValueError, match="cannot pair"):
        M.remap_by_order(swapped, model)
    with pytest.raises(ValueError, match="must hold 6 tensors"):
        M.remap_by_order({"fc.weight": foreign["fc.weight"]}, model)
    wrong = dict(foreign, **{"fc.weight": torch.randn(3, 4)})
    with pytest.raises(ValueError, match=r"fc.weight \(3, 4\) cannot pair with 0.weight \(4, 3\)"):
        M.remap_by_order(wrong, model)


def test_stages_of_any_timm_model_follow_its_group_matcher_and_drive_unfreezing():
    from companion.transfer import layer_groups, unfreeze_top

    model = timm.create_model("convnext_atto", pretrained=False, num_classes=3)
    parts = M.stages(
        model
    )  # timm's coarse groups: stem, stages.0-3, then the head's norm (the classifier is none)
    assert len(parts) == 6 and parts[0][0] is model.stem[0] and list(parts[-1]) == [model.head.norm]
    assert parts[-2][0] is model.stages[3].downsample[0]
    unfreeze_top(model, 2)  # the classifier and the top two stages train, the rest is frozen
    trained = {".".join(n.split(".")[:2]) for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"stages.3", "head.norm", "head.fc"}
    lrs = [(g["lr"], len(g["params"])) for g in layer_groups(model, 1.0, layer_decay=0.5)]
    assert lrs == [(1.0, 2), (0.25, 22), (0.5, 2)]  # classifier; stage 4 of 6 at 0.5^2; stage 5 at 0.5


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: M.backbone("resnet_does_not_exist"),
            r"name 'resnet_does_not_exist'.*timm.list_models\('resnet\*'\)",
        ),
        (lambda: M.backbone(3), "name must be"),
        (lambda: M.backbone("course_cnn_s", in_chans=0), "in_chans must be an integer >= 1"),
        (lambda: M.backbone("course_cnn_s", num_classes=-1), "num_classes must be an integer >= 0"),
        (lambda: M.backbone("course_cnn_s", num_classes=2.0), "num_classes must be an integer"),
        (lambda: M.backbone("course_cnn_s", weights="/no/such/file.pth"), "weights must be the path"),
        (lambda: M.backbone("course_cnn_s", pretrained=True), "no published weights.*weights="),
        (
            lambda: M.stages(nn.Linear(2, 2)),
            "model must be a course CNN or a timm model",
        ),
        (lambda: M.stages("resnet10t"), "model must be a torch nn.Module"),
        (lambda: M.features(nn.Linear(2, 2), torch.zeros(1, 2)), "forward_features"),
        (lambda: M.extract_features(nn.Identity(), torch.zeros(2, 1), batch_size=0), "batch_size must be"),
        (lambda: M.extract_features(M.backbone("course_cnn_s"), 5), "x_or_batches must be"),
        (lambda: M.extract_features(M.backbone("course_cnn_s"), []), "at least one sample"),
        (lambda: M.extract_features(M.backbone("course_cnn_s"), [["a"]]), "x_or_batches must yield tensors"),
        (lambda: M.new_head(M.backbone("course_cnn_s"), -2), "num_classes must be"),
        (lambda: M.new_head(nn.Linear(2, 2), 3), "reset_classifier"),
        (lambda: M.count_params("model"), "model must be a torch nn.Module"),
        (lambda: M.efficientnet_lite0(num_classes=-1), "num_classes must be"),
        (lambda: M.efficientnet_lite0(in_chans=0), "in_chans must be"),
        (lambda: M.imagenet_transform(nn.Linear(2, 2)), "pretrained_cfg"),
        (lambda: M.imagenet_transform()("not an image"), "image must be"),
        (lambda: M.remap_by_order([1, 2], nn.Linear(1, 1)), "source must be a state dict"),
    ],
)
def test_bad_input_raises_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_unreadable_weights_file_is_a_value_error(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a readable state dict") as info:
        M.backbone("course_cnn_s", weights=bad)
    assert "\n" not in str(info.value)
