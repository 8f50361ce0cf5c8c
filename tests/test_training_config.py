"""training.config: one typed tree of settings, from which the command line, recipe files, the checkpoint's record,
training_config.json and the card's recipe table all come."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

from training import config as cfg
from training.config import ConfigError, RunConfig, build_parser, fields, flag, load_recipe, resolve

RECIPES = ROOT / "recipes"


def run_config(*argv: str) -> RunConfig:
    return resolve(build_parser().parse_args(list(argv)))


def test_every_setting_has_one_flag_whose_help_shows_its_default_once(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    options = re.split(r"\n  (?=--)", text)
    for _, _, f in fields():
        entries = [o for o in options if o.startswith(flag(f.name) + " ") or o.startswith(flag(f.name) + ",")
                   or o.startswith(flag(f.name) + "\n")]
        assert len(entries) == 1, f.name
        assert len(re.findall(r"\(default:", entries[0])) == 1, entries[0]
    assert text.count("(default:") == len(fields())
    flat = re.sub(r"\s+", " ", text)
    assert "(default: 5/24)" in flat and "(default: the LR finder's suggestion)" in flat


def test_defaults_are_the_courses():
    c = run_config()
    assert (c.optim.optimizer, c.optim.epochs, c.optim.max_lr, c.optim.pct_start) == ("adam", 24, None, 5 / 24)
    assert (c.augment.pad, c.augment.flip_p, c.augment.cutout, c.augment.cutout_p) == (4, 0.5, 8, 0.5)
    assert c.data.batch_size is None, "512, or smaller on a small split: settled by the data module"


def test_recipes_resolve_and_flags_override_them():
    dawn = run_config("--config", str(RECIPES / "dawnbench-24.yaml"))
    assert (dawn.optim.optimizer, dawn.optim.max_lr, dawn.optim.momentum, dawn.optim.cycle_momentum) == (
        "sgd", 0.4, 0.9, False)
    assert (dawn.optim.label_smoothing, dawn.optim.weight_decay, dawn.model.logit_scale) == (0.2, 5e-4, 0.125)
    assert (dawn.data.batch_size, dawn.hardware.precision, dawn.optim.div_factor) == (512, "bf16-mixed", 40.0)
    assert dawn.optim.pct_start == pytest.approx(5 / 24, abs=1e-6)
    mine = run_config("--config", str(RECIPES / "dawnbench-24.yaml"), "--epochs", "10", "--no-channels-last",
                      "--accelerator", "cpu")
    assert (mine.optim.epochs, mine.model.channels_last, mine.hardware.accelerator) == (10, False, "cpu")
    assert mine.optim.max_lr == 0.4, "what the flags do not name comes from the recipe"
    course = run_config("--config", str(RECIPES / "course.yaml"))
    assert course.optim.optimizer == "adam" and course.optim.max_lr is None


@pytest.mark.parametrize("argv, words", [
    (["--div-factor", "0"], r"--div-factor must be a number in \[1, 1e6\], got 0"),
    (["--limit-train-batches", "0"], "--limit-train-batches must be a whole number >= 1 or a fraction"),
    (["--limit-test-batches", "1.5"], "--limit-test-batches must be"),
    (["--max-lr", "inf"], r"--max-lr must be a number in \(0, 10\], got inf"),
    (["--max-lr", "nan"], "--max-lr must be"),
    (["--max-lr", "-1"], "--max-lr must be"),
    (["--epochs", "0"], "--epochs must be a whole number >= 1"),
    (["--epochs", "2.5"], "--epochs must be a whole number >= 1"),
    (["--batch-size", "0"], "--batch-size must be a whole number >= 1"),
    (["--momentum", "1"], r"--momentum must be a number in \[0, 1\)"),
    (["--cutout", "40"], "--cutout must be a whole number from 0 to 32"),
    (["--ema-decay", "1.5"], r"--ema-decay must be a number in \(0, 1\)"),
    (["--ema-every", "0"], "--ema-every must be a whole number >= 1"),
    (["--bias-lr-scale", "0"], r"--bias-lr-scale must be a number in \(0, 1000\]"),
    (["--celu-alpha", "20"], r"--celu-alpha must be a number in \[0.01, 10\]"),
    (["--val-fraction", "1"], r"--val-fraction must be a number in \[0, 1\)"),
])
def test_bad_values_are_refused_naming_the_flag_and_what_is_allowed(argv, words):
    with pytest.raises(ConfigError, match=words):
        run_config(*argv)


def test_argparse_refuses_unknown_choices(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--optimizer", "rmsprop"])
    assert "invalid choice: 'rmsprop'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--activation", "gelu"])
    assert "invalid choice: 'gelu' (choose from 'relu', 'celu')" in capsys.readouterr().err


@pytest.mark.parametrize("text, words", [
    ("optim:\n  epoch: 3\n", r"unknown keys \['epoch'\] in section 'optim'"),
    ("training:\n  epochs: 3\n", r"unknown sections \['training'\]"),
    ("optim: 3\n", "section 'optim' must be a mapping"),
    ("optim:\n  max_lr: ten\n", "--max-lr must be"),
    ("- a list\n", "must be a mapping of sections"),
    ("optim: [unclosed\n", "is not valid YAML"),
])
def test_a_bad_recipe_file_is_refused(tmp_path, text, words):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_recipe(path)


def test_a_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        load_recipe(tmp_path / "nope.yaml")


def test_the_resolved_config_round_trips_as_plain_json():
    c = run_config("--config", str(RECIPES / "dawnbench-24.yaml"), "--output-dir", "runs/x")
    plain = c.to_dict()
    assert plain["output"]["output_dir"] == "runs/x"
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain
    assert RunConfig.from_dict(plain).to_dict() == plain


def test_card_rows_cover_what_shapes_the_weights_and_leave_out_where_things_go():
    rows = dict(run_config("--push-to-hub", "someone/x", "--output-dir", "runs/x").card_rows())
    assert rows["optim.optimizer"] == "adam" and rows["augment.cutout"] == "8" and rows["random.seed"] == "0"
    assert rows["optim.max_lr"] == "-" and rows["model.recalibrate_bn"] == "True"
    assert not any(key.startswith("output.") and key != "output.misclassified" for key in rows)
    assert "data.dataset" not in rows and "hardware.devices" not in rows


def test_a_new_hyperparameter_is_one_field(monkeypatch):
    """Adding a field to a section is all it takes: a flag, a recipe key, a checked value and a card row."""

    @dataclasses.dataclass
    class Optim(cfg.OptimConfig):
        grad_clip: float = cfg.setting(0.0, "clip the gradient norm (0: off)", cfg.between(0, 100),
                                       "a number in [0, 100]")

    monkeypatch.setitem(cfg.SECTIONS, "optim", Optim)
    monkeypatch.setattr(cfg, "RunConfig", dataclasses.make_dataclass(
        "RunConfig", [("optim", Optim, dataclasses.field(default_factory=Optim))], bases=(RunConfig,)))
    c = run_config("--grad-clip", "1.5")
    assert c.optim.grad_clip == 1.5 and dict(c.card_rows())["optim.grad_clip"] == "1.5"
    assert c.to_dict()["optim"]["grad_clip"] == 1.5
    with pytest.raises(ConfigError, match=r"--grad-clip must be a number in \[0, 100\], got -1"):
        run_config("--grad-clip", "-1")


def test_augmentation_words_follow_the_config():
    assert "cutout" in cfg.AugmentConfig().describe()
    assert "cutout" not in cfg.AugmentConfig(cutout_p=0).describe()
    assert cfg.AugmentConfig(pad=0, flip_p=0, cutout=0).describe().startswith("none")


@pytest.mark.parametrize("command, argv", [
    ("train", ["--help"]), ("train", ["--epochs", "0"]), ("train", ["--activation", "gelu"]),
    ("push", ["--help"]), ("push", []), ("evaluate", ["--help"]), ("evaluate", []),
])
def test_help_and_bad_arguments_answer_before_torch_lightning_or_datasets_load(command, argv):
    """The console commands parse first: --help and a bad argument never wait for the heavy imports."""
    code = ("import sys\nfrom training import commands\n"
            f"try:\n    commands.{command}({argv!r})\nexcept SystemExit as exit_:\n    status = exit_.code\n"
            "heavy = sorted(m for m in ('torch', 'lightning', 'datasets', 'gradio', 'huggingface_hub') if m in sys.modules)\n"
            "print('STATUS', status, 'HEAVY', heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr[-2000:]
    assert ("STATUS 0" if argv == ["--help"] else "STATUS 2") in result.stdout
    if argv != ["--help"]:
        assert result.stderr.strip().splitlines()[-1].startswith(f"resnet-cifar-{command.replace('uate', '')}: error:")


def test_the_seed_is_a_setting_of_section_random_and_older_records_with_a_top_level_seed_still_read():
    assert run_config("--seed", "3").random.seed == 3
    assert "seed" not in RunConfig().to_dict() and RunConfig().to_dict()["random"] == {"seed": 0}
    assert RunConfig.from_dict({"seed": 3}).random.seed == 3  # a checkpoint or release written before 2026-12-03
    shipped = json.loads((ROOT / "space" / "model" / "training_config.json").read_text())
    assert "seed" in shipped, "the bundled release is a record in the older layout"
    shipped.pop("max_lr_used")
    assert RunConfig.from_dict(shipped).random.seed == shipped["seed"]
    assert RunConfig.from_dict({"seed": 3, "random": {"seed": 3}}).random.seed == 3
    with pytest.raises(ConfigError, match="two seeds, 3 at the top and 4 in section 'random'; give one, as random.seed"):
        RunConfig.from_dict({"seed": 3, "random": {"seed": 4}})
    with pytest.raises(ConfigError, match=r"--seed must be a whole number >= 0, got -1"):
        RunConfig.from_dict({"random": {"seed": -1}})
    with pytest.raises(ConfigError, match=r"unknown sections \['sed'\]; allowed are data, .*, random"):
        RunConfig.from_dict({"sed": 3})


def test_a_checkpoint_with_a_top_level_seed_resumes_and_a_changed_seed_is_named():
    from training.checkpoints import CheckpointError, check_resumable

    older = RunConfig().to_dict()
    older["seed"] = older.pop("random")["seed"] + 3  # the layout before 2026-12-03, a run of seed 3
    checkpoint = {"hyper_parameters": {"config": older, "model_config": {"num_classes": 10}}}
    check_resumable(checkpoint, "old.ckpt", run_config("--seed", "3").to_dict(), {"num_classes": 10})
    with pytest.raises(CheckpointError, match=r"trained with other settings \(--seed 3 -> 0\)"):
        check_resumable(checkpoint, "old.ckpt", RunConfig().to_dict(), {"num_classes": 10})


def test_a_recipe_with_a_top_level_seed_is_read_and_the_flag_overrides_it(tmp_path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("seed: 5\noptim:\n  epochs: 2\n")
    assert run_config("--config", str(recipe)).random.seed == 5
    assert run_config("--config", str(recipe), "--seed", "7").random.seed == 7
