"""Config system: YAML + dotted overrides, defaults, typo protection, and every shipped recipe loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.config import DEFAULTS, ConfigError, load_config, parse_override, preprocess_spec, save_config
from training.train import main as train_main

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "training" / "configs").glob("*.yaml"))


def test_defaults_load_and_overrides_parse_as_yaml() -> None:
    cfg = load_config(
        None,
        [
            "optimizer.lr=0.1",
            "schedule.steps=[11, 14]",
            "model.pretrained=null",
            "train.amp=fp32",
            "optimizer.nesterov=false",
        ],
    )
    assert cfg["optimizer"]["lr"] == 0.1
    assert cfg["schedule"]["steps"] == [11, 14]
    assert cfg["model"]["pretrained"] is None
    assert cfg["optimizer"]["nesterov"] is False
    assert cfg["train"]["epochs"] == DEFAULTS["train"]["epochs"]


def test_yaml_then_overrides_later_wins(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("seed: 3\noptimizer: {lr: 0.5}\nmodel: {arch: timesformer_tiny, img_size: 32}\n")
    cfg = load_config(p, ["optimizer.lr=0.2", "optimizer.lr=0.3", "model.depth=1"])
    assert cfg["seed"] == 3 and cfg["optimizer"]["lr"] == 0.3
    assert cfg["model"] == {"arch": "timesformer_tiny", "pretrained": None, "img_size": 32, "depth": 1}


@pytest.mark.parametrize(
    "override, match",
    [
        ("optimizer.lrr=0.1", "unknown config key 'optimizer.lrr'"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.global_batch_size=12", "multiple of"),
        ("train.amp=fp8", "train.amp"),
        ("mix.prob=1.5", "mix.prob"),
        ("distill.weight=0.5", "distill.teacher"),
        ("optimizer.lr", "key=value"),
        ("optimizer.lr=[", "not valid YAML"),
        ("data.train_preprocess.sampling=bogus", "data.train_preprocess"),
    ],
)
def test_bad_overrides_name_the_key(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "typo.yaml").write_text("trian: {epochs: 1}\n")
    with pytest.raises(ConfigError, match="typo.yaml: unknown config key 'trian'"):
        load_config(tmp_path / "typo.yaml")


def test_cli_exit_code_2_on_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text("optimizer: {name: lamb}\n")
    assert train_main(["-c", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optimizer.name" in err[0]


def test_val_and_test_specs_inherit_frames_crop_and_normalisation() -> None:
    cfg = load_config(
        None,
        [
            "data.train_preprocess={num_frames: 16, crop_size: 48, sampling: segment, "
            "crops: random, mean: [0.45, 0.45, 0.45], std: [0.225, 0.225, 0.225]}",
            "data.test_preprocess={crops: three, short_side: 48}",
        ],
    )
    spec = preprocess_spec(cfg, "test_preprocess")
    assert (spec.num_frames, spec.crop_size, spec.crops, spec.sampling) == (16, 48, "three", "uniform")
    assert spec.mean == (0.45, 0.45, 0.45) and spec.std == (0.225, 0.225, 0.225)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_recipes_load(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    for which in ("train_preprocess", "val_preprocess", "test_preprocess"):
        preprocess_spec(cfg, which)
    # the resolved config round-trips through the config.yaml written beside checkpoints
    save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == cfg
    assert load_config(tmp_path / "config.yaml") == cfg


def test_parse_override_keeps_equals_in_values() -> None:
    assert parse_override("output_dir=runs/a=b") == (["output_dir"], "runs/a=b")


def test_cutmix_mode_key() -> None:
    from training.config import ConfigError, load_config

    assert load_config(None)["mix"]["cutmix_mode"] == "spatial"
    assert load_config(None, ["mix.cutmix_mode=paddle"])["mix"]["cutmix_mode"] == "paddle"
    with pytest.raises(ConfigError, match="mix.cutmix_mode must be spatial|paddle"):
        load_config(None, ["mix.cutmix_mode=time"])


def test_shipped_recipes_state_the_published_settings() -> None:
    """The recipes load, and hold what docs/training.md says they reproduce."""
    root = Path(__file__).resolve().parents[2] / "training" / "configs"
    for name in ("pptimesformer_k400_8x224", "pptimesformer_k400_16x224", "pptimesformer_ucf101_8x224"):
        cfg = load_config(root / f"{name}.yaml")
        assert preprocess_spec(cfg, "train_preprocess").sampling == "paddle_train", name
        val = preprocess_spec(cfg, "val_preprocess")
        assert (val.short_side, val.crop_size, val.crops) == (256, 224, "center"), name
        assert cfg["optimizer"]["nesterov"] and cfg["model"]["drop_path_rate"] == 0.1, name
        assert cfg["mix"]["prob"] == 1.0 and cfg["mix"]["cutmix_mode"] == "spatial", name
    official = load_config(root / "timesformer_k400_8x224.yaml")
    assert official["optimizer"]["nesterov"] is True and official["model"]["drop_path_rate"] == 0.1
    assert preprocess_spec(official, "train_preprocess").sampling == "paddle_train"
    assert official["data"]["skip_failures"] is False
