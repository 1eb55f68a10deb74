"""Launchers: placement policies for the same components (local subprocesses, Ray, Kubernetes)."""
