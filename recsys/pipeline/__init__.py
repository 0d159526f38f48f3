"""Training, model bundles and the model registry."""
