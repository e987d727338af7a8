"""Secrets never shown: every secret value the settings hold, and text with them masked."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, SecretStr

MASK = "**********"


def secret_values(model: BaseModel) -> list[str]:
    """Every secret a settings model (and the models within it) holds, longest first, so that one containing
    another is masked whole."""
    found: list[str] = []

    def walk(model: BaseModel) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            values = value.values() if isinstance(value, dict) else [value]  # [agent.env]'s secrets are a table
            found.extend(v.get_secret_value() for v in values if isinstance(v, SecretStr) and v.get_secret_value())
            if isinstance(value, BaseModel):
                walk(value)

    walk(model)
    return sorted(set(found), key=len, reverse=True)


def mask(text: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text
