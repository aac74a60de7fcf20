"""The product-image dataset layer: sources, safe decoding, preparation into shards, loading, paired views.

Only numpy, pillow, safetensors and torch are needed here; Great Expectations is imported by
:mod:`productgen.data.validate` alone, when validation runs.
"""
