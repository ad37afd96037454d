"""Operator commands over the Kafka log (``blametrail replay``).

An operator package, not a service: its one process beside the pipeline is the jobs worker
(:mod:`blametrail_replay.worker`), which runs these same commands when the control plane asks
(a reprocess job, ``POST /api/v1/audit/reprocess``); and it is the one package that imports
other packages' code, on purpose. Two of its commands must do exactly what
a service does, so they run that service's own code rather than a copy:

- ``replay projection rebuild`` (:mod:`blametrail_replay.rebuild`) folds the log with the
  projector's pure row mapping, :mod:`blametrail_projector.rows` (:mod:`blametrail_replay.fold`),
  bulk-loads the result (:mod:`blametrail_replay.bulk`), and applies what follows with the
  projector's projection, :mod:`blametrail_projector.projection` (``Projection``,
  ``PROJECTED_TOPICS``, ``TABLES``); and :mod:`blametrail_replay.cli` reads the live group's name from
  :mod:`blametrail_projector.settings`;
- ``replay reprocess`` and ``reprocess-ignored`` (:mod:`blametrail_replay.reprocess`) normalize
  with the normalizer's pure rules, :mod:`blametrail_normalizer.normalize`, over the control-plane
  lookup of :mod:`blametrail_normalizer.tables`.

Nothing else of theirs, and never their composition roots (``blametrail_projector.__main__``,
``blametrail_normalizer.app``, ``blametrail_normalizer.__main__``): replay starts no projector
loop and no faust worker. No service imports replay.
"""
