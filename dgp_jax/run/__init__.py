"""Batch runs on disk, by concern (``dgp_jax.runner`` puts them together):

* ``settings``: tasks, presets, ``--set`` -> SolverConfig; ``RunError``.
* ``setup``: compilation cache, multi-process set-up, default batch size.
* ``plan``: input items, output names, PRNG keys, process shares.
* ``folder``: the output folder (atomic writes, lock, temp clean-up).
* ``markers``: RunSpec, fingerprint, config.json, done markers (resume).
* ``progress``: the progress line.
* ``solving``: loading and solving batches.
* ``results``: per-image files and the summaries.
* ``attack``: ``dgp-jax attack``, adversarial inputs for the defense task.
"""
