"""Hyperparameter optimization: Optuna studies over recipe keys, and population-based training.

Light on import: ``steerl.tuning.spec`` (the config section) is imported by ``steerl.config``;
Optuna is imported only by the modules that run a study.
"""
