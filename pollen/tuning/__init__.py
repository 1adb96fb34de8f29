"""Federated hyper-parameter tuning (``pollen tune``): Optuna's TPE sampler over short federated
runs, each assembled by ``pollen.simulate``, pruned on their per-round metric (Hyperband /
successive halving), with the study in SQLite so that it resumes. See docs/tuning.md.

::

    from pollen.tuning import tune
    result = tune("config.toml", space="space.toml", trials=20)
    result.best_params, result.out_dir / "best.toml"
"""

from pollen.tuning.study import Param, TrialResult, TuneResult, load_space, make_pruner, tune

__all__ = ["Param", "TrialResult", "TuneResult", "load_space", "make_pruner", "tune"]
