"""Calibration: ECE as Guo et al. define it, a temperature that never changes the top class, cross-fitting that
never scores an image with a temperature fitted on it, and the precision `auto` picks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from resnet_cifar import ResNet9, calibration
from training import speed


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def sampled(n: int = 4000, sharpness: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z): softmax(z) is then calibrated by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 10)) * sharpness
    p = softmax(z)
    labels = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return z, labels


def test_ece_by_hand():
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    y = np.array([0, 1, 0, 1])
    # bins of 1/15: 0.9 -> bin 13 (2 images, accuracy 1/2), 0.6 -> bin 8 (1, acc 1), 0.8 -> bin 11 (1, acc 1)
    expected = (2 * abs(0.5 - 0.9) + 1 * abs(1 - 0.6) + 1 * abs(1 - 0.8)) / 4
    assert calibration.expected_calibration_error(p, y) == pytest.approx(expected)
    r = calibration.reliability(p, y)
    assert r.counts.sum() == 4 and r.counts[13] == 2 and r.accuracy[13] == 0.5
    assert calibration.negative_log_likelihood(p, y) == pytest.approx(-np.mean(np.log([0.9, 0.1, 0.6, 0.8])))


def test_a_confidence_of_exactly_one_is_in_the_last_bin_and_a_perfect_model_has_no_error():
    p = np.eye(10)[[0, 1, 2]]
    assert calibration.reliability(p, np.array([0, 1, 2])).counts[-1] == 3
    assert calibration.expected_calibration_error(p, np.array([0, 1, 2])) == 0.0


def test_the_temperature_recovers_a_known_miscalibration_and_keeps_every_prediction():
    z, labels = sampled()
    calibrated = softmax(z)
    underconfident = softmax(z / 3)  # what label smoothing does to a network: too soft by a factor
    t = calibration.fit_temperature(underconfident, labels)
    assert t == pytest.approx(1 / 3, rel=0.08)
    fixed = calibration.scaled(underconfident, t)
    assert np.array_equal(fixed.argmax(1), underconfident.argmax(1)), "a temperature never changes the top class"
    ece = calibration.expected_calibration_error
    assert ece(underconfident, labels) > 0.15 and ece(fixed, labels) < 0.03
    assert abs(ece(fixed, labels) - ece(calibrated, labels)) < 0.02


def test_cross_fitting_scores_each_half_with_the_other_halfs_temperature():
    z, labels = sampled(n=2001)
    p = softmax(z / 2)
    fit = calibration.cross_fit(p, labels, seed=7)
    order = np.random.default_rng(7).permutation(len(labels))
    a, b = order[:1000], order[1000:]
    ta, tb = calibration.fit_temperature(p[a], labels[a]), calibration.fit_temperature(p[b], labels[b])
    assert fit.fold_temperatures == pytest.approx((ta, tb)) and fit.temperature == pytest.approx(math.sqrt(ta * tb))
    after = np.empty_like(p)
    after[a], after[b] = calibration.scaled(p[a], tb), calibration.scaled(p[b], ta)
    assert fit.ece_after == pytest.approx(calibration.expected_calibration_error(after, labels))
    assert fit.nll_after < fit.nll_before and fit.ece_after < fit.ece_before
    assert fit.images == 2001 and set(fit.to_dict()) >= {"temperature", "ece_before", "ece_after_cross_fitted"}


def test_folding_the_temperature_into_logit_scale_gives_the_scaled_probabilities():
    torch.manual_seed(0)
    model = ResNet9(logit_scale=0.125).eval()
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        before = torch.softmax(model(x), 1).numpy()
        model.logit_scale = 0.125 / 0.4
        after = torch.softmax(model(x), 1).numpy()
    np.testing.assert_allclose(calibration.scaled(before, 0.4), after, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("probabilities, labels, words", [
    (np.ones((3, 2)) / 2, np.array([0, 1]), "need N x C probabilities and N labels"),
    (np.full((2, 2), np.nan), np.array([0, 1]), "finite and non-negative"),
    (np.ones((2, 2)) / 2, np.array([0, 2]), "labels must be integers in 0..1"),
    (np.ones((2, 2)) / 2, np.array([0.0, 1.0]), "labels must be integers"),
])
def test_bad_input_is_refused_with_what_is_allowed(probabilities, labels, words):
    with pytest.raises(ValueError, match=words):
        calibration.expected_calibration_error(probabilities, labels)


def test_cross_fitting_needs_four_images():
    with pytest.raises(ValueError, match="at least 4 images"):
        calibration.cross_fit(np.ones((3, 2)) / 2, np.array([0, 1, 0]))


@pytest.mark.parametrize("flags, precision, words", [
    ({"avx512f", "avx512_bf16"}, "bf16-mixed", "computes bf16 natively (avx512_bf16)"),
    ({"amx_bf16", "amx_tile"}, "bf16-mixed", "(amx_bf16)"),
    ({"avx2", "avx512f"}, "32-true", "no native bf16"),
    (set(), "32-true", "no native bf16"),
])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(flags, precision, words):
    chosen, why = speed.fastest_precision("cpu", flags)
    assert chosen == precision and words in why


@pytest.mark.parametrize("cuda, mps, expected", [
    (False, False, {"auto": "cpu", "cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "mps": "mps"}),
    (True, False, {"auto": "cuda", "cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "mps": "mps"}),
    (False, True, {"auto": "mps", "cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "mps": "mps"}),
])
def test_the_device_an_accelerator_runs_on_is_one_answer_for_every_check(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert {name: speed.device_kind(name) for name in expected} == expected
    assert speed.device_kind(" AUTO ") == expected["auto"]
    if not cuda:  # the CPU's precision rule applies exactly where the run lands on the CPU
        assert speed.fastest_precision("auto", {"avx512_bf16"})[0] == ("bf16-mixed" if not mps else "32-true")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512_bf16 sse\n\nprocessor\t: 1\nflags\t\t: fpu amx_bf16\n")
    assert speed.cpu_flags(str(info)) == {"fpu", "avx512_bf16", "sse", "amx_bf16"}
    assert speed.cpu_flags(str(tmp_path / "missing")) == set()
