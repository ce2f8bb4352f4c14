"""The native checkpoint: layout, safe loading, atomic writes, and errors that name the problem."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from training.modeling.checkpoint import (
    FORMAT,
    Checkpoint,
    CheckpointError,
    atomic_torch_save,
    load_checkpoint,
    save_checkpoint,
)
from training.preprocessing.spec import PreprocessSpec


def _ckpt(**kw) -> Checkpoint:
    base = dict(
        model_config={"num_classes": 3, "embed_dim": 8},
        preprocess=PreprocessSpec(
            num_frames=4, crop_size=32, short_side=32, mean=(0.45,) * 3, std=(0.225,) * 3
        ),
        state_dict={"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
        labels=["a", "b", "c"],
        meta={"source": "test"},
    )
    base.update(kw)
    return Checkpoint(**base)


def test_round_trip_keeps_everything(tmp_path: Path) -> None:
    ck = _ckpt(train_state={"epoch": 3, "rng": torch.get_rng_state()})
    p = save_checkpoint(ck, tmp_path / "a.pt")
    back = load_checkpoint(p)
    assert back.model_config == ck.model_config
    assert back.preprocess == ck.preprocess
    assert back.labels == ["a", "b", "c"]
    assert back.meta == {"source": "test"}
    assert torch.equal(back.state_dict["w"], ck.state_dict["w"])
    assert back.train_state is None  # not loaded unless asked
    full = load_checkpoint(p, with_train_state=True)
    assert full.train_state["epoch"] == 3


def test_label_names_default_when_absent() -> None:
    assert _ckpt(labels=None).label_names() == ["class_0", "class_1", "class_2"]


def test_atomic_save_leaves_no_temp_and_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    save_checkpoint(_ckpt(), target)
    before = target.read_bytes()

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("boom while pickling")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"x": Unsaveable()}, target)
    assert target.read_bytes() == before  # the old checkpoint is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_code_in_a_checkpoint_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": Evil()}, p)
    with pytest.raises(CheckpointError, match="not a loadable native checkpoint"):
        load_checkpoint(p)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("state_dict"), "'state_dict' missing"),
        (lambda d: d.update(format="other/9"), "not a native checkpoint"),
        (lambda d: d["state_dict"].update(bad=[1, 2]), "not tensors: \\['bad'\\]"),
        (lambda d: d.update(labels=["only-one"]), "1 labels for num_classes=3"),
        (lambda d: d["preprocess"].update(sampling="sideways"), "sampling must be one of"),
        (lambda d: d["preprocess"].update(colour="red"), "unknown preprocessing spec keys: \\['colour'\\]"),
    ],
)
def test_malformed_checkpoints_name_the_fault(tmp_path: Path, mutate, message: str) -> None:
    d = _ckpt().to_dict()
    mutate(d)
    p = tmp_path / "bad.pt"
    torch.save(d, p)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(p)


def test_truncated_garbage_and_missing_files(tmp_path: Path) -> None:
    good = save_checkpoint(_ckpt(), tmp_path / "good.pt")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="trunc.pt: not a loadable"):
        load_checkpoint(trunc)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(junk)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CheckpointError, match="plain.pkl"):
        load_checkpoint(plain)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")
