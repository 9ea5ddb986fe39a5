"""The nightly pipeline's stages as plain functions (no Prefect): the engine side of ``tasks/``.

Each stage takes the run's typed settings (:class:`data_contracts.settings.PipelineSettings`)
and the run id, reads and writes under the output folder (:mod:`sqflow.layout`; writes atomic or
chunk-resumable), logs through the standard :mod:`logging` module (loggers ``sqflow.pipeline.*``;
the Prefect tasks forward them to the run's log) and returns a small JSON-able dict that the
nightly flow stores in the :class:`data_contracts.run_record.RunRecord`.

Modules: :mod:`.sample` (source -> manifest, quarantine), :mod:`.encoder` (train and register the
encoder, embed a manifest into a store), :mod:`.cluster` (SQ on Dask, assignments, plots),
:mod:`.monitor` (drift check against the reference, retrain), :mod:`.report` (the cluster
report of a run), :mod:`.publish` (the BI tables).
"""
