"""Page's bag of tricks as this project runs them (issue 18): CELU as a forward option saved in config.json, patch
whitening that folds exactly into the release's prep convolution, frozen BatchNorm scales, the biases' own LR and
weight decay, a sparse EMA; each on the real CIFAR-10 sample, the last ones through the real command."""

from __future__ import annotations

import csv
import json

import lightning as L
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from conftest import SAMPLE, run_cli

from resnet_cifar import ResNet9
from resnet_cifar.preprocess import normalize
from training import whiten
from training.config import RunConfig
from training.data import CIFAR10DataModule
from training.module import LitResNet, param_groups


def config(**sections) -> RunConfig:
    base = {"data": {"dataset": str(SAMPLE), "batch_size": 50, "num_workers": 0},
            "optim": {"optimizer": "sgd", "max_lr": 0.05}}
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return RunConfig.from_dict(base)


@pytest.fixture(scope="module")
def sample() -> CIFAR10DataModule:
    dm = CIFAR10DataModule(config().data)
    dm.setup()
    return dm


def normalized(dm: CIFAR10DataModule, n: int) -> torch.Tensor:
    return normalize(dm.train_set.images[:n], dm.mean, dm.std)


# ---------------------------------------------------------------- CELU, a forward option

def test_celu_is_saved_in_config_json_and_keeps_the_weights_layout(tmp_path):
    torch.manual_seed(0)
    celu = ResNet9(activation="celu", celu_alpha=0.3).eval()
    relu = ResNet9().eval()
    assert {k: v.shape for k, v in celu.state_dict().items()} == {k: v.shape for k, v in relu.state_dict().items()}
    celu.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["activation"], saved["celu_alpha"]) == ("celu", 0.3)
    loaded = ResNet9.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.layer3.res[1][2], torch.nn.CELU) and loaded.layer3.res[1][2].alpha == 0.3
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(loaded(x), celu(x))
    relu.load_state_dict(celu.state_dict())
    assert not torch.allclose(relu(x), celu(x)), "the activation is really used"


def test_a_release_without_an_activation_is_the_courses_relu_network(tmp_path):
    ResNet9().save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    saved.pop("activation", None)
    saved.pop("celu_alpha", None)
    config_file.write_text(json.dumps(saved))
    assert isinstance(ResNet9.from_pretrained(tmp_path).prep[2], torch.nn.ReLU)


@pytest.mark.parametrize("kwargs, words", [
    ({"activation": "gelu"}, "activation must be one of relu, celu, got 'gelu'"),
    ({"activation": None}, "activation must be one of relu, celu, got None"),
    ({"activation": "celu", "celu_alpha": 0.0}, "celu_alpha must be a number in [0.01, 10], got 0.0"),
    ({"activation": "celu", "celu_alpha": float("nan")}, "celu_alpha must be a number in [0.01, 10], got nan"),
])
def test_a_bad_activation_is_refused_saying_what_is_allowed(kwargs, words):
    with pytest.raises(ValueError) as err:
        ResNet9(**kwargs)
    assert words in str(err.value)


def test_a_release_config_with_an_unknown_activation_is_refused_naming_the_file(tmp_path):
    ResNet9().save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "activation": "tanh"}))
    with pytest.raises(ValueError, match=r"config.json of .*activation must be one of relu, celu, got 'tanh'"):
        ResNet9.from_pretrained(tmp_path)


# ---------------------------------------------------------------- patch whitening

