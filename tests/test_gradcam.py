"""Grad-CAM: shapes, range, layers, targets, batching, side effects, a semantic check, and overlays."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from resnet_cifar import ResNet9, gradcam
from resnet_cifar.gradcam import LAYERS, explain, jet, overlay

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def batch() -> torch.Tensor:
    """Three random normalized images."""
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def assert_maps(maps: torch.Tensor, n: int) -> None:
    """N x 32 x 32 maps in [0, 1], each with its peak at 1 (the untrained model's maps are never all zero)."""
    assert maps.shape == (n, 32, 32) and maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1
    torch.testing.assert_close(maps.flatten(1).amax(1), torch.ones(n))


@pytest.mark.parametrize("layer", LAYERS)
def test_every_layer_gives_normalized_maps(model, batch, layer):
    assert_maps(explain(model, batch, layer=layer), 3)


def test_layers_are_the_named_blocks():
    assert LAYERS == ("prep", "layer1", "layer2", "layer3")
    assert set(gradcam.LAYER_DESCRIPTIONS) == set(LAYERS)


@pytest.mark.parametrize("layer", ["fc", "layer4", "", "pool"])
def test_unknown_layer_lists_the_allowed_ones(model, batch, layer):
    with pytest.raises(ValueError, match="allowed are prep, layer1, layer2, layer3"):
        explain(model, batch, layer=layer)


def test_batch_must_be_4d(model):
    with pytest.raises(ValueError, match="N x C x H x W"):
        explain(model, torch.zeros(3, 32, 32))


def test_a_bf16_or_float64_batch_is_explained_in_the_models_dtype(model, batch):
    """preprocess accepts bf16 input; the maps are those of the same images in fp32 (up to bf16 rounding)."""
    reference = explain(model, batch)
    for dtype, tolerance in ((torch.bfloat16, 0.15), (torch.float64, 1e-5)):
        maps = explain(model, batch.to(dtype))
        assert_maps(maps, 3)
        assert (maps - reference).abs().max() < tolerance, dtype


@pytest.mark.parametrize("channels", [1, 4])
def test_a_batch_with_other_than_three_channels_is_refused_clearly(model, channels):
    with pytest.raises(ValueError, match=f"batch must have 3 channels .* got {channels}: convert grey images to RGB"):
        explain(model, torch.zeros(2, channels, 32, 32))


def test_an_integer_batch_is_refused_clearly(model):
    with pytest.raises(ValueError, match="batch must be a normalized float tensor, got uint8"):
        explain(model, torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_under_no_grad_and_inference_mode(model, batch, context):
    expected = explain(model, batch)
    with context():
        inner = explain(model, batch)
    torch.testing.assert_close(inner, expected)


def test_inference_tensor_input(model):
    with torch.inference_mode():
        batch = model.preprocess(np.zeros((32, 32, 3), np.uint8))
    assert_maps(explain(model, batch, layer="layer2"), 1)


@pytest.mark.parametrize("training", [True, False])
def test_restores_mode_and_leaves_no_gradients(model, batch, training):
    model.train(training)
    stats = [b.clone() for b in model.buffers()]
    explain(model, batch, layer="layer1", targets=[0, 1, 2])
    explain(model, batch, layer="layer3")
    assert model.training is training
    assert all(m.training is training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    # Explained in eval mode: batch-norm running statistics were not updated.
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))


def test_default_target_is_the_predicted_class(model, batch):
    predicted = model(batch).argmax(1)
    torch.testing.assert_close(explain(model, batch), explain(model, batch, targets=predicted))


def test_explicit_targets_int_and_list(model, batch):
    torch.testing.assert_close(explain(model, batch, targets=3), explain(model, batch, targets=[3, 3, 3]))
    mixed = explain(model, batch, layer="layer2", targets=torch.tensor([0, 9, 0]))
    torch.testing.assert_close(mixed[0], explain(model, batch[:1], layer="layer2", targets=0)[0])
    torch.testing.assert_close(mixed[1], explain(model, batch[1:2], layer="layer2", targets=[9])[0])
    assert not torch.allclose(mixed[0], explain(model, batch[:1], layer="layer2", targets=9)[0])


@pytest.mark.parametrize("targets, words", [
    (10, "0 to 9"), (-1, "0 to 9"), ([0, 1], "2 targets for 3 images"), (2.5, "integer class ids.*float"),
    ([1.0, 2.0, 3.0], "integer class ids"), (True, "integer class ids.*bool"), (torch.tensor([True] * 3), "bool"),
])
def test_bad_targets_are_refused(model, batch, targets, words):
    with pytest.raises(ValueError, match=words):
        explain(model, batch, targets=targets)


@pytest.mark.parametrize("layer", ["prep", "layer3"])
def test_batched_equals_one_by_one(model, batch, layer):
    batched = explain(model, batch, layer=layer)
    single = torch.cat([explain(model, batch[i : i + 1], layer=layer) for i in range(len(batch))])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)


