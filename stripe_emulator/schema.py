"""Request parameters checked against Stripe's published contract at the emulator's API version.

``stripe_schema.json`` is generated from the stripe SDK's parameter types by ``schema_gen`` (see there);
this module only reads it, so the emulator needs no stripe import at run time. Every /v1 request's
parameters are checked here before a handler sees them: names (nested ones included, written as Stripe
writes them, ``automatic_payment_methods[foo]``), required ones, scalar types, enums, and the values
Stripe lets you send as ``""`` to unset. Answers are Stripe's 400 ``invalid_request_error`` shapes.

Two kinds of rule are Stripe's behaviour rather than its parameter types, and are written out here with
their sources: parameters removed with their own error code, and mutually exclusive parameters.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from .wire import ApiError, invalid

SCHEMA_PATH = Path(__file__).with_name("stripe_schema.json")
_DOCUMENT: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
_DEFS: dict[str, dict[str, Any]] = _DOCUMENT["defs"]

# The API version the emulator implements: the one the installed stripe SDK is generated for, which
# the gateway pins (shared/gateway.py STRIPE_API_VERSION); tests check that all three agree.
API_VERSION: str = _DOCUMENT["api_version"]
_VERSION_FORMAT = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")

# docs.stripe.com/changelog/endive/2026-09-30/removes-the-payment-method-types-parameter-from-payment-
# intents-and-setup-intents: "Passing `payment_method_types` on this API version returns a 400 error with
# the code `payment_method_types_no_longer_supported`." The changelog does not quote the message; these
# words are ours and point where the changelog points.
_PMT_REMOVED = (
    "payment_method_types_no_longer_supported",
    "The `payment_method_types` parameter is no longer supported on this API version ({version}); it "
    "was removed in 2026-09-30.endive. To restrict the payment method types, use "
    "`allowed_payment_method_types` (for example `allowed_payment_method_types[]=card`), or use dynamic "
    "payment methods (`automatic_payment_methods`, optionally with `excluded_payment_method_types`).",
)
REMOVED: dict[str, dict[str, tuple[str, str]]] = {
    key: {"payment_method_types": _PMT_REMOVED}
    for key in (
        "POST /v1/payment_intents",
        "POST /v1/payment_intents/{id}",
        "POST /v1/payment_intents/{id}/confirm",
        "POST /v1/setup_intents",
        "POST /v1/setup_intents/{id}",
        "POST /v1/setup_intents/{id}/confirm",
    )
}

# docs.stripe.com/changelog/dahlia/2026-07-29/allowed-payment-method-types-parameter: "This parameter is
# mutually exclusive with `payment_method_types`, `excluded_payment_method_types`,
# `automatic_payment_methods`, and `payment_method_configuration`." Applied wherever the endpoint takes
# `allowed_payment_method_types` (PaymentIntents, SetupIntents, Checkout Sessions).
_EXCLUSIVE_WITH_ALLOWED = ("excluded_payment_method_types", "automatic_payment_methods",
                           "payment_method_configuration")


def endpoints() -> dict[str, dict[str, Any]]:
    """Endpoint key ('POST /v1/payment_intents/{id}') -> {"sdk": ..., "params": definition name}."""
    result: dict[str, dict[str, Any]] = _DOCUMENT["endpoints"]
    return result


def definition(name: str) -> dict[str, Any]:
    return _DEFS[name]


def check_version(requested: str | None) -> None:
    """Stripe-Version: absent means the account's default version, which here is API_VERSION."""
    if requested is None or requested.strip() in ("", API_VERSION):
        return
    shown = requested.strip()
    if not _VERSION_FORMAT.match(shown):
        raise invalid(f"Invalid Stripe API version: {shown}", param="Stripe-Version")
    raise invalid(
        f"This emulator implements Stripe API version {API_VERSION} only, and this request asked for "
        f"{shown} (Stripe-Version header). Send {API_VERSION}, the version the stripe SDK it was built "
        "from is generated for, or no Stripe-Version header for the account default.",
        param="Stripe-Version",
    )


@dataclass(frozen=True)
class Endpoint:
    """One endpoint's parameter contract."""

    key: str
    params: str  # the definition name of its params object

    def check(self, data: dict[str, Any]) -> None:
        """Raise the ApiError Stripe would answer for these parameters, if any."""
        removed = REMOVED.get(self.key, {})
        for name in data:
            if name in removed:
                code, message = removed[name]
                raise invalid(message.format(version=API_VERSION), param=name, code=code)
        _check_object(self.params, data, "")
        fields = _DEFS[self.params]["fields"]
        if "allowed_payment_method_types" in data:
            for other in _EXCLUSIVE_WITH_ALLOWED:
                if other in fields and other in data:
                    raise invalid(
                        "You may only specify one of these parameters: allowed_payment_method_types, "
                        f"{other}.",
                        param=other,
                    )