def second_moment(basis: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    out = F.conv2d(x, basis)  # every 3x3 patch onto the 27 directions
    flat = out.permute(1, 0, 2, 3).reshape(len(basis), -1).double()
    return flat @ flat.T / (flat.shape[1] - 1)


def test_the_basis_whitens_the_training_images_patches(sample):
    images = sample.train_set.images[:500]
    exact = whiten.basis_of(images, sample.mean, sample.std, eps=1e-9)
    assert exact.shape == (27, 3, 3, 3)
    torch.testing.assert_close(second_moment(exact, normalized(sample, 500)), torch.eye(27, dtype=torch.float64),
                               rtol=0, atol=2e-3)
    # Page's eps = 1e-2 (on unit-variance pixels) damps the faint directions: lambda / (lambda + eps), still none
    # correlated with another, the strongest first.
    damped = second_moment(whiten.basis_of(images, sample.mean, sample.std), normalized(sample, 500))
    diagonal = damped.diagonal()
    assert (diagonal[:4] > 0.98).all() and (diagonal > 0).all() and (diagonal <= 1).all()
    assert (diagonal[1:] <= diagonal[:-1] + 1e-3).all()
    assert (damped - torch.diag(diagonal)).abs().max() < 1e-3


def test_whitening_folds_exactly_into_the_release_prep_convolution(sample):
    torch.manual_seed(0)
    lit = LitResNet({}, config(model={"whiten": True, "channels_last": False}).to_dict()).eval()
    plain_before = lit.model.prep[0].weight.detach().clone()
    lit.set_whitening(whiten.basis_of(sample.train_set.images, sample.mean, sample.std))
    assert not torch.allclose(lit.model.prep[0].weight, plain_before), "the basis is in use"
    assert "model.prep.0.parametrizations.weight.original" in lit.state_dict()
    x = normalized(sample, 16)
    before = lit(x)
    lit.fold_whitening()
    assert list(lit.model.state_dict()) == list(ResNet9().state_dict()), "the release's own layout"
    torch.testing.assert_close(lit(x), before, rtol=0, atol=1e-5)
    release = ResNet9()
    release.load_state_dict(lit.model.state_dict())  # strict
    torch.testing.assert_close(release.eval()(x), before, rtol=0, atol=1e-5)


def test_whitening_trains_the_coefficients_not_the_basis(sample):
    torch.manual_seed(0)
    lit = LitResNet({}, config(model={"whiten": True}).to_dict())
    lit.set_whitening(whiten.basis_of(sample.train_set.images, sample.mean, sample.std))
    conv = lit.model.prep[0]
    basis = conv.parametrizations.weight[0].basis.clone()
    coefficients = conv.parametrizations.weight.original
    assert coefficients.shape == (64, 27, 1, 1)
    assert [p for p in param_groups(lit.model, lit.config)[0]["params"] if p is coefficients]
    F.cross_entropy(lit(normalized(sample, 8)), torch.arange(8) % 10).backward()
    assert coefficients.grad is not None and coefficients.grad.abs().sum() > 0
    torch.optim.SGD([coefficients], lr=0.1).step()
    assert torch.equal(conv.parametrizations.weight[0].basis, basis)


# ---------------------------------------------------------------- frozen BN scales, the biases' LR

def test_bias_lr_scale_gives_the_biases_their_own_lr_and_weight_decay(sample):
    run = config(optim={"bias_lr_scale": 64.0, "freeze_bn_scale": True, "weight_decay": 5e-4, "max_lr": 0.1,
                        "epochs": 1})
    lit = LitResNet({}, run.to_dict())
    groups = param_groups(lit.model, run)
    bn_scales = {id(m.weight) for m in lit.model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert all(id(p) not in bn_scales for g in groups for p in g["params"]), "frozen scales are not trained"
    assert all(p.ndim > 1 for p in groups[0]["params"]) and all(p.ndim == 1 for p in groups[1]["params"])
    assert len(groups[1]["params"]) == 9, "8 BatchNorm shifts and the head's bias"
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    peaks = []

    class Peaks(L.Callback):
        def on_train_start(self, trainer, pl_module):
            opt = trainer.optimizers[0]
            peaks.extend(group["max_lr"] for group in opt.param_groups)
            peaks.extend(group["weight_decay"] for group in opt.param_groups)

    trainer.callbacks.append(Peaks())
    trainer.fit(lit, datamodule=sample)
    assert peaks == [0.1, pytest.approx(6.4), 5e-4, pytest.approx(5e-4 / 64)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight))
               for m in lit.model.modules() if isinstance(m, torch.nn.BatchNorm2d)), "scales stay at 1"
    assert any(m.bias.abs().sum() > 0 for m in lit.model.modules() if isinstance(m, torch.nn.BatchNorm2d))


# ---------------------------------------------------------------- all of them through the command

TRICKS = ["--activation", "celu", "--whiten", "--freeze-bn-scale", "--bias-lr-scale", "64", "--ema-decay", "0.9",
          "--ema-every", "2", "--optimizer", "sgd", "--max-lr", "0.05"]


@pytest.fixture(scope="module")
def tricked(tmp_path_factory):
    out = tmp_path_factory.mktemp("tricks") / "run"
    argv = ["--dataset", str(SAMPLE), "--batch-size", "32", "--num-workers", "0", "--epochs", "2",
            "--limit-train-batches", "5", "--limit-test-batches", "2", "--output-dir", str(out), *TRICKS]
    code, console = run_cli(argv)
    assert code == 0, console[-3000:]
    return out, argv


def test_a_run_with_every_trick_releases_the_plain_network(tricked):
    out, _ = tricked
    release = out / "release"
    weights = safetensors.torch.load_file(release / "model.safetensors")
    assert sorted(weights) == sorted(ResNet9().state_dict()), "the release's layout: no whitening, no extra keys"
    assert all(torch.equal(weights[k], torch.ones_like(weights[k]))
               for k in weights if k.endswith(".1.weight") and weights[k].ndim == 1), "BatchNorm scales stay 1"
    model = ResNet9.from_pretrained(release)
    assert model.activation == "celu"
    card = (release / "README.md").read_text()
    for row in ("| model.whiten | True |", "| optim.bias_lr_scale | 64 |", "| optim.freeze_bn_scale | True |",
                "| optim.ema_every | 2 |", "| model.activation | celu |",
                "every conv 3x3 with BatchNorm and CELU (alpha 0.3)."):
        assert row in card
    metrics = json.loads((out / "metrics.json").read_text())
    assert model.eval()(torch.zeros(1, 3, 32, 32)).isfinite().all() and metrics["optimizer_steps"] == 10


def test_the_biases_lr_is_logged_at_64_times_the_weights(tricked):
    out, _ = tricked
    rows = [r for r in csv.DictReader((out / "logs" / "metrics.csv").open()) if r.get("lr-SGD/pg1")]
    assert rows
    for row in rows:
        assert float(row["lr-SGD/pg2"]) == pytest.approx(64 * float(row["lr-SGD/pg1"]))


def test_resuming_a_whitened_run_restores_its_basis_and_releases_the_same_weights(tricked):
    out, argv = tricked
    first = safetensors.torch.load_file(out / "release" / "model.safetensors")
    code, console = run_cli(argv + ["--resume", "last"])
    assert code == 0, console[-3000:]
    again = safetensors.torch.load_file(out / "release" / "model.safetensors")
    for key in first:
        if "running" not in key and "num_batches" not in key:  # BatchNorm statistics are recomputed on a new pass
            assert torch.equal(first[key], again[key]), key
