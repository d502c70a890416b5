"""Pydantic models for every record crossing a topic or the HTTP API."""
