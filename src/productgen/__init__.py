"""productgen: train, evaluate, version and ship models for e-commerce product images.

The core (``productgen.data``, ``productgen.config``) needs only PyTorch, numpy, scipy, pillow, safetensors
and PyYAML, so it runs on a GPU machine without the MLOps stack; Great Expectations, DVC, Prefect and
MLflow are imported lazily by the layers that use them.
"""

__version__ = "0.1.0"
