"""Stochastic weight averaging: ``python -m training.swa CKPT [CKPT ...] -o OUT.pt``.

A uniform average of the weights of native checkpoints of one model (e.g. the last K epochs of a run).
TimeSformer has no BatchNorm, so the average needs no statistics update. The result is a native checkpoint
with the first input's model config, preprocessing spec and labels, and ``meta["swa"]`` naming its sources.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from training.modeling.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint

SWA_DIR = "swa_epochs"  # where training keeps the last K epoch checkpoints


def average_checkpoints(ckpts: Sequence[Checkpoint], sources: Sequence[str] | None = None) -> Checkpoint:
    """The uniform average of ``ckpts``' weights (accumulated in float64, stored in each tensor's dtype).

    All must share model config and tensor names/shapes; integer tensors must be equal (there is nothing
    meaningful to average in them).
    """
    if not ckpts:
        raise CheckpointError("SWA needs at least one checkpoint")
    sources = list(sources) if sources is not None else [f"<checkpoint {i}>" for i in range(len(ckpts))]
    first = ckpts[0]
    ref = first.state_dict
    acc = {k: v.to(torch.float64).clone() for k, v in ref.items()}
    for ck, src in zip(ckpts[1:], sources[1:]):
        if ck.model_config != first.model_config:
            raise CheckpointError(f"{src}: model config differs from {sources[0]}'s; cannot average")
        if set(ck.state_dict) != set(ref):
            diff = sorted(set(ck.state_dict) ^ set(ref))[:5]
            raise CheckpointError(f"{src}: tensor names differ from {sources[0]}'s (e.g. {diff})")
        for k, v in ck.state_dict.items():
            if v.shape != ref[k].shape:
                raise CheckpointError(
                    f"{src}: {k} has shape {tuple(v.shape)}, {sources[0]} {tuple(ref[k].shape)}"
                )
            if v.is_floating_point():
                acc[k] += v.to(torch.float64)
            elif not torch.equal(v, ref[k]):
                raise CheckpointError(f"{src}: integer tensor {k} differs; cannot average")
    n = len(ckpts)
    avg = {k: (acc[k] / n).to(v.dtype) if v.is_floating_point() else v.clone() for k, v in ref.items()}
    epochs = [ck.meta.get("epoch") for ck in ckpts]
    return Checkpoint(
        model_config=dict(first.model_config),
        preprocess=first.preprocess,
        state_dict=avg,
        labels=first.labels,
        meta={"swa": {"sources": [str(s) for s in sources], "epochs": epochs, "count": n}},
    )


def swa_files(out_dir: str | Path) -> list[Path]:
    """Epoch checkpoints kept for SWA, oldest first."""
    return sorted((Path(out_dir) / SWA_DIR).glob("epoch_*.pt"))


def prune_swa(out_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` epoch checkpoints."""
    files = swa_files(out_dir)
    for f in files[: max(0, len(files) - keep)]:
        f.unlink(missing_ok=True)


def write_swa(out_dir: str | Path, keep: int) -> Path:
    """Average the newest ``keep`` epoch checkpoints of a run into ``<out_dir>/swa.pt``."""
    files = swa_files(out_dir)[-keep:]
    if not files:
        raise CheckpointError(f"{out_dir}: no epoch checkpoints under {SWA_DIR}/ to average")
    avg = average_checkpoints([load_checkpoint(f) for f in files], [str(f) for f in files])
    return save_checkpoint(avg, Path(out_dir) / "swa.pt")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.swa", description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", help="native checkpoints of the same model")
    p.add_argument("-o", "--output", required=True, help="where to write the averaged checkpoint")
    args = p.parse_args(argv)
    try:
        avg = average_checkpoints([load_checkpoint(c) for c in args.checkpoints], args.checkpoints)
        save_checkpoint(avg, args.output)
    except (CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"swa: averaged {len(args.checkpoints)} checkpoints into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
