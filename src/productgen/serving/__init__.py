"""MLflow pyfunc models that serve productgen's trained networks (logged as models-from-code, no pickles)."""
