"""Knowledge distillation: the loss formula, weight 0 == plain training (teacher never loaded or run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_train_loop import RandomClips, tiny_cfg

from tests.utils_model import make_tiny_checkpoint
from training.loop.losses import distillation_kl, distillation_loss, soft_cross_entropy
from training.train import train


def test_loss_formula() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    targets = F.one_hot(torch.tensor([0, 1, 2, 3]), 6).float() * 0.9 + 0.1 / 6
    hard = -(targets * F.log_softmax(s, -1)).sum(-1).mean()
    assert soft_cross_entropy(s, targets) == pytest.approx(float(hard), rel=1e-6)
    for w, temp in ((0.5, 1.0), (0.3, 4.0), (1.0, 2.0)):
        kl = F.kl_div(F.log_softmax(s / temp, -1), F.softmax(t / temp, -1), reduction="batchmean")
        expected = (1 - w) * hard + w * temp**2 * kl
        assert float(distillation_loss(s, targets, t, w, temp)) == pytest.approx(float(expected), rel=1e-5)
    assert float(distillation_kl(s, s, 3.0)) == pytest.approx(0.0, abs=1e-6)  # KL(p || p) = 0
    assert torch.equal(distillation_loss(s, targets, None, 0.0, 4.0), soft_cross_entropy(s, targets))
    with pytest.raises(ValueError, match="teacher logits"):
        distillation_loss(s, targets, None, 0.5, 1.0)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "last.pt", weights_only=True)["state_dict"]


def test_weight_zero_equals_plain_training_and_teacher_changes_it(tmp_path: Path) -> None:
    data = (RandomClips(16, 3, seed=1), RandomClips(6, 3, seed=2), ["a", "b", "c"])
    plain = train(tiny_cfg(tmp_path / "plain", epochs=1), datasets=data)
    # weight 0 with a teacher path that is not even a file: it is never loaded nor run
    zero = train(
        tiny_cfg(tmp_path / "zero", epochs=1, extra=["distill.teacher=/nonexistent.pt"]), datasets=data
    )
    assert plain["train_loss"] == zero["train_loss"]
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "zero")
    assert all(torch.equal(a[k], b[k]) for k in a)

    teacher = make_tiny_checkpoint(tmp_path / "teacher.pt", num_classes=3, num_frames=4, img_size=32, seed=5)
    extra = [f"distill.teacher={teacher}", "distill.weight=0.7", "distill.temperature=2.0"]
    kd = train(tiny_cfg(tmp_path / "kd", epochs=1, extra=extra), datasets=data)
    assert kd["train_loss"] != plain["train_loss"]
    c = _weights(tmp_path / "kd")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_teacher_gets_clips_in_its_own_normalisation(tmp_path: Path) -> None:
    """A PaddleVideo student (RGB/255) distilled from an official-normalised teacher (0.45/0.225): the
    teacher must see exactly what it would see from its own preprocessing."""
    from training.modeling.checkpoint import load_checkpoint
    from training.modeling.weights import Renormalised, load_teacher
    from training.preprocessing.spec import PADDLE_MEAN, PADDLE_STD, PreprocessSpec

    official = PreprocessSpec(
        num_frames=4, short_side=32, crop_size=32, mean=(0.45, 0.4, 0.5), std=(0.225, 0.2, 0.25)
    )
    student = official.replace(mean=PADDLE_MEAN, std=PADDLE_STD)
    path = make_tiny_checkpoint(
        tmp_path / "teacher.pt", num_classes=3, num_frames=4, img_size=32, spec=official
    )
    rgb = torch.rand(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))  # 0..1
    x_student = (rgb - torch.tensor(student.mean).view(1, 3, 1, 1, 1)) / torch.tensor(student.std).view(
        1, 3, 1, 1, 1
    )
    x_teacher = (rgb - torch.tensor(official.mean).view(1, 3, 1, 1, 1)) / torch.tensor(official.std).view(
        1, 3, 1, 1, 1
    )
    raw = load_checkpoint(path).build_model()
    teacher = load_teacher(path, torch.device("cpu"), student)
    assert isinstance(teacher, Renormalised) and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        want = raw(x_teacher)
        torch.testing.assert_close(teacher(x_student), want, atol=1e-5, rtol=0)
        assert (raw(x_student) - want).abs().max() > 1e-2  # what feeding the student's clip did before
    same = load_teacher(path, torch.device("cpu"), official)  # same statistics: no wrapper, no arithmetic
    assert not isinstance(same, Renormalised)


def test_mmaction_teacher_defaults_to_its_127_5_normalisation(tmp_path: Path) -> None:
    from test_convert import to_mmaction

    from tests.utils_model import tiny_model
    from training.modeling.weights import import_checkpoint

    sd = to_mmaction(tiny_model(3, 4, 32).state_dict(), divided=True)
    torch.save({"state_dict": sd}, tmp_path / "m.pth")
    spec = import_checkpoint(tmp_path / "m.pth", num_heads=3).preprocess
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5)
    sd["data_preprocessor.mean"] = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1, 1)
    sd["data_preprocessor.std"] = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1, 1)
    torch.save({"state_dict": sd}, tmp_path / "m2.pth")
    spec = import_checkpoint(tmp_path / "m2.pth", num_heads=3).preprocess
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406)) and spec.std == pytest.approx(
        (0.229, 0.224, 0.225)
    )
