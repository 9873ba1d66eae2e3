"""Train the test model: ``python -m moderation.testmodel.train [--steps N] [--out DIR]``.

Deterministic (fixed seeds, deterministic torch kernels, data a pure function of ``(seed, step)``)
and CPU-only: about five minutes on two cores. Writes the fp16 checkpoint and ``train_report.json``
next to the model config, then reloads the checkpoint through open_clip and reports held-out
zero-shot accuracy on fresh images.

The objective is CLIP's symmetric contrastive loss with soft, class-aware targets: every step
encodes one caption (random template) per caption class of the world, so no batch holds false
negatives, and colour-blended objects are labelled softly between their two colour names (see
:mod:`moderation.testmodel.world`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch.utils.data import DataLoader, Dataset

from moderation.testmodel import ASSETS_DIR, CHECKPOINT_PATH, MODEL_NAME, register_config, world

__all__ = ["TrainConfig", "main", "save_checkpoint", "soft_clip_loss", "train"]

Preprocess = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Hyper-parameters; the defaults produce the shipped checkpoint."""

    steps: int = 900
    batch_size: int = 128
    lr: float = 2e-3
    logit_scale_lr_mult: float = 10.0
    warmup_steps: int = 40
    weight_decay: float = 0.1
    mix_prob: float = 0.4
    seed: int = 0
    threads: int = 2
    data_workers: int = 1
    device: str = "cpu"
    eval_per_class: int = 16
    out_dir: Path = field(default=ASSETS_DIR)


class _Batches(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Batch ``step`` of the training stream: a pure function of ``(seed, step)``."""

    def __init__(self, cfg: TrainConfig, preprocess: Preprocess) -> None:
        self._cfg = cfg
        self._preprocess = preprocess
        self._index = {p: i for i, p in enumerate(world.PHRASES)}

    def __len__(self) -> int:
        return self._cfg.steps

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = self._cfg.batch_size
        images = torch.empty(n, 3, world.IMAGE_SIZE, world.IMAGE_SIZE)
        targets = torch.zeros(n, len(world.PHRASES))
        for i in range(n):
            seed = int(np.random.default_rng([self._cfg.seed, step, i]).integers(2**31))
            rng = np.random.default_rng([seed, 3])
            scene = world.training_example(rng, seed=seed, mix_prob=self._cfg.mix_prob)
            images[i] = self._preprocess(world.draw(scene))
            for caption, weight in scene.targets().items():
                targets[i, self._index[caption]] += weight
        return images, targets


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def soft_clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    targets: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Symmetric CLIP loss with soft targets.

    Args:
        image_features: (B, D), L2-normalised.
        text_features: (K, D), L2-normalised, one row per caption class.
        targets: (B, K), each row a distribution over caption classes.
        logit_scale: the (already exponentiated) temperature.

    Returns:
        The mean of the image->text and text->image cross-entropies.
    """
    logits = logit_scale * image_features @ text_features.T
    i2t = -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    mass = targets.sum(dim=0)
    present = mass > 0
    column_targets = (targets[:, present] / mass[present]).T  # (K', B)
    t2i = -(column_targets * torch.log_softmax(logits.T[present], dim=1)).sum(dim=1).mean()
    return (i2t + t2i) / 2


def _param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    decay, no_decay, scale = [], [], []
    for name, p in model.named_parameters():
        if name == "logit_scale":
            scale.append(p)
        elif p.ndim < 2 or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr_mult": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
        {"params": scale, "weight_decay": 0.0, "lr_mult": cfg.logit_scale_lr_mult},
    ]


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def save_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """Save the state dict in fp16 (open_clip's ``load_checkpoint`` casts back to fp32)."""
    state = {
        k: v.detach().to(torch.float16) if v.is_floating_point() else v.detach()
        for k, v in model.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def train(cfg: TrainConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train, save the checkpoint and report; returns the report written to disk."""
    import open_clip

    from moderation.testmodel.evaluate import evaluate

    started = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    register_config()
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, device=device)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    model.train()

    # (K, T, L) token ids: every caption class under every training template.
    captions = [[t.format(p) for t in world.TRAIN_TEMPLATES] for p in world.PHRASES]
    tokens = torch.stack([tokenizer(row) for row in captions])
    n_classes, n_templates = tokens.shape[:2]
    template_rng = torch.Generator().manual_seed(cfg.seed + 1)

    optimizer = torch.optim.AdamW(
        _param_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, fused=True
    )
    loader = DataLoader(
        _Batches(cfg, preprocess),
        batch_size=None,
        shuffle=False,
        num_workers=cfg.data_workers,
        worker_init_fn=_worker_init if cfg.data_workers else None,
        prefetch_factor=4 if cfg.data_workers else None,
        persistent_workers=False,
    )
    losses: list[float] = []
    columns = (
        TextColumn("train"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("train", total=cfg.steps, status="")
        for step, (images, targets) in enumerate(loader):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, cfg) * group["lr_mult"]
            choice = torch.randint(n_templates, (n_classes,), generator=template_rng)
            text = tokens[torch.arange(n_classes), choice].to(device)
            images, targets = images.to(device), targets.to(device)
            image_features = model.encode_image(images, normalize=True)
            text_features = model.encode_text(text, normalize=True)
            loss = soft_clip_loss(image_features, text_features, targets, model.logit_scale.exp())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0.0, math.log(100.0))
            losses.append(float(loss.detach()))
            bar.advance(task)
            if step % 10 == 0:
                scale = float(model.logit_scale.detach().exp())
                bar.update(task, status=f"loss {np.mean(losses[-20:]):.3f}  scale {scale:.1f}")
    train_seconds = time.perf_counter() - started

    checkpoint = cfg.out_dir / CHECKPOINT_PATH.name
    save_checkpoint(model, checkpoint)
    result = evaluate(n_per_class=cfg.eval_per_class, checkpoint=checkpoint)
    report: dict[str, Any] = {
        "model": MODEL_NAME,
        "params": sum(p.numel() for p in model.parameters()),
        "checkpoint_bytes": checkpoint.stat().st_size,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "final_loss": float(np.mean(losses[-20:])),
        "logit_scale": float(model.logit_scale.detach().exp()),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "torch_threads": cfg.threads,
        "heldout": {k: result[k] for k in ("accuracy", "n_images", "n_classes", "seed")},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
    }
    report["config"].pop("out_dir")
    (cfg.out_dir / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the training report as JSON."""
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m moderation.testmodel.train")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--logit-scale-lr-mult", type=float, default=defaults.logit_scale_lr_mult)
    parser.add_argument("--mix-prob", type=float, default=defaults.mix_prob)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--data-workers", type=int, default=defaults.data_workers)
    parser.add_argument("--eval-per-class", type=int, default=defaults.eval_per_class)
    parser.add_argument("--out", type=Path, default=defaults.out_dir)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        logit_scale_lr_mult=args.logit_scale_lr_mult,
        mix_prob=args.mix_prob,
        device=args.device,
        seed=args.seed,
        threads=args.threads,
        data_workers=args.data_workers,
        eval_per_class=args.eval_per_class,
        out_dir=args.out,
    )
    report = train(cfg, progress=not args.no_progress)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
