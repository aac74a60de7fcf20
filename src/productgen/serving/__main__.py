"""``python -m productgen.serving MODEL_URI``: the guarded scoring server (see :mod:`productgen.serving.server`)."""

from productgen.serving.server import main

main()
