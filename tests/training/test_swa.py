"""Stochastic weight averaging of native checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.utils_model import make_tiny_checkpoint
from training.modeling.checkpoint import CheckpointError, load_checkpoint
from training.swa import average_checkpoints, main


def test_identical_checkpoints_average_to_themselves(tmp_path: Path) -> None:
    p = make_tiny_checkpoint(tmp_path / "a.pt", seed=1)
    assert main([str(p)] * 3 + ["-o", str(tmp_path / "swa.pt")]) == 0
    a, s = load_checkpoint(p), load_checkpoint(tmp_path / "swa.pt")
    assert all(torch.equal(a.state_dict[k], s.state_dict[k]) for k in a.state_dict)
    assert s.model_config == a.model_config and s.preprocess == a.preprocess
    assert s.meta["swa"]["sources"] == [str(p)] * 3 and s.meta["swa"]["count"] == 3


def test_two_checkpoints_average_to_their_mean(tmp_path: Path) -> None:
    pa = make_tiny_checkpoint(tmp_path / "a.pt", seed=1)
    pb = make_tiny_checkpoint(tmp_path / "b.pt", seed=2)
    a, b = load_checkpoint(pa), load_checkpoint(pb)
    s = average_checkpoints([a, b], [str(pa), str(pb)])
    for k in a.state_dict:
        mean = (a.state_dict[k].double() + b.state_dict[k].double()) / 2
        assert torch.allclose(s.state_dict[k].double(), mean, atol=1e-7)
    differs = [k for k in a.state_dict if not torch.equal(a.state_dict[k], b.state_dict[k])]
    assert differs and all(not torch.equal(s.state_dict[k], a.state_dict[k]) for k in differs)
    assert all(not torch.equal(s.state_dict[k], b.state_dict[k]) for k in differs)
    model = s  # the average is a usable model of the same architecture
    x = torch.randn(1, 3, 4, 32, 32)
    assert model.build_model()(x).shape == (1, 5)


def test_mismatched_checkpoints_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pa = make_tiny_checkpoint(tmp_path / "a.pt", num_classes=5)
    pb = make_tiny_checkpoint(tmp_path / "b.pt", num_classes=4)
    with pytest.raises(CheckpointError, match="model config differs"):
        average_checkpoints([load_checkpoint(pa), load_checkpoint(pb)], [str(pa), str(pb)])
    assert main([str(pa), str(pb), "-o", str(tmp_path / "o.pt")]) == 2
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main([str(tmp_path / "junk.pt"), "-o", str(tmp_path / "o.pt")]) == 2
    assert "junk.pt" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()
