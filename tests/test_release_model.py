"""The bundled release at space/model: the real trained model the Space serves by default."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, sample_split

from resnet_cifar import ResNet9, card, release
from resnet_cifar.preprocess import normalize

RELEASE = ROOT / "space" / "model"


@pytest.fixture(scope="module")
def model() -> ResNet9:
    return ResNet9.from_pretrained(RELEASE)


@pytest.fixture(scope="module")
def test_sample() -> tuple[np.ndarray, np.ndarray]:
    return sample_split("test")


def test_the_release_is_complete_and_small():
    names = release.files(RELEASE)
    assert sorted(names) == sorted(p.name for p in RELEASE.iterdir()), "nothing but release files"
    assert {"misclassified.safetensors", "training_config.json", "confusion_matrix.png", "misclassified.png",
            "gradcam.png", "metrics.png", "lr_schedule.png"} <= set(names)
    assert sum(p.stat().st_size for p in RELEASE.iterdir()) < 30 * 2**20


def test_the_bundled_model_loads_strictly_in_eval_mode(model):
    assert not model.training
    assert model.num_classes == 10 and model.class_names[3] == "cat"
    assert sum(p.numel() for p in model.parameters()) == 6_573_130


def test_it_classifies_real_test_images_as_its_card_leads_one_to_expect(model, test_sample):
    images, labels = test_sample
    with torch.inference_mode():
        predictions = model(normalize(images, model.mean, model.std)).argmax(1).numpy()
    accuracy = float((predictions == labels).mean())
    stated = card.test_accuracy_of(RELEASE)
    # 300 images: the sample accuracy scatters around the card's with sigma = sqrt(p(1-p)/n).
    sigma = math.sqrt(stated * (1 - stated) / len(labels))
    assert accuracy >= stated - 3 * sigma, f"{accuracy:.3f} on the sample vs {stated:.3f} on the card"
    assert stated >= 0.6, "a real trained model (chance is 0.1), not a placeholder"


def test_the_card_carries_accuracy_dataset_and_recipe():
    content = (RELEASE / "README.md").read_text()
    metadata = yaml.safe_load(content.split("---\n", 2)[1])
    assert metadata["datasets"] == ["uoft-cs/cifar10"]
    assert metadata["library_name"] == "resnet-cifar" and metadata["pipeline_tag"] == "image-classification"
    result = metadata["model-index"][0]["results"][0]
    assert result["metrics"][0]["type"] == "accuracy"
    assert result["metrics"][0]["value"] == pytest.approx(card.test_accuracy_of(RELEASE))
    assert result["dataset"]["split"] == "test"
    stated = f"{card.test_accuracy_of(RELEASE) * 100:.2f} %"
    assert stated in content
    recorded = json.loads((RELEASE / "training_config.json").read_text())
    for section in ("data", "augment", "model", "optim"):
        for key, value in recorded[section].items():
            if key not in ("dataset", "num_workers", "revision"):
                assert f"| {section}.{key} |" in content, (section, key)
    cycled = recorded["optim"]["cycle_momentum"]
    assert f"| optim.cycle_momentum | {cycled} |" in content, "the card says what really ran, momentum included"
    assert "github.com" not in content and "resnet-cifar/resnet9" not in content


def test_the_misclassified_set_is_what_the_weights_get_wrong(model):
    mistakes = release.load_misclassified(RELEASE)
    assert len(mistakes) >= 100
    probs = model.probabilities(normalize(mistakes.images, model.mean, model.std)).numpy()
    assert (probs.argmax(1) == mistakes.predicted_labels).all()
    assert (mistakes.predicted_labels != mistakes.true_labels).all()
    assert np.allclose(probs.max(1), mistakes.probabilities, atol=1e-4)
    assert (np.diff(mistakes.probabilities) <= 1e-6).all(), "most confident mistakes first"
