"""Model card rendering from the template kept as package data, with Hub-readable eval results."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .preprocess import CIFAR10_CLASSES
from .layout import (CARD_NAME, CONFIG_NAME, LIBRARY_NAME, LICENSE, MISCLASSIFIED_NAME, PLOTS, TAGS, TRAINING_CONFIG_NAME,
                     WEIGHTS_NAME)

DEFAULT_DATASET = "uoft-cs/cifar10"


@dataclass
class CardInfo:
    """Everything a release's model card states; accuracies are fractions in [0, 1].

    `recipe` is the (setting, value) rows of the run's resolved config, `augmentation` the words for what the
    augmentation did; `repo_id` is the Hub repo the release is pushed to (None: a local release folder).
    """

    test_accuracy: float
    per_class_accuracy: dict[str, float | None]
    recipe: list[tuple[str, str]]
    parameters: int
    macs: float | None = None  # multiply-accumulates of one forward pass on one 32x32 image
    augmentation: str | None = None
    repo_id: str | None = None
    activation: str = "ReLU"  # as the card names the model's nonlinearity: ReLU, or CELU (alpha 0.3)
    folder: str | None = None  # the release folder's own path: the usage snippet's source when there is no repo_id
    class_names: tuple[str, ...] = CIFAR10_CLASSES
    test_loss: float | None = None
    tta_accuracy: float | None = None
    test_images: int = 10_000
    test_split_images: int | None = None  # the whole split's size (None: the same as test_images)
    run: dict[str, Any] | None = None  # the run's metrics.json
    calibration: list[tuple[str, str]] = field(default_factory=list)  # (figure, value) rows
    dataset: str = DEFAULT_DATASET
    model_name: str = "ResNet-9 for CIFAR-10"
    train_time: str | None = None
    epochs_table: list[dict[str, Any]] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)  # release file names, shown with their captions from PLOTS
    license: str = LICENSE


def template() -> str:
    """The Jinja template of the model card, read from package data."""
    return resources.files("resnet_cifar").joinpath("templates/model_card.md").read_text(encoding="utf-8")


def measured_split(info: CardInfo) -> str:
    """The split the figures come from, in datasets' slice notation when only part of it was measured."""
    whole = info.test_split_images if info.test_split_images is not None else info.test_images
    return "test" if info.test_images >= whole else f"test[:{info.test_images}]"


def card_data(info: CardInfo) -> ModelCardData:
    """YAML metadata: library, license, tags, dataset, metrics and a model-index with the test accuracy."""
    if not 0.0 <= info.test_accuracy <= 1.0:
        raise ValueError(f"test_accuracy must be a fraction in [0, 1], got {info.test_accuracy!r}")
    dataset_name = "CIFAR-10" if info.dataset == DEFAULT_DATASET else Path(info.dataset).name
    return ModelCardData(
        library_name=LIBRARY_NAME,
        license=info.license,
        tags=[*TAGS, "pytorch-lightning", "model_hub_mixin"],
        datasets=[DEFAULT_DATASET],
        metrics=["accuracy"],
        pipeline_tag="image-classification",
        model_name=info.model_name,
        eval_results=[
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=DEFAULT_DATASET,
                dataset_name=dataset_name,
                dataset_config="plain_text",
                dataset_split=measured_split(info),
                metric_type="accuracy",
                metric_name=f"Test accuracy ({info.test_images:,} images)",
                metric_value=round(float(info.test_accuracy), 4),
            )
        ],
    )


def render(info: CardInfo) -> ModelCard:
    """Render the model card and check that its metadata reads back with the same accuracy."""
    dataset_url = f"https://huggingface.co/datasets/{DEFAULT_DATASET}"
    unknown = [name for name in info.plots if name not in PLOTS]
    if unknown:
        raise ValueError(f"plots {unknown} are not release files; the release's plots are {', '.join(PLOTS)}")
    card = ModelCard.from_template(
        card_data(info),
        template_str=template(),
        dataset_url=dataset_url,
        files={"weights": WEIGHTS_NAME, "config": CONFIG_NAME, "misclassified": MISCLASSIFIED_NAME,
               "training_config": TRAINING_CONFIG_NAME},
        plot_captions=PLOTS,
        dataset_label=f"`{info.dataset}`" if info.dataset == DEFAULT_DATASET else
        f"the local dataset folder `{Path(info.dataset).name}`",
        source=python_string(info.repo_id or info.folder or "."),
        **{k: v for k, v in vars(info).items() if k != "license"},
    )
    validate(card.content, info.test_accuracy)
    return card


USAGE_SOURCE = re.compile(r"""(ResNet9\.from_pretrained|load_misclassified)\(("[^"\n]*"|'[^'\n]*')\)""")


def python_string(text: str) -> str:
    """`text` as a Python string literal for the card's code: the snippet runs as written."""
    return json.dumps(text, ensure_ascii=False)


def point_usage_to(content: str, source: str) -> str:
    """The card with its usage snippet loading `source` (the repo it is pushed to), so it runs verbatim there."""
    return USAGE_SOURCE.sub(lambda match: f"{match.group(1)}({python_string(source)})", content)


def validate(content: str, expected_accuracy: float | None = None) -> dict[str, Any]:
    """Parse a card's YAML front matter; raise ValueError if the Hub could not read its metadata or accuracy."""
    if not content.startswith("---\n"):
        raise ValueError("model card must start with a YAML front matter block ('---')")
    try:
        metadata = yaml.safe_load(content.split("---\n", 2)[1])
    except (IndexError, yaml.YAMLError) as err:
        raise ValueError(f"model card YAML does not parse: {err}") from err
    for key in ("library_name", "license", "pipeline_tag", "datasets", "model-index"):
        if key not in metadata:
            raise ValueError(f"model card metadata lacks {key!r}")
    results = ModelCard(content).data.eval_results or []
    accuracies = [r.metric_value for r in results if r.metric_type == "accuracy"]
    if not accuracies:
        raise ValueError("model card model-index carries no accuracy result")
    if expected_accuracy is not None and abs(accuracies[0] - round(float(expected_accuracy), 4)) > 1e-9:
        raise ValueError(f"model card accuracy {accuracies[0]} differs from the measured {expected_accuracy}")
    return metadata


def test_accuracy_of(source: str | Path) -> float:
    """The test accuracy a release's card states (a README.md path or a folder holding one)."""
    path = Path(source)
    card = ModelCard.load(path / CARD_NAME if path.is_dir() else path)
    for result in card.data.eval_results or []:
        if result.metric_type == "accuracy":
            return float(result.metric_value)
    raise ValueError(f"{source} has no accuracy in its model-index")