def test_an_all_zero_map_stays_zero():
    model = ResNet9().eval()
    with torch.no_grad():
        model.fc.weight.zero_()  # every score is flat: no gradient reaches any layer
    maps = explain(model, torch.randn(2, 3, 32, 32), layer="layer3", targets=0)
    assert maps.shape == (2, 32, 32) and not maps.isnan().any() and maps.max() == 0


# --- semantic check: a model whose score depends only on the top-left corner ------------------------------------


def corner_model() -> ResNet9:
    """A hand-wired ResNet9: logit 1 = brightness of the top-left 6x6 pixels, nothing else counts.

    Convolutions are translation-equivariant, so position comes from zero padding: a constant channel read
    one pixel up (or left) is 0 only on the top row (left column). Spreading that row/column by two cells at
    16x16 and AND-ing it (through a ReLU with a large bias) with the brightness gives a channel Q that is the
    image brightness inside rows/columns 0-2 of layer1 and 0 elsewhere. layer2, layer3 and the head read
    only Q. Batch norms are exact identities (running_var = 1 - eps), so ReLU(0) stays 0.
    """
    model = ResNet9(num_classes=2, class_names=["plain", "bright corner"])
    S, R, C, Q, R_UP, C_LEFT = 0, 1, 2, 3, 4, 5  # channel roles; the constant channel of prep is 1 too
    K = 100.0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.fill_(1.0 - m.eps)
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.prep[0].weight[S, :, 1, 1] = 1.0  # S = relu(r + g + b)
        model.prep[1].weight[1] = 0.0
        model.prep[1].bias[1] = 1.0  # constant 1
        conv, bn = model.layer1.conv[0], model.layer1.conv[2]
        conv.weight[S, S, 1, 1] = 1.0
        conv.weight[R, 1, 0, 1] = -1.0  # reads the pixel above: 0 only on the top row
        bn.bias[R] = 1.0
        conv.weight[C, 1, 1, 0] = -1.0  # reads the pixel to the left: 0 only on the left column
        bn.bias[C] = 1.0
        first, second = model.layer1.res[0][0].weight, model.layer1.res[1][0].weight
        for ch in (S, R, C):
            first[ch, ch, 1, 1] = 1.0
        first[R_UP, R, 0, 1] = 1.0
        first[C_LEFT, C, 1, 0] = 1.0
        second[Q, S, 1, 1] = 1.0
        second[Q, R, 1, 1] = second[Q, R, 0, 1] = second[Q, R_UP, 0, 1] = K  # row <= 2
        second[Q, C, 1, 1] = second[Q, C, 1, 0] = second[Q, C_LEFT, 1, 0] = K  # column <= 2
        model.layer1.res[1][1].bias[Q] = -2 * K
        model.layer2.conv[0].weight[0, Q, 1, 1] = 1.0
        model.layer3.conv[0].weight[0, 0, 1, 1] = 1.0
        model.fc.weight[1, 0] = 1.0
        model.fc.bias[0] = 1.0
    return model.eval()


def corner_image(top_left: bool = True, bottom_right: bool = True) -> torch.Tensor:
    """Dark (normalized -1) image with a bright 4x4 patch near the top-left and a larger one bottom-right."""
    x = torch.full((1, 3, 32, 32), -1.0)
    if top_left:
        x[..., 1:5, 1:5] = 1.0
    if bottom_right:
        x[..., 20:30, 20:30] = 1.0
    return x


def test_corner_model_depends_only_on_the_top_left():
    model = corner_model()
    with torch.no_grad():
        both, top_left_only, bottom_right_only = (
            model(corner_image(*flags))[0] for flags in [(True, True), (True, False), (False, True)]
        )
    torch.testing.assert_close(both, top_left_only)
    assert both[1] == pytest.approx(3.0, abs=1e-4) and both.argmax() == 1
    assert bottom_right_only[1] == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("layer", ["layer1", "layer2", "layer3"])
