"""live: real-time virtual background (SAM 2 streaming or embedded selfie model)."""

__version__ = "0.1.0"
