"""Reading YAML configs into pydantic models with one clear error for bad input."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, TypeVar

import pydantic
import yaml

from .errors import WorldrepError

M = TypeVar("M", bound=pydantic.BaseModel)


class Strict(pydantic.BaseModel):
    """Base for every config: unknown keys are errors, not silently ignored; so are infinite
    and NaN numbers (`lr: .inf` fails at load, not at step 10)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)
    # A stage's spec names its settings that change how fast it runs, not what it makes
    # (threads, devices, batch sizes of inference, logging): they are no part of what an
    # artifact is (worldrep.study.identity).
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ()


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


MAX_DEPTH = 40  # nesting of lists and mappings in a config or study file
MAX_NODES = 1_000_000  # values in a file once its aliases are expanded


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (instead of the last one
    silently winning)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
                seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: the constructor names it
            if first is not None and key != "<<":
                raise WorldrepError(f"line {key_node.start_mark.line + 1}: the key {key!r} is "
                                    f"given twice in one mapping (first at line {first}); "
                                    "keep one")
        return super().construct_mapping(node, deep=deep)


def check_size(data, where: str) -> None:
    """Refuse a document nested deeper than MAX_DEPTH or larger than MAX_NODES values once
    its aliases are expanded (sizes are counted once per shared node)."""
    sizes: dict[int, int] = {}
    stack = [(data, 0, False)]
    while stack:
        node, depth, closing = stack.pop()
        if not isinstance(node, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise WorldrepError(f"{where}: nested more than {MAX_DEPTH} levels deep")
        children = list(node.values()) + list(node) if isinstance(node, dict) else node
        if closing:
            sizes[id(node)] = 1 + sum(sizes.get(id(c), 1) for c in children)
            if sizes[id(node)] > MAX_NODES:
                raise WorldrepError(f"{where}: more than {MAX_NODES:,} values once its "
                                    "aliases are expanded")
            continue
        if id(node) in sizes:
            continue
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in children if id(c) not in sizes)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise WorldrepError(f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise WorldrepError(f"{path}: not a text file (byte {err.start} is not UTF-8); "
                            "expected YAML") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as err:
        raise WorldrepError(f"{path}: not valid YAML: {err}") from None
    except RecursionError:
        raise WorldrepError(f"{path}: nested more than {MAX_DEPTH} levels deep") from None
    except WorldrepError as err:
        raise WorldrepError(f"{path}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise WorldrepError(f"{path}: expected a mapping of keys at the top level")
    check_size(data, str(path))
    return data


def load_config(model: type[M], path: str | Path | None, **overrides) -> M:
    data = load_yaml(path) if path else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return parse_config(model, data, where=str(path) if path else "config")
