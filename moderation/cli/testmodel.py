"""``moderation testmodel``: the bundled synthetic test model."""

from __future__ import annotations

import json
from typing import Annotated

import typer

__all__ = ["testmodel_app"]

testmodel_app = typer.Typer(no_args_is_help=True, help="The bundled synthetic test model.")


@testmodel_app.command("eval")
def testmodel_eval(
    n_per_class: Annotated[int, typer.Option(min=1)] = 20,
    seed: Annotated[int, typer.Option()] = 12345,
) -> None:
    """Zero-shot accuracy of the bundled test model on a fresh held-out synthetic set."""
    from moderation.testmodel.evaluate import evaluate

    print(json.dumps(evaluate(n_per_class=n_per_class, seed=seed), indent=2))
