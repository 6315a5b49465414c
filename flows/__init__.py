"""Prefect flows: the `slade` pipeline (deployment `full-pipeline`) and the stage flow that
routes a training stage to another work pool (deployments `slade-stage/<pool>`)."""
