"""Data contract, readers, validation, dataset adapters, encoded interactions and splits."""
