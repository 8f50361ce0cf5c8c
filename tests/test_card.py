"""Model card: renders from package data, its YAML parses, the Hub reads the accuracy, the usage code runs."""

import ast
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from huggingface_hub import ModelCard

from resnet_cifar import CIFAR10_CLASSES
from resnet_cifar import card  # card.test_accuracy_of: imported bare, pytest would collect it as a test
from resnet_cifar.card import CardInfo, point_usage_to, render, template, validate


def info(**overrides) -> CardInfo:
    """A complete CardInfo with distinctive numbers."""
    fields = dict(
        test_accuracy=0.9312,
        per_class_accuracy={name: 0.8 + i / 100 for i, name in enumerate(CIFAR10_CLASSES)},
        recipe=[("optim.epochs", "24"), ("data.batch_size", "512"), ("max LR used", "0.0123")],
        augmentation="pad to 40x40 (reflect) and crop a random 32x32; then normalization",
        parameters=6_573_130,
        test_loss=0.2345,
        tta_accuracy=0.9401,
        train_time="7 min on one GPU",
        epochs_table=[{"epoch": 1, "train_loss": 1.5, "train_acc": 0.45, "val_loss": 1.2, "val_acc": 0.56, "lr": 0.01}],
        plots=["confusion_matrix.png", "gradcam.png"],
    )
    return CardInfo(**(fields | overrides))


def front_matter(content: str) -> dict:
    """The YAML block between the first two '---' lines."""
    assert content.startswith("---\n")
    return yaml.safe_load(content.split("---\n", 2)[1])


def test_template_is_package_data():
    text = template()
    assert text.startswith("---\n{{ card_data }}\n---")
    assert "```python" in text


def test_metadata_parses_and_the_hub_reads_the_accuracy():
    content = render(info()).content
    meta = front_matter(content)
    assert meta["library_name"] == "resnet-cifar"
    assert meta["datasets"] == ["uoft-cs/cifar10"]
    assert meta["pipeline_tag"] == "image-classification"
    assert meta["license"] == "mit"
    assert meta["metrics"] == ["accuracy"]
    assert "cifar10" in meta["tags"]
    (result,) = meta["model-index"][0]["results"]
    assert result["metrics"][0] == {"type": "accuracy", "value": 0.9312, "name": "Test accuracy (10,000 images)"}
    assert result["dataset"]["type"] == "uoft-cs/cifar10" and result["dataset"]["split"] == "test"

    data = ModelCard(content).data
    assert data.eval_results[0].metric_value == 0.9312
    assert data.eval_results[0].metric_type == "accuracy"
    assert data.eval_results[0].dataset_type == "uoft-cs/cifar10"
    assert data.library_name == "resnet-cifar"


def test_body_states_results_recipe_and_plots():
    content = render(info()).content
    assert "6,573,130 parameters" in content
    assert "**93.12 %**" in content
    assert "| test accuracy with horizontal-flip test-time augmentation | 94.01 % |" in content
    assert "| test loss | 0.2345 |" in content
    assert "| training time | 7 min on one GPU |" in content
    assert "| airplane | 80.0 % |" in content and "| truck | 89.0 % |" in content
    assert "| max LR used | 0.0123 |" in content and "| optim.epochs | 24 |" in content
    assert "Augmentation (albumentations): pad to 40x40 (reflect) and crop a random 32x32; then normalization." in content
    assert "cutout" not in content, "the card states the augmentation that ran, nothing more"
    assert "| 1 | 1.5 | 0.45 | 1.2 | 0.56 | 0.01 |" in content
    assert "![Test confusion matrix](confusion_matrix.png)" in content
    assert "![Grad-CAM of the predicted class on those mistakes](gradcam.png)" in content


def test_a_plot_that_is_not_a_release_file_is_refused():
    with pytest.raises(ValueError, match=r"plots \['notes.png'\] are not release files"):
        render(info(plots=["notes.png"]))


def test_the_card_points_at_nothing_that_does_not_exist():
    content = render(info(folder="/data/runs/r1/release")).content
    assert "github.com" not in content and "owner/" not in content and "path/to" not in content
    assert "pypi.org" not in content and "pip install resnet-cifar" not in content, "no index entry that does not exist"
    assert 'ResNet9.from_pretrained("/data/runs/r1/release")' in content
    assert 'load_misclassified("/data/runs/r1/release")' in content
    pushed = render(info(repo_id="someone/resnet9")).content
    assert 'ResNet9.from_pretrained("someone/resnet9")' in pushed
    assert 'load_misclassified("someone/resnet9")' in pushed


def test_a_push_points_the_usage_snippet_at_the_repo_it_goes_to():
    local = render(info(folder="/data/runs/r1/release")).content
    pushed = point_usage_to(local, "someone/resnet9")
    assert "/data/runs/r1/release" not in pushed
    assert pushed.count('"someone/resnet9"') == local.count('"/data/runs/r1/release"') >= 2
    validate(pushed, 0.9312)  # still a valid card with the same figures


