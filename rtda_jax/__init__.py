"""rtda-jax: real-time domain adaptation for semantic segmentation in JAX."""

__version__ = '0.1.0'
