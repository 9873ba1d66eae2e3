"""The ``moderation`` command line. Each command builds Settings once and passes it down."""

from __future__ import annotations

import typer

from moderation.cli.audit import audit_app
from moderation.cli.bank import bank_app
from moderation.cli.db import db_app
from moderation.cli.demo import demo
from moderation.cli.history import history_app
from moderation.cli.model import model_app
from moderation.cli.pipeline import pipeline_app
from moderation.cli.policy import policy_app
from moderation.cli.quality import backtest, calibrate, evaluate, promote
from moderation.cli.review import review_app
from moderation.cli.score import score
from moderation.cli.testmodel import testmodel_app

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
app.command()(score)
app.command()(demo)
app.command("eval")(evaluate)
app.command()(calibrate)
policy_app.command("backtest")(backtest)
policy_app.command("promote")(promote)
app.add_typer(policy_app, name="policy")
app.add_typer(testmodel_app, name="testmodel")
app.add_typer(model_app, name="model")
app.add_typer(audit_app, name="audit")
app.add_typer(review_app, name="review")
app.add_typer(bank_app, name="bank")
app.add_typer(history_app, name="history")
app.add_typer(db_app, name="db")
app.add_typer(pipeline_app)  # top level: api, worker, submit, dlq


def main() -> None:
    app()
