"""Mechanism that knows nothing of recipes or releases: git, docker, registries, downloads, console."""
