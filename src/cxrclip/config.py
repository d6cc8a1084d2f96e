"""Load and validate ``params.yaml``, the single configuration of Snakemake and DVC."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).parent / "schemas" / "params.schema.json"


class ParamsError(ValueError):
    """A params.yaml value is missing or invalid; the message names the key."""


def validate_params(params: dict[str, Any]) -> None:
    """Raise :class:`ParamsError` naming the first offending key when ``params`` breaks the schema."""
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
        raise ParamsError(f"params.yaml: invalid value for '{key}': {err.message}")


def load_params(path: str | Path = "params.yaml", validate: bool = True) -> dict[str, Any]:
    """Read ``path`` (YAML) and return it as a dict, validated against the schema by default."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"params file not found: {path} (run from the project root or pass --params)")
    params = yaml.safe_load(path.read_text()) or {}
    if validate:
        validate_params(params)
    return params


def get_key(params: dict[str, Any], dotted: str) -> Any:
    """Return ``params['a']['b']`` for ``dotted='a.b'``; raise :class:`ParamsError` if absent."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"params.yaml: missing key '{dotted}'")
        node = node[part]
    return node


def select_params(params: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """Return a nested dict holding only the dotted ``keys`` of ``params`` (what one stage may read)."""
    out: dict[str, Any] = {}
    for dotted in keys:
        value = copy.deepcopy(get_key(params, dotted))
        parts = dotted.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def params_hash(params: dict[str, Any]) -> str:
    """Stable short sha256 of a params dict (sorted JSON), for tags and cache keys."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
