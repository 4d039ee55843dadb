"""Importers bring existing agent logs into the store as exchanges."""
