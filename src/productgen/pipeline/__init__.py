"""The lifecycle steps with their MLOps side effects, shared by the CLI, the Prefect flows and the DVC stages:
train, evaluate, tune."""
