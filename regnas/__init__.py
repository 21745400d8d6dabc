"""regnas: hardware-aware model families that agree with each other."""

__version__ = "0.1.0"
