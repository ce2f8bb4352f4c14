"""File lists, label lists, VideoDataset (seeded randomness, cache, failures) and the datasets of a
training config's ``data`` section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.utils_video import encode_video, moving_square_frames
from training.config import load_config
from training.data.datasets import (
    SeededDataset,
    VideoDataset,
    build_datasets,
    config_entries,
    sample_rng,
)
from training.data.lists import DatasetError, VideoEntry, read_file_list, read_label_list
from training.preprocessing import VideoDecodeError
from training.preprocessing.spec import PreprocessSpec

TRAIN = PreprocessSpec(
    num_frames=4,
    sampling="segment",
    short_side=32,
    short_side_max=40,
    crop_size=32,
    crops="random",
    flip=True,
)
EVAL = PreprocessSpec(num_frames=4, short_side=32, crop_size=32, crops="three")


def test_kinetics_and_label_lists(tmp_path: Path) -> None:
    (tmp_path / "label.txt").write_text("0 abseiling\n1 air drumming\n")
    (tmp_path / "train.list").write_text("abseiling/x_000001_000011.mp4 0\nair drumming/y z.mp4 1\n\n")
    names = read_label_list(tmp_path / "label.txt")
    assert names == ["abseiling", "air drumming"]
    entries = read_file_list(tmp_path / "train.list", labels=names)
    assert entries == [VideoEntry("abseiling/x_000001_000011.mp4", 0), VideoEntry("air drumming/y z.mp4", 1)]


def test_ucf101_formats(tmp_path: Path) -> None:
    (tmp_path / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 ApplyLipstick\n")
    names = read_label_list(tmp_path / "classInd.txt")
    assert names == ["ApplyEyeMakeup", "ApplyLipstick"]  # 1-based ids become 0-based
    (tmp_path / "paddle.list").write_text("ucf/ApplyLipstick/v_ApplyLipstick_g01_c02 1\n")
    assert read_file_list(tmp_path / "paddle.list", suffix=".avi") == [
        VideoEntry("ucf/ApplyLipstick/v_ApplyLipstick_g01_c02.avi", 1)
    ]
    (tmp_path / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n")
    assert read_file_list(tmp_path / "trainlist01.txt", label_base=1)[0].label == 0
    (tmp_path / "testlist01.txt").write_text("ApplyLipstick/v_ApplyLipstick_g01_c01.avi\n")
    assert read_file_list(tmp_path / "testlist01.txt", labels=names)[0].label == 1


def test_malformed_lists_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "bad_labels.txt").write_text("0 a\n2 b\n")
    with pytest.raises(DatasetError, match="without gaps"):
        read_label_list(tmp_path / "bad_labels.txt")
    (tmp_path / "nolabel.list").write_text("a/b.mp4 0\nc/d.mp4\n")
    with pytest.raises(DatasetError, match="nolabel.list:2"):
        read_file_list(tmp_path / "nolabel.list")
    (tmp_path / "range.list").write_text("a/b.mp4 3\n")
    with pytest.raises(DatasetError, match="range.list:1: label 3 out of range"):
        read_file_list(tmp_path / "range.list", labels=["a", "b"])
    (tmp_path / "empty.list").write_text("\n")
    with pytest.raises(DatasetError, match="empty"):
        read_file_list(tmp_path / "empty.list")
    with pytest.raises(DatasetError, match="missing.list: no such file list"):
        read_file_list(tmp_path / "missing.list")
    with pytest.raises(DatasetError, match="missing.txt: no such label list"):
        read_label_list(tmp_path / "missing.txt")


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[VideoEntry]]:
    root = tmp_path_factory.mktemp("ds")
    entries = []
    for i, dx in enumerate([3, -3, 2]):
        encode_video(root / f"v{i}.mp4", moving_square_frames(20, 40, 56, dx=dx, seed=i), "h264", gop=10)
        entries.append(VideoEntry(f"v{i}.mp4", i % 2))
    return root, entries


def test_training_samples_are_a_function_of_seed_epoch_index(tiny_set: tuple[Path, list[VideoEntry]]) -> None:
    root, entries = tiny_set
    a = VideoDataset(entries, root, TRAIN, train=True, seed=7)
    b = VideoDataset(entries, root, TRAIN, train=True, seed=7)
    x0, y0 = a[1]
    assert x0.shape == (1, 3, 4, 32, 32) and x0.dtype == torch.float32 and y0 == 1
    _ = b[0], b[2]  # another access order (as another worker would) changes nothing
    assert torch.equal(b[1][0], x0)
    a.set_epoch(1)
    assert not torch.equal(a[1][0], x0)
    a.set_epoch(0)
    assert torch.equal(a[1][0], x0)
    e = VideoDataset(entries, root, EVAL, train=False)
    assert e[0][0].shape == (3, 3, 4, 32, 32)
    assert VideoDataset(entries, root, EVAL, train=False, num_views=1)[0][0].shape == (1, 3, 4, 32, 32)


def test_cache_matches_decoding(tiny_set: tuple[Path, list[VideoEntry]]) -> None:
    root, entries = tiny_set
    spec = PreprocessSpec(num_frames=4, sampling="segment", short_side=32, crop_size=32, crops="center")
    plain = VideoDataset(entries, root, spec, train=True, seed=3)
    cached = VideoDataset(entries, root, spec, train=True, seed=3, cache=True)
    for i in range(len(entries)):
        diff = (plain[i][0] - cached[i][0]).abs().max().item()
        assert diff <= 0.6 / 255  # one uint8 rounding of the cached frames
    assert len(cached._frames) == len(entries)
    # deterministic samples are cached as the finished views: bit-identical to decoding
    plain_eval = VideoDataset(entries, root, EVAL, train=False)
    cached_eval = VideoDataset(entries, root, EVAL, train=False, cache=True)
    for i in range(len(entries)):
        assert torch.equal(cached_eval[i][0], plain_eval[i][0])
        assert torch.equal(cached_eval[i][0], plain_eval[i][0])  # second read: from the cache
    assert len(cached_eval._views) == len(entries) and not cached_eval._frames
    loader = torch.utils.data.DataLoader(cached, batch_size=3)
    views, labels = next(iter(loader))
    assert views.shape == (3, 1, 3, 4, 32, 32) and labels.tolist() == [0, 1, 0]


def test_failures_stop_or_are_skipped_and_counted(
    tiny_set: tuple[Path, list[VideoEntry]], tmp_path: Path
) -> None:
    root, entries = tiny_set
    (root / "broken.mp4").write_bytes(b"\x00" * 200)
    bad = [entries[0], VideoEntry("broken.mp4", 1), *entries[1:]]
    strict = VideoDataset(bad, root, EVAL, train=False)
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        strict[1]
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        SeededDataset(strict, 0)[(1, 0)]
    lenient = VideoDataset(bad, root, EVAL, train=False, skip_failures=True)
    assert lenient[1] is None
    assert lenient.failures and lenient.failures[0][0] == "broken.mp4"
    keyed = SeededDataset(lenient, 0)
    x, y = keyed[(1, 0)]  # the next video of the list takes the broken one's place
    assert torch.equal(x, lenient[2][0]) and y == bad[2].label
    assert keyed.take_failures() == 1 and keyed.take_failures() == 0
    # Counted across DataLoader worker processes too: two epochs' worth, read once.
    loader = torch.utils.data.DataLoader(
        keyed, batch_size=2, num_workers=2, sampler=[(i, 0) for i in range(4)] * 2
    )
    assert sum(b[0].shape[0] for b in loader) == 8
    assert keyed.take_failures() == 2
    # A list of nothing but broken files is an error, not an endless search.
    (root / "broken2.mp4").write_bytes(b"junk")
    hopeless = VideoDataset([VideoEntry("broken.mp4", 0), VideoEntry("broken2.mp4", 0)], root, EVAL,
                            train=False, skip_failures=True)  # fmt: skip
    with pytest.raises(VideoDecodeError, match="2 videos in a row failed"):
        SeededDataset(hopeless, 0)[(0, 0)]


def test_paddle_train_sampling_is_drawn_per_sample(tmp_path: Path) -> None:
    """paddle_train is a random mode: training feeds it the (seed, epoch, index) RNG, evaluation none."""
    from tests.utils_video import index_frames, level_to_index
    from training.preprocessing.sampling import sample_indices

    encode_video(tmp_path / "idx.mp4", index_frames(56, 32, 32), "h264", fps=5, gop=8)
    spec = PreprocessSpec(num_frames=2, sampling="paddle_train", short_side=32, crop_size=32, crops="center")
    ds = VideoDataset([VideoEntry("idx.mp4", 0)], tmp_path, spec, train=True, seed=0, single_view=True)
    starts = set()
    for epoch in range(6):
        x, _ = ds.get(0, rng=sample_rng(0, epoch, 0))  # (3, T, H, W)
        want = sample_indices(56, 5.0, spec, sample_rng(0, epoch, 0)).tolist()
        assert [level_to_index(float(x[:, i].mean() * 255), 56) for i in range(2)] == want
        starts.add(want[0])
    assert len(starts) >= 4  # clip_sz 10.7 frames, start uniform in [0, 45.3]
    centre = VideoDataset([VideoEntry("idx.mp4", 0)], tmp_path, spec, train=False, single_view=True)
    x, _ = centre.get(0, rng=sample_rng(0, 1, 0))  # evaluation ignores the RNG: the centre window
    assert [level_to_index(float(x[:, i].mean() * 255), 56) for i in range(2)] == [22, 31]


def test_worker_processes_see_the_same_samples(tiny_set: tuple[Path, list[VideoEntry]]) -> None:
    root, entries = tiny_set
    ds = VideoDataset(entries, root, TRAIN, train=True, seed=1)
    ds.set_epoch(2)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2)
    got = [b[0][0] for b in loader]
    assert all(torch.equal(g, ds[i][0]) for i, g in enumerate(got))
    assert np.isfinite(torch.stack(got).numpy()).all()


def test_seeded_keys_give_the_samples_of_that_epoch(tiny_set: tuple[Path, list[VideoEntry]]) -> None:
    root, entries = tiny_set
    ds = VideoDataset(entries, root, TRAIN, train=True, seed=5, single_view=True)
    keyed = SeededDataset(ds, seed=5)
    ds.set_epoch(3)
    x, y = keyed[(2, 3)]  # the (index, epoch) keys of ResumableSampler
    assert x.shape == (3, 4, 32, 32) and y == 0
    assert torch.equal(x, ds[2][0]) and torch.equal(x, ds.get(2, sample_rng(5, 3, 2))[0])
    assert not torch.equal(x, keyed[(2, 4)][0])
    with pytest.raises(ValueError, match="single_view needs one view"):
        VideoDataset(entries, root, EVAL, train=False, single_view=True)


def _data_cfg(root: Path, *extra: str) -> dict:
    return load_config(
        None,
        [
            f"data.root={root}",
            "data.train_list=train.list",
            "data.val_list=val.list",
            "data.train_preprocess={num_frames: 4, crop_size: 32, short_side: 32, short_side_max: 40, "
            "sampling: segment, crops: random, flip: true}",
            "data.val_preprocess={crops: center, short_side: 32}",
            *extra,
        ],
    )


def test_config_lists_and_datasets(tiny_set: tuple[Path, list[VideoEntry]]) -> None:
    root, _ = tiny_set
    (root / "train.list").write_text("v0 0\nv1 1\n")  # UCF-101 style: no extension, data.suffix adds it
    (root / "val.list").write_text("v2 2\n")
    cfg = _data_cfg(root, "data.suffix=.mp4", "seed=4")
    assert config_entries(cfg, "train") == [VideoEntry("v0.mp4", 0), VideoEntry("v1.mp4", 1)]
    assert config_entries(cfg, "test") == [VideoEntry("v2.mp4", 2)]  # test falls back to the val list
    train_set, val_set, labels = build_datasets(cfg)
    assert labels == ["class_0", "class_1", "class_2"]  # no label list: as many classes as the lists show
    x, y = SeededDataset(train_set, 4)[(1, 0)]
    assert x.shape == (3, 4, 32, 32) and y == 1 and train_set.seed == 4
    assert val_set[0][0].shape == (3, 4, 32, 32) and not val_set.train
    (root / "names.txt").write_text("1 a\n2 b\n")
    with pytest.raises(DatasetError, match="val.list:1: label 2 out of range"):
        build_datasets(_data_cfg(root, "data.suffix=.mp4", "data.label_list=names.txt"))
    with pytest.raises(DatasetError, match="data.train_list: .*nope.list: no such file"):
        build_datasets(_data_cfg(root, "data.train_list=nope.list"))
    with pytest.raises(DatasetError, match="val_preprocess must give one view"):
        build_datasets(_data_cfg(root, "data.suffix=.mp4", "data.val_preprocess={crops: three}"))


def test_training_skips_counts_and_reports_corrupt_videos(
    tiny_set: tuple[Path, list[VideoEntry]], tmp_path: Path
) -> None:
    """One unreadable file in a real list: with data.skip_failures the run goes on and log.csv says how
    many videos were replaced per epoch; without it the run stops naming the file."""
    from test_train_loop import tiny_cfg

    from training.train import train

    root, entries = tiny_set
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 300)
    lines = [f"{e.path} {e.label}" for e in entries]
    (root / "skip_train.list").write_text("\n".join([lines[0], "corrupt.mp4 1", *lines[1:]]) + "\n")
    (root / "skip_val.list").write_text("\n".join(["corrupt.mp4 0", *lines]) + "\n")
    data = [
        f"data.root={root}",
        "data.train_list=skip_train.list",
        "data.val_list=skip_val.list",
        "data.train_preprocess={num_frames: 4, crop_size: 32, short_side: 32, sampling: segment, "
        "crops: random}",
        "data.val_preprocess={crops: center, short_side: 32}",
    ]
    with pytest.raises(VideoDecodeError, match="corrupt.mp4"):
        train(tiny_cfg(tmp_path / "strict", epochs=1, batch=2, global_batch=4, extra=data))
    cfg = tiny_cfg(
        tmp_path / "skip", epochs=2, batch=2, global_batch=4, extra=[*data, "data.skip_failures=true"]
    )
    metrics = train(cfg)
    assert metrics["train_failures"] == 1 and metrics["val_failures"] == 1  # per epoch, not cumulative
    header = (tmp_path / "skip" / "log.csv").read_text().splitlines()[0].split(",")
    assert "train_failures" in header and "val_failures" in header
