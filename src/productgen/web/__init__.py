"""``productgen web``: the shop's page over the registry's champions.

Shop staff, not ML engineers, decide whether a model is good enough for the catalog, so they get a page:
generate per category, enhance uploaded photos, restyle with a style image, translate (sketch to product, one
category into another), and a Models page with each task's champion, challenger, evidence and history, where a
signed-in user promotes or rolls back.

Everything heavy is reused: generation is :mod:`productgen.apply.generation`, image models are
:func:`productgen.models.predict.load_predictor` applied through :mod:`productgen.apply.folders`, uploads are decoded by
:mod:`productgen.data.decode` (the guard of ``productgen data``), promotions go through :mod:`productgen.registry.promotion`.
FastAPI, Jinja2 and uvicorn are imported only here (``productgen --help`` stays instant).
"""
