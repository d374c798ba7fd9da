"""Launchers: TPU pods, SLURM GPU clusters, hyperparameter sweeps, AOT checks.

Every launcher has a dry-run mode that prints the exact commands it would run,
so the whole launch path is tested on a laptop (tests/test_launch.py). The
scripts are run as files (`python launch/sweep.py ...`); each adds the
repository root to sys.path itself so that `launch.*` imports work without an
install.
"""
