"""Train a TimeSformer: ``python -m training.train -c CONFIG.yaml [-o key=value ...] [--resume]``.

Runs the same on one CPU, one GPU, or many GPUs/nodes under ``torchrun`` (DDP; NCCL on GPUs, gloo on
CPUs). Writes into ``output_dir``: config.yaml (resolved), last.pt (with the state for exact resume, also
every ``train.checkpoint_every_steps`` optimizer steps), best.pt (best val top-1), log.csv, curves.png,
and swa.pt when ``swa.last_k_epochs`` > 0. See docs/training.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from training.config import (
    ConfigError,
    add_config_arguments,
    load_config,
    preprocess_spec,
    run_cli,
    save_config,
)
from training.data.datasets import build_datasets, step_rng
from training.data.mixing import VideoMix, smooth_one_hot
from training.loop.distributed import (
    all_reduce_list,
    cleanup_distributed,
    init_distributed,
    make_loaders,
    maybe_no_sync,
    wrap_ddp,
)
from training.loop.evaluate import evaluate
from training.loop.logs import plot_curves, write_csv
from training.loop.losses import distillation_loss
from training.loop.optim import LRSchedule, build_optimizer
from training.loop.precision import amp_dtype, autocast
from training.loop.state import new_run_state, restore_run, save_run_checkpoint, seed_step
from training.modeling.weights import build_model, load_teacher
from training.swa import SWA_DIR, prune_swa, write_swa


def train(
    cfg: dict[str, Any], *, resume: bool = False, datasets: tuple[Any, Any, list[str]] | None = None
) -> dict[str, Any]:
    """Run the configured training; returns the last epoch's metrics. ``datasets`` = (train, val, labels)
    replaces the configured data."""
    dist = init_distributed()
    tr, seed, out = cfg["train"], int(cfg["seed"]), Path(cfg["output_dir"])
    train_set, val_set, labels = datasets if datasets is not None else build_datasets(cfg)
    accum = tr["global_batch_size"] // (tr["batch_size"] * dist.world_size)
    if accum * tr["batch_size"] * dist.world_size != tr["global_batch_size"]:
        raise ConfigError(
            f"train.global_batch_size {tr['global_batch_size']} is not a multiple of "
            f"train.batch_size {tr['batch_size']} x {dist.world_size} processes"
        )
    torch.manual_seed(seed)  # the initial weights: identical on every rank
    model = build_model(cfg["model"], len(labels)).to(dist.device)
    optimizer = build_optimizer(model, cfg["optimizer"])
    schedule = LRSchedule(cfg["schedule"], cfg["optimizer"]["lr"], tr["epochs"])
    dtype = amp_dtype(tr["amp"], dist.device)  # None: fp32
    scaler = torch.amp.GradScaler(dist.device.type, enabled=dtype == torch.float16)
    mixer = VideoMix(**cfg["mix"])
    d_w, d_t = float(cfg["distill"]["weight"]), float(cfg["distill"]["temperature"])
    train_spec = preprocess_spec(cfg, "train_preprocess")  # the teacher is fed clips normalised this way
    teacher = load_teacher(cfg["distill"]["teacher"], dist.device, train_spec) if d_w > 0 else None
    sampler, train_loader, val_loader = make_loaders(cfg, dist, train_set, val_set)
    st = new_run_state()
    if resume and (out / "last.pt").is_file():
        st = restore_run(out / "last.pt", model, optimizer, scaler)
    elif resume and dist.is_main:
        print(f"resume: no {out / 'last.pt'} yet, starting from scratch", file=sys.stderr)
    if dist.is_main:
        save_config(cfg, out / "config.yaml")
    ddp = wrap_ddp(model, dist)
    ckpt_kw = dict(optimizer=optimizer, scaler=scaler)
    metrics: dict[str, Any] = {}
    t_start = time.perf_counter()

    for epoch in range(st["epoch"], tr["epochs"]):
        st["epoch"] = epoch
        sampler.set_epoch(epoch)
        sampler.set_start(st["step_in_epoch"] * accum * tr["batch_size"])  # skip what a killed run did
        ddp.train()
        t0 = time.perf_counter()
        bar = tqdm(
            train_loader, desc=f"epoch {epoch + 1}/{tr['epochs']}", disable=not dist.is_main, leave=False
        )
        for i, (x, y) in enumerate(bar):
            micro = st["step_in_epoch"] * accum + i % accum  # this micro-batch's index in the epoch
            seed_step(seed, 1, epoch, micro, dist.rank)  # drop-path masks: a function of the step
            x, y = x.to(dist.device, non_blocking=True), y.to(dist.device)  # (B, 3, T, H, W), (B,)
            targets = smooth_one_hot(y, len(labels), tr["label_smoothing"])  # (B, K)
            x, targets, _ = mixer(x, targets, step_rng(seed, 3, epoch, micro, dist.rank))
            with maybe_no_sync(ddp, (i + 1) % accum != 0), autocast(dist.device, dtype):
                logits = ddp(x)  # (B, K)
                t_logits = teacher(x) if teacher is not None else None  # (B, K); not run when weight is 0
                loss = distillation_loss(logits, targets, t_logits, d_w, d_t)
                scaler.scale(loss / accum).backward()
            sums = st["epoch_sums"]  # loss * n, correct (vs. the unmixed label), n
            sums[0] += float(loss.detach()) * y.shape[0]
            sums[1] += float((logits.detach().argmax(1) == y).sum())
            sums[2] += y.shape[0]
            if (i + 1) % accum:
                continue
            lr = schedule.apply(optimizer, st["global_step"] / sampler.steps_per_epoch)  # per iteration
            scaler.unscale_(optimizer)
            if tr["clip_grad_norm"]:
                torch.nn.utils.clip_grad_norm_(ddp.parameters(), tr["clip_grad_norm"])  # global norm
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            st["step_in_epoch"] += 1
            st["global_step"] += 1
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{lr:.2e}")
            every = tr["checkpoint_every_steps"]
            if every and st["step_in_epoch"] % every == 0 and st["step_in_epoch"] < sampler.steps_per_epoch:
                if dist.is_main:
                    save_run_checkpoint(out / "last.pt", model, cfg, labels, st, {}, **ckpt_kw)
                    print(f"checkpoint: last.pt epoch {epoch} step {st['step_in_epoch']}", flush=True)

        failed = train_loader.dataset.take_failures()  # videos skipped this epoch (data.skip_failures)
        sums = all_reduce_list([*st["epoch_sums"], failed])
        n = max(sums[2], 1.0)
        metrics = {
            "epoch": epoch + 1,
            "global_step": st["global_step"],
            "lr": optimizer.param_groups[0]["lr"],
        }
        metrics.update(train_loss=sums[0] / n, train_top1=100 * sums[1] / n)
        if tr["eval_every_epochs"] and (
            (epoch + 1) % tr["eval_every_epochs"] == 0 or epoch + 1 == tr["epochs"]
        ):
            metrics.update(evaluate(ddp, val_loader, dist.device, dtype, show=dist.is_main))
        if cfg["data"]["skip_failures"]:
            metrics["train_failures"] = int(sums[3])
            metrics["val_failures"] = int(all_reduce_list([val_loader.dataset.take_failures()])[0])
        metrics["epoch_time_s"] = time.perf_counter() - t0
        st.update(epoch=epoch + 1, step_in_epoch=0, epoch_sums=[0.0, 0.0, 0.0])
        st["history"].append(metrics)
        if dist.is_main:
            if metrics.get("val_top1", -1.0) > st["best_top1"]:
                st["best_top1"] = metrics["val_top1"]
                save_run_checkpoint(out / "best.pt", model, cfg, labels, st, metrics)
            save_run_checkpoint(out / "last.pt", model, cfg, labels, st, metrics, **ckpt_kw)
            if cfg["swa"]["last_k_epochs"]:
                save_run_checkpoint(
                    out / SWA_DIR / f"epoch_{epoch + 1:04d}.pt", model, cfg, labels, st, metrics
                )
                prune_swa(out, cfg["swa"]["last_k_epochs"])
            write_csv(st["history"], out / "log.csv")
            pe = tr["plot_every_epochs"]
            if epoch + 1 == tr["epochs"] or (pe and (epoch + 1) % pe == 0):
                plot_curves(st["history"], out / "curves.png", title=str(out))
            print(
                " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
            )

    if dist.is_main:
        if cfg["swa"]["last_k_epochs"]:
            write_swa(out, cfg["swa"]["last_k_epochs"])
        print(
            f"done: {tr['epochs']} epochs, best val top-1 {st['best_top1']:.2f}%, "
            f"{time.perf_counter() - t_start:.1f} s this run, outputs in {out}",
            flush=True,
        )
    cleanup_distributed()
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.splitlines()[0])
    add_config_arguments(
        p,
        config_help="YAML recipe (training/configs/*.yaml)",
        override_help="dotted config key, value parsed as YAML (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue from <output_dir>/last.pt if present")
    args = p.parse_args(argv)
    return run_cli(lambda: train(load_config(args.config, args.override), resume=args.resume))


if __name__ == "__main__":
    sys.exit(main())
