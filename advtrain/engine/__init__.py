"""The training engine: build objects from config, the adversarial step, the loop, and its callbacks."""