def test_per_class_rows_of_a_class_without_test_images():
    per_class = {name: 0.5 for name in CIFAR10_CLASSES} | {"truck": None}
    assert "| truck | no test image |" in render(info(per_class_accuracy=per_class)).content


def test_optional_rows_are_left_out():
    content = render(info(tta_accuracy=None, test_loss=None, train_time=None, plots=[], epochs_table=[],
                          augmentation=None)).content
    assert "test-time augmentation |" not in content
    assert "test loss" not in content and "training time" not in content
    assert "## Plots" not in content and "### Per epoch" not in content and "Augmentation" not in content


@pytest.mark.parametrize("accuracy", [93.12, -0.1, 1.0001])
def test_accuracy_must_be_a_fraction(accuracy):
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\]"):
        render(info(test_accuracy=accuracy))


def test_test_accuracy_of_reads_the_saved_card(tmp_path):
    render(info(test_accuracy=0.87654)).save(tmp_path / "README.md")
    assert card.test_accuracy_of(tmp_path) == 0.8765
    assert card.test_accuracy_of(tmp_path / "README.md") == 0.8765


def test_test_accuracy_of_a_card_without_results(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# A card\n")
    with pytest.raises(ValueError, match="no accuracy"):
        card.test_accuracy_of(tmp_path)


def test_validate_refuses_broken_cards():
    content = render(info()).content
    with pytest.raises(ValueError, match="front matter"):
        validate(content.removeprefix("---\n"))
    with pytest.raises(ValueError, match="lacks 'pipeline_tag'"):
        validate(content.replace("pipeline_tag: image-classification\n", ""))
    with pytest.raises(ValueError, match="differs from the measured"):
        validate(content, expected_accuracy=0.5)
    assert validate(content, expected_accuracy=0.9312)["library_name"] == "resnet-cifar"


def test_usage_snippet_runs_verbatim(release_dir, tmp_path):
    content = render(info(repo_id=str(release_dir))).content  # a folder works where a Hub id would
    (code,) = re.findall(r"```python\n(.*?)```", content, flags=re.S)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    (top3,) = ast.literal_eval(done.stdout.strip())
    assert len(top3) == 3 and all(name in CIFAR10_CLASSES for name, _ in top3)


def test_the_card_says_where_the_model_comes_from_and_what_it_is_not_for():
    from resnet_cifar.model import forward_macs

    macs = forward_macs()
    assert macs == pytest.approx(0.3793e9, rel=1e-3), "forward MACs of one 32x32 image, counted by torch"
    content = render(info(parameters=6_573_130, macs=macs)).content
    assert "- **Parameters (M):** 6.57" in content and "- **GMACs:** 0.38 (one forward pass of one 32x32 image)" in content
    assert "David Page, [How to train your ResNet]" in content and "ERA V1 course" in content
    assert "- **Image size:** 32 x 32 RGB" in content and "50,000 training and 10,000 test photos" in content
    assert "## Intended use and limitations" in content and "still gets one of these 10 classes" in content
    assert "GMACs" not in render(info()).content, "no figure the card was not given"


@pytest.mark.slow
def test_the_cards_install_lines_and_usage_snippet_run_verbatim_in_a_fresh_environment(tmp_path):
    """What a Hub visitor does: build the wheel as the card says, install it in a new virtual environment, run the
    snippet exactly as the card prints it against the release folder it names."""
    from conftest import ROOT, make_release

    folder = make_release(tmp_path / "release")
    content = render(info(folder=str(folder))).content
    usage = content[content.index("## Usage"):]
    build_line = re.search(r"`(pip wheel [^`]+)`", usage).group(1)
    install_line = re.search(r"`(pip install [^`]+)`", usage).group(1)
    snippet = re.search(r"```python\n(.*?)```", usage, re.S).group(1)
    source = tmp_path / "resnet-cifar"  # the source tree, as a Space or a checkout carries it
    shutil.copytree(ROOT / "resnet_cifar", source / "resnet_cifar", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    python = sys.executable
    subprocess.run(build_line.replace("pip ", f"{python} -m pip ", 1), shell=True, cwd=source, check=True,
                   capture_output=True, timeout=600)
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = f"{venv / 'bin' / 'python'} -m pip"
    # This machine's CPU build of torch first (a bare `torch` would fetch CUDA wheels here); the card's line then
    # installs the wheel and the rest of its requirements, verbatim.
    subprocess.run(f"{pip} install -q torch==2.13.0", shell=True, check=True, capture_output=True, timeout=900)
    subprocess.run(install_line.replace("pip ", f"{pip} ", 1) + " -q", shell=True, cwd=source, check=True,
                   capture_output=True, timeout=900)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([str(venv / "bin" / "python"), "-c", snippet], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("[[('") and "site-packages/resnet_cifar" not in result.stderr
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import resnet_cifar; print(resnet_cifar.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120).stdout
    assert str(venv) in where, "the wheel's copy ran, not this checkout"
