"""MLflow runs (the MLOps layer; the core never imports this) and lineage: what a model version was made from."""
