"""slade_core: the SLADE library (no Prefect, no MLflow).

Data flows one way: manifests -> index -> models -> embeddings -> pseudo labels ->
student -> metrics. Every hand-off is a file with a documented schema (see README).
"""

__version__ = "0.1.0"