def endpoint(key: str) -> Endpoint:
    """The contract of an endpoint the schema names; KeyError for one it does not."""
    return Endpoint(key, endpoints()[key]["params"])


# ---- checking values ---------------------------------------------------------------------------------


def _child(prefix: str, key: str | int) -> str:
    return f"{prefix}[{key}]" if prefix else str(key)


def _check_object(def_name: str, value: dict[str, Any], prefix: str) -> None:
    spec = _DEFS[def_name]
    fields: dict[str, Any] = spec["fields"]
    for key, item in value.items():
        name = _child(prefix, key)
        field = fields.get(key)
        if field is None:
            raise invalid(f"Received unknown parameter: {name}", param=name, code="parameter_unknown")
        _check(field, item, name)
    for key in spec.get("required", ()):
        if key not in value:
            name = _child(prefix, key)
            raise invalid(f"Missing required param: {name}.", param=name, code="parameter_missing")


def _check(spec: Any, value: Any, name: str) -> None:
    if isinstance(spec, str):
        spec = {"scalar": [spec]}
    if isinstance(value, str):
        _check_text(spec, value, name)
    elif isinstance(value, dict):
        if "obj" in spec:
            _check_object(spec["obj"], value, name)
        elif "map" in spec:
            _check_map(spec["map"], value.items(), name)
        elif spec.get("any"):
            return
        elif "list" in spec:
            raise invalid(f"Invalid array: {name} must be an array", param=name)
        else:
            raise _not_scalar(spec, name)
    elif isinstance(value, list):
        if "list" in spec:
            for index, item in enumerate(value):
                _check(spec["list"], item, _child(name, index))
        elif "map" in spec:
            # A map whose keys were all digits, which the form decoder read as an array.
            _check_map(spec["map"], enumerate(value), name)
        elif spec.get("any"):
            return
        elif "obj" in spec:
            raise invalid(f"Invalid hash: {name} must be a hash, not an array", param=name)
        else:
            raise _not_scalar(spec, name)


def _check_map(value_spec: Any, items: Any, name: str) -> None:
    if value_spec == "any":
        return
    for key, item in items:
        _check(value_spec, item, _child(name, key))


def _check_text(spec: dict[str, Any], value: str, name: str) -> None:
    scalars: list[str] = spec.get("scalar", [])
    enum: list[str] = spec.get("enum", [])
    if value == "":
        # Stripe reads "" as "unset": fine where the contract says the parameter can be unset; a plain
        # string may also be empty. Anything else cannot be unset.
        if spec.get("empty") or "str" in scalars or spec.get("any"):
            return
        raise invalid(
            f"You passed an empty string for '{name}'. We assume empty values are an attempt to unset a "
            f"parameter; however '{name}' cannot be unset. You should remove '{name}' from your request "
            "or supply a non-empty value.",
            param=name,
            code="parameter_invalid_empty",
        )
    if value in enum or spec.get("any"):
        return
    for kind in scalars:
        if _SCALAR_OK[kind](value):
            return
    if enum:
        choices = enum + [v for v in ("true", "false") if "bool" in scalars]
        raise invalid(f"Invalid {name}: must be one of {_one_of(choices)}", param=name)
    if "int" in scalars:
        raise invalid(f"Invalid integer: {value}", param=name, code="parameter_invalid_integer")
    if "num" in scalars:
        raise invalid(f"Invalid decimal: {value}", param=name)
    if "bool" in scalars:
        raise invalid(f"Invalid boolean: {value}", param=name)
    if "list" in spec:
        raise invalid(f"Invalid array: {name} must be an array", param=name)
    raise invalid(f"Invalid hash: {name} must be a hash", param=name)


def _not_scalar(spec: dict[str, Any], name: str) -> ApiError:
    kind = {"int": "integer", "num": "decimal", "bool": "boolean"}.get(
        next(iter(spec.get("scalar", [])), ""), "string"
    )
    return invalid(f"Invalid {kind}: {name} must be a {kind}, not a hash or an array", param=name)


_INTEGER = re.compile(r"-?[0-9]+")


def _is_int(value: str) -> bool:
    return _INTEGER.fullmatch(value) is not None


def _is_decimal(value: str) -> bool:
    try:
        return Decimal(value).is_finite()
    except InvalidOperation:
        return False


_SCALAR_OK = {
    "str": lambda value: True,
    "int": _is_int,
    "num": _is_decimal,
    "bool": lambda value: value in ("true", "false"),
}


def _one_of(choices: list[str]) -> str:
    if len(choices) <= 2:
        return " or ".join(choices)
    return ", ".join(choices[:-1]) + f", or {choices[-1]}"
