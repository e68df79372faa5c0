"""ckptwatch: verify TensorFlow checkpoints the moment they are written."""

__version__ = "0.1.0"
