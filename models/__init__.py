"""NF models: the API (models.api) and the bundled NFs."""
