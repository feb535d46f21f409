"""advtrain: adversarial training (PGD-AT, TRADES, MART, GKL) and AutoAttack / RobustBench evaluation."""

__version__ = "0.1.0"