def test_gradcam_lights_up_the_region_the_score_depends_on(layer):
    model = corner_model()
    cam = explain(model, corner_image(), layer=layer, targets=1)[0]
    assert cam.max() == 1
    assert cam[:16, :16].sum() / cam.sum() > 0.99  # all mass in the top-left quadrant...
    assert cam[20:30, 20:30].max() == 0  # ...none on the larger bright patch the score ignores
    # The default target is the predicted class, which is "bright corner" here.
    torch.testing.assert_close(explain(model, corner_image(), layer=layer), cam.unsqueeze(0))


# --- overlay ------------------------------------------------------------------------------------------------------


@pytest.fixture
def picture() -> np.ndarray:
    """A random 20x24 uint8 RGB image."""
    return np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)


def test_jet_colours():
    assert jet(np.array([0.0, 0.5, 1.0])).tolist() == [[0, 0, 128], [128, 255, 128], [128, 0, 0]]


def test_overlay_opacity_0_is_the_image(picture):
    heat = np.random.default_rng(1).random((20, 24))
    out = overlay(picture, heat, 0)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, picture)


def test_overlay_opacity_1_is_the_colormap(picture):
    heat = np.random.default_rng(1).random((20, 24)).astype(np.float32)
    np.testing.assert_array_equal(overlay(picture, heat, 1.0), jet(heat))
    np.testing.assert_array_equal(overlay(picture, np.ones((20, 24)), 1), np.broadcast_to([128, 0, 0], (20, 24, 3)))


def test_overlay_half_blends(picture):
    heat = np.zeros((20, 24))
    expected = np.rint(0.5 * picture + 0.5 * np.array([0, 0, 128])).astype(np.uint8)
    np.testing.assert_array_equal(overlay(picture, heat, 0.5), expected)


def test_overlay_resizes_a_heatmap_of_another_size(picture):
    heat = torch.zeros(4, 4)
    heat[:2] = 1.0  # top half hot
    out = overlay(picture, heat, 1.0)
    assert out.shape == (20, 24, 3)
    np.testing.assert_array_equal(out[:8], np.broadcast_to([128, 0, 0], (8, 24, 3)))  # red on top
    np.testing.assert_array_equal(out[-8:], np.broadcast_to([0, 0, 128], (8, 24, 3)))  # blue below


def test_overlay_accepts_explain_output(model, batch):
    cam = explain(model, batch[:1])[0]
    assert overlay(np.zeros((32, 32, 3), np.uint8), cam, 0.6).shape == (32, 32, 3)


def test_probabilities_come_from_the_explained_forward_pass(model, batch):
    maps, probs = explain(model, batch, layer="layer2", return_probabilities=True)
    torch.testing.assert_close(maps, explain(model, batch, layer="layer2"))
    torch.testing.assert_close(probs, model.probabilities(batch), atol=1e-6, rtol=1e-5)
    targeted, _ = explain(model, batch, targets=[1, 2, 3], return_probabilities=True)
    assert targeted.shape == (3, 32, 32)


def test_overlay_takes_pil_images_and_numpy_numbers(picture):
    heat = np.linspace(0, 1, 20 * 24).reshape(20, 24)
    expected = overlay(picture, heat, 0.25)
    np.testing.assert_array_equal(overlay(Image.fromarray(picture), heat, np.float32(0.25)), expected)
    np.testing.assert_array_equal(overlay(Image.fromarray(picture).convert("RGBA"), heat, np.float64(0.25)), expected)


@pytest.mark.parametrize("opacity", [-0.1, 1.1, True, "0.5", float("nan"), np.bool_(True)])
def test_overlay_refuses_bad_opacity(picture, opacity):
    with pytest.raises(ValueError, match="opacity must be a number from 0 to 1"):
        overlay(picture, np.zeros((20, 24)), opacity)


@pytest.mark.parametrize(
    "image, heat, words",
    [
        (np.zeros((8, 8), np.uint8), np.zeros((8, 8)), "HxWx3 uint8"),
        (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8)), "HxWx3 uint8"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((1, 8, 8)), "heatmap must be a non-empty HxW map"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((0, 0)), r"heatmap must be a non-empty HxW map, got shape \(0, 0\)"),
        (np.zeros((0, 0, 3), np.uint8), np.zeros((8, 8)), r"image is empty \(0x0\)"),
        (np.zeros((8, 8, 3), np.uint8), np.full((8, 8), np.nan), "heatmap holds NaN or infinite values"),
        ([[0, 0, 0]], np.zeros((8, 8)), "HxWx3 uint8 array or a PIL image, got list"),
    ],
)
def test_overlay_refuses_bad_shapes(image, heat, words):
    with pytest.raises(ValueError, match=words):
        overlay(image, heat, 0.5)
