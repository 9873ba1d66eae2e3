"""Composition roots: one per process kind, built from :class:`~moderation.settings.Settings`.

::

    scoring  build_scoring(settings)  model + policies + moderator     (score, policy tools)
    api      build_api(settings)      job store, queue, submit use     (moderation api, demo)
                                      case, outcomes, review queue,
                                      reviewer sign-in, audit log
    worker   build_worker(settings)   the above + model, batcher,      (workers/tasks.py)
                                      processor, maintenance thread,
                                      callback delivery, bank sync

and the parts they share: ``stores`` (which adapter implements which store port),
``registries`` (signals, image sources), ``policies`` (loading and compiling through the cache),
``banks``, ``access`` (tenants, reviewer sign-in, the production security check) and ``model``
(loading the model, with the fallback policy of :mod:`moderation.pipeline.model_fallback`).

This package is the only place that knows which adapter implements which port; import the
module you need (this ``__init__`` imports nothing, so the API's root never loads torch).
Every process that decides anything, or records a human decision, has an audit log; one that
cannot open its audit log refuses to start (:class:`~moderation.exceptions.AuditError`).
Outside development mode, the API and the workers refuse to start with empty, short or
development-default secrets or API keys (:class:`~moderation.exceptions.InsecureSettingsError`).

Hash banks: workers load every bank before their first job and keep them current
(:class:`~moderation.pipeline.bank_sync.BankSync` on the maintenance thread); the API carries
out reviewers' "add to bank" requests; local scoring loads the banks once when Redis is
configured.
"""
