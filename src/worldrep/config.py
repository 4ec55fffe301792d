"""Reading YAML configs into pydantic models with one clear error for bad input."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import pydantic
import yaml

from .errors import WorldrepError

M = TypeVar("M", bound=pydantic.BaseModel)


class Strict(pydantic.BaseModel):
    """Base for every config: unknown keys are errors, not silently ignored."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=False)


def describe_validation_error(err: pydantic.ValidationError, where: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}'")
        else:
            value = e.get("input")
            shown = f" (got {value!r})" if not isinstance(value, dict | list) else ""
            parts.append(f"'{loc}': {e['msg']}{shown}")
    return f"{where}: " + "; ".join(parts)


def allowed_keys(model: type[pydantic.BaseModel]) -> str:
    return ", ".join(model.model_fields)


def parse_config(model: type[M], data: dict | None, where: str = "config") -> M:
    try:
        return model.model_validate(data or {})
    except pydantic.ValidationError as err:
        msg = describe_validation_error(err, where)
        if any(e["type"] == "extra_forbidden" for e in err.errors()):
            msg += f" (allowed keys: {allowed_keys(model)})"
        raise WorldrepError(msg) from None


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise WorldrepError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise WorldrepError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise WorldrepError(f"{path}: expected a mapping of keys at the top level")
    return data


def load_config(model: type[M], path: str | Path | None, **overrides) -> M:
    data = load_yaml(path) if path else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return parse_config(model, data, where=str(path) if path else "config")
