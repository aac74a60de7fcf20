"""The model registry: promotion and rollback, the gate, the champion re-scored on this week's set, shipped models."""
