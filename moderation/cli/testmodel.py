"""``moderation testmodel``: the bundled synthetic test model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from moderation.cli.common import progress

__all__ = ["testmodel_app"]

testmodel_app = typer.Typer(no_args_is_help=True, help="The bundled synthetic test model.")


@testmodel_app.command("eval")
def testmodel_eval(
    n_per_class: Annotated[int, typer.Option(min=1)] = 20,
    seed: Annotated[int, typer.Option()] = 12345,
    policy: Annotated[
        bool,
        typer.Option(
            "--policy", help="Also evaluate the test-world policy on fresh labelled images."
        ),
    ] = False,
    n_policy: Annotated[int, typer.Option(min=1, help="Images for --policy.")] = 600,
) -> None:
    """Zero-shot accuracy of the bundled test model on a fresh held-out synthetic set (the same
    evaluation code path as ``moderation eval``)."""
    from moderation.testmodel import world
    from moderation.testmodel.evaluate import evaluate, evaluate_policy

    with progress("zero-shot", n_per_class * len(world.OBJECT_PHRASES)) as advance:
        result = evaluate(n_per_class=n_per_class, seed=seed, on_done=advance)
    if policy:
        with progress("test-world policy", n_policy) as advance:
            report = evaluate_policy(n_policy, seed + 1, on_done=advance)
        result["policy"] = {
            c.key: {
                "review": c.review_threshold,
                "block": c.block_threshold,
                "positives": c.positives,
                "negatives": c.negatives,
                "block_precision": c.block.precision,
                "block_recall": c.block.recall,
                "flagged_recall": c.flagged.recall,
                "review_load": c.review_load,
                "roc_auc": c.roc_auc,
            }
            for c in report.categories
        }
    print(json.dumps(result, indent=2))


@testmodel_app.command("dataset")
def testmodel_dataset(
    folder: Annotated[Path, typer.Argument(help="Where to write images/ and labels.csv.")],
    n: Annotated[int, typer.Option(min=1, help="Images.")] = 600,
    seed: Annotated[int, typer.Option()] = 1,
) -> None:
    """Write a fresh labelled test-world dataset (PNG images + labels.csv) for ``moderation
    eval`` and ``moderation calibrate``."""
    from moderation.testmodel.evaluate import write_dataset

    labels = write_dataset(folder, n, seed)
    print(f"wrote {n} images and {labels}")
