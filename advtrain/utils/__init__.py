"""Small shared utilities: seeding, checkpoints, logging, distributed helpers."""
