"""Stripe's v1 wire format: form-encoded nested parameters in, Stripe-shaped errors out."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

# Keys under these parents are free-form, so "metadata[0]=x" stays a dict, not a list.
_FREE_FORM = frozenset({"metadata"})


@dataclass
class Response:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    # Close the connection without answering (drop_after_commit).
    drop: bool = False
    content_type: str = "application/json"


class ApiError(Exception):
    """An error answer. ``saved`` errors happened during execution and stick to the idempotency key."""

    def __init__(
        self,
        status: int,
        error: dict[str, Any],
        *,
        saved: bool = False,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(error.get("message", ""))
        self.status = status
        self.error = error
        self.saved = saved
        self.headers = headers or []

    def body(self) -> bytes:
        return json.dumps({"error": self.error}).encode()


def doc_url(code: str) -> str:
    return f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"


def invalid(message: str, param: str | None = None, code: str | None = None, status: int = 400) -> ApiError:
    error: dict[str, Any] = {"message": message, "type": "invalid_request_error"}
    if param is not None:
        error["param"] = param
    if code is not None:
        error["code"] = code
        error["doc_url"] = doc_url(code)
    return ApiError(status, error)


def no_such(kind: str, obj_id: str, param: str | None = None) -> ApiError:
    """Unknown id: 404 when it names the URL's resource, 400 when it came in as a parameter."""
    return invalid(f"No such {kind}: '{obj_id}'", param=param, code="resource_missing",
                   status=404 if param is None else 400)


def parse_pairs(raw: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(raw, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise invalid(f"Invalid request body: {exc}") from exc


def _split_key(key: str) -> list[str]:
    """'a[b][0]' -> ['a', 'b', '0']; 'expand[]' -> ['expand', '']."""
    head, sep, rest = key.partition("[")
    if not sep:
        return [key]
    parts = [head]
    while rest:
        inner, close, rest = rest.partition("]")
        if not close:
            raise invalid(f"Invalid parameter name: {key}", param=key)
        parts.append(inner)
        if rest.startswith("["):
            rest = rest[1:]
        elif rest:
            raise invalid(f"Invalid parameter name: {key}", param=key)
    return parts


def nest(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Build nested dicts/lists from bracketed keys, like Stripe's form decoder."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = _split_key(key)
        node = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":
                # "x[]" appends: number it after the entries already there.
                part = str(len(node))
            if last:
                if isinstance(node.get(part), dict):
                    raise invalid(f"Invalid value for {parts[0]}: mixes a value and a hash", param=key)
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    # "metadata=" (empty, meaning clear) followed by "metadata[k]=v": the hash wins.
                    if child == "":
                        child = node[part] = {}
                    else:
                        raise invalid(f"Invalid value for {parts[0]}: mixes a value and a hash", param=key)
                node = child
    return _listify(root, None)


def _listify(node: dict[str, Any], parent: str | None) -> Any:
    out = {k: _listify(v, k) if isinstance(v, dict) else v for k, v in node.items()}
    if parent not in _FREE_FORM and out and all(k.isdigit() for k in out):
        return [out[k] for k in sorted(out, key=int)]
    return out


class Params:
    """Typed access to one request's parameters, already checked against the endpoint's contract
    (schema.Endpoint.check): the checks here are about values the emulator models."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def has(self, key: str) -> bool:
        return key in self.data

    def str(self, key: str, *, required: bool = False, max_len: int | None = None,
            choices: tuple[str, ...] | None = None) -> str | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise invalid(f"Missing required param: {key}.", param=key, code="parameter_missing")
            return None
        if not isinstance(value, str):
            raise invalid(f"Invalid string: {_show(value)}", param=key)
        if required and value == "":
            raise invalid(f"Missing required param: {key}.", param=key, code="parameter_missing")
        if max_len is not None and len(value) > max_len:
            raise invalid(f"Invalid string: {value[:40]}...; must be at most {max_len} characters",
                          param=key)
        if choices is not None and value != "" and value not in choices:
            raise invalid(f"Invalid {key}: must be one of {', '.join(choices)}", param=key)
        return value

    def int(self, key: str, *, required: bool = False) -> int | None:
        value = self.str(key, required=required)
        if value is None or value == "":
            return None
        try:
            return int(value)
        except ValueError:
            raise invalid(f"Invalid integer: {value}", param=key) from None

    def bool(self, key: str) -> bool | None:
        value = self.str(key)
        if value is None or value == "":
            return None
        if value not in ("true", "false"):
            raise invalid(f"Invalid boolean: {value}", param=key)
        return value == "true"

    def dict(self, key: str) -> dict[str, Any] | None:
        value = self.data.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, dict):
            raise invalid(f"Invalid object: {key} must be a hash", param=key)
        return value

    def list(self, key: str) -> list[Any] | None:
        value = self.data.get(key)
        if value is None or value == "":
            return None
        if isinstance(value, str):
            # A lone value where a list is expected ("types=x") is accepted as a one-element list.
            return [value]
        if not isinstance(value, list):
            raise invalid(f"Invalid array: {key} must be an array", param=key)
        return value

    def metadata(self, key: str = "metadata") -> dict[str, str] | None:
        """Metadata updates: {} clears all, a "" value removes that key."""
        if key not in self.data:
            return None
        value = self.data[key]
        if value == "":
            return {}
        if not isinstance(value, dict):
            raise invalid("Invalid object: metadata must be a hash", param=key)
        if len(value) > 50:
            raise invalid("Invalid metadata: at most 50 keys are allowed", param=key)
        for k, v in value.items():
            if not isinstance(v, str):
                raise invalid(f"Invalid metadata[{k}]: must be a string", param=f"{key}[{k}]")
            if len(k) > 40:
                raise invalid(f"Invalid metadata: key {k[:40]}... is longer than 40 characters", param=key)
            if len(v) > 500:
                raise invalid(f"Invalid metadata[{k}]: values are at most 500 characters",
                              param=f"{key}[{k}]")
        return value

    def expand(self) -> list[str]:
        value = self.data.get("expand")
        if value is None or value == "":
            return []
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise invalid("Invalid array: expand must be an array of strings", param="expand")


def apply_metadata(current: dict[str, str], update: dict[str, str] | None) -> dict[str, str]:
    if update is None:
        return current
    if not update:
        return {}
    merged = dict(current)
    for k, v in update.items():
        if v == "":
            merged.pop(k, None)
        else:
            merged[k] = v
    return merged


def _show(value: Any) -> str:
    return json.dumps(value)[:60]
