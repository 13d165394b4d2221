"""Generate ``stripe_schema.json``: the parameters Stripe accepts, per endpoint, at the installed SDK's API
version, read from the stripe SDK's generated parameter types (``stripe/params/*.py`` TypedDicts, which
Stripe generates from its OpenAPI specification).

    python -m stripe_emulator.schema_gen          # rewrite stripe_emulator/stripe_schema.json
    python -m stripe_emulator.schema_gen --check  # exit 1 when the committed file differs

For every endpoint in ENDPOINTS the SDK service method is read, not trusted from a list: its source gives
the HTTP method and path (the ``_request("post", "/v1/...")`` call) and the name of its params TypedDict,
whose fields (nested TypedDicts, lists, maps, ``Literal`` enums, ``''`` for "unset") become the schema.
Only the endpoint list below is ours; everything an endpoint accepts comes from the SDK. An SDK bump that
changes the contract changes this file's bytes, and tests/unit/test_stripe_schema.py fails until the file
is regenerated in a deliberate commit.

Only the emulator's tests and this generator import stripe; the emulator reads the JSON file at run time.
"""

from __future__ import annotations

import argparse
import ast
import decimal
import functools
import importlib
import inspect
import json
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

import stripe
import typing_extensions
from stripe._api_version import _ApiVersion
from stripe._request_options import RequestOptions

SCHEMA_PATH = Path(__file__).with_name("stripe_schema.json")

# (StripeClient attribute path, service method). The endpoints the emulator serves, and those it is
# expected to serve (hosted Checkout in setup mode, account connection, webhook endpoints, refunds,
# disputes, Connect OAuth), so that they are validated from their first line of code.
ENDPOINTS: tuple[tuple[str, str], ...] = (
    ("v1.accounts", "retrieve_current"),
    ("v1.charges", "list"),
    ("v1.charges", "retrieve"),
    ("v1.checkout.sessions", "create"),
    ("v1.checkout.sessions", "expire"),
    ("v1.checkout.sessions", "list"),
    ("v1.checkout.sessions", "retrieve"),
    ("v1.customers", "create"),
    ("v1.customers", "delete"),
    ("v1.customers", "list"),
    ("v1.customers", "retrieve"),
    ("v1.customers", "search"),
    ("v1.customers", "update"),
    ("v1.customers.payment_methods", "list"),
    ("v1.customers.payment_methods", "retrieve"),
    ("v1.disputes", "close"),
    ("v1.disputes", "list"),
    ("v1.disputes", "retrieve"),
    ("v1.disputes", "update"),
    ("v1.events", "list"),
    ("v1.events", "retrieve"),
    ("v1.payment_intents", "cancel"),
    ("v1.payment_intents", "confirm"),
    ("v1.payment_intents", "create"),
    ("v1.payment_intents", "list"),
    ("v1.payment_intents", "retrieve"),
    ("v1.payment_intents", "search"),
    ("v1.payment_intents", "update"),
    ("v1.payment_methods", "attach"),
    ("v1.payment_methods", "detach"),
    ("v1.payment_methods", "list"),
    ("v1.payment_methods", "retrieve"),
    ("v1.payment_methods", "update"),
    ("v1.refunds", "cancel"),
    ("v1.refunds", "create"),
    ("v1.refunds", "list"),
    ("v1.refunds", "retrieve"),
    ("v1.setup_intents", "cancel"),
    ("v1.setup_intents", "confirm"),
    ("v1.setup_intents", "create"),
    ("v1.setup_intents", "list"),
    ("v1.setup_intents", "retrieve"),
    ("v1.setup_intents", "update"),
    ("v1.webhook_endpoints", "create"),
    ("v1.webhook_endpoints", "delete"),
    ("v1.webhook_endpoints", "list"),
    ("v1.webhook_endpoints", "retrieve"),
    ("v1.webhook_endpoints", "update"),
    ("oauth", "deauthorize"),
    ("oauth", "token"),
)

# Keys every params TypedDict inherits from RequestOptions: per-request options sent as headers.
_OPTION_KEYS = frozenset(RequestOptions.__annotations__)
_SCALARS: dict[Any, str] = {str: "str", int: "int", bool: "bool", float: "num", decimal.Decimal: "num"}


class SchemaError(Exception):
    """The SDK has a shape this generator does not know how to describe."""


def endpoint_key(method: str, path: str) -> str:
    """'POST /v1/payment_intents/{id}/confirm': every path parameter is written {id}."""
    parts = ["{id}" if p.startswith("{") and p.endswith("}") else p for p in path.split("/")]
    return f"{method.upper()} {'/'.join(parts)}"


# ---- reading a service method ------------------------------------------------------------------------


def _service(client: stripe.StripeClient, attribute_path: str) -> Any:
    return functools.reduce(getattr, attribute_path.split("."), client)


def _imports(module: types.ModuleType) -> dict[str, str]:
    """Name -> module for every `from x import Name` in the module (TYPE_CHECKING blocks included)."""
    names: dict[str, str] = {}
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = node.module
    return names


def _annotation_name(node: ast.expr | None) -> str:
    """'PaymentIntentCreateParams' from `"PaymentIntentCreateParams"` or `Optional["..."]`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Subscript):
        return _annotation_name(node.slice)
    raise SchemaError(f"unexpected params annotation {ast.dump(node) if node else None}")


def _request_call(function: ast.FunctionDef) -> tuple[str, str]:
    """The HTTP method and path template of the method's `_request(...)` / `request(...)` call."""
    for node in ast.walk(function):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("_request", "request")
            and len(node.args) >= 2
        ):
            method, path = node.args[0], node.args[1]
            if isinstance(path, ast.Call) and isinstance(path.func, ast.Attribute):
                path = path.func.value  # "/v1/x/{id}".format(...)
            if isinstance(method, ast.Constant) and isinstance(path, ast.Constant):
                return str(method.value), str(path.value)
    raise SchemaError(f"no request call in {function.name}")


def sdk_endpoint(client: stripe.StripeClient, attribute_path: str, method_name: str) -> tuple[str, str, type]:
    """(HTTP method, path template, params TypedDict) of one SDK service method."""
    service_class = type(_service(client, attribute_path))
    function = getattr(service_class, method_name)
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    definition = tree.body[0]
    assert isinstance(definition, ast.FunctionDef)
    http_method, path = _request_call(definition)
    params_arg = next(a for a in (*definition.args.posonlyargs, *definition.args.args) if a.arg == "params")
    name = _annotation_name(params_arg.annotation)
    module = sys.modules[service_class.__module__]
    head, _, rest = name.partition(".")
    source_module = importlib.import_module(_imports(module).get(head, module.__name__))
    params_type = getattr(source_module, head)
    if rest:
        params_type = getattr(params_type, rest)  # OAuth.OAuthTokenParams
    return http_method, path, params_type


# ---- describing a TypedDict --------------------------------------------------------------------------


class _Builder:
    """Turns TypedDicts into schema definitions, sharing one definition between structurally equal ones
    (the SDK repeats the same nested shape under a different class name for every endpoint)."""

    def __init__(self) -> None:
        self.defs: dict[str, dict[str, Any]] = {}
        self._by_shape: dict[str, str] = {}
        self._by_class: dict[type, str] = {}

    def obj(self, typed_dict: type, *, shared: bool = True) -> str:
        """The definition's name. An endpoint's own params (`shared=False`) keep their class name, so
        that the endpoints table reads as the SDK does; nested shapes are shared."""
        if typed_dict in self._by_class:
            return self._by_class[typed_dict]
        required = typed_dict.__required_keys__  # type: ignore[attr-defined]
        fields = {
            name: self.type(hint, f"{typed_dict.__name__}.{name}")
            for name, hint in sorted(_hints(typed_dict).items())
        }
        definition: dict[str, Any] = {"fields": fields}
        wanted = sorted(name for name in fields if name in required)
        if wanted:
            definition["required"] = wanted
        shape = json.dumps(definition, sort_keys=True)
        name = self._by_shape.get(shape) if shared else None
        if name is None:
            name = typed_dict.__name__ if fields or not shared else "EmptyObject"
            if name in self.defs:
                raise SchemaError(f"two different TypedDicts are named {name}")
            self.defs[name] = definition
            if shared:
                self._by_shape[shape] = name
        self._by_class[typed_dict] = name
        return name

    def type(self, hint: Any, where: str) -> Any:
        members = typing.get_args(hint) if _is_union(hint) else (hint,)
        spec: dict[str, Any] = {}
        scalars: set[str] = set()
        enum: list[str] = []
        plain_str = False
        for member in members:
            origin = typing.get_origin(member)
            if member is type(None):
                continue
            if member in _SCALARS:
                if member is str:
                    plain_str = True
                else:
                    scalars.add(_SCALARS[member])
            elif origin is typing.Literal:
                for value in typing.get_args(member):
                    if value == "":
                        spec["empty"] = True
                    elif isinstance(value, str):
                        enum.append(value)
                    else:
                        raise SchemaError(f"{where}: non-string Literal {value!r}")
            elif origin is list:
                (item,) = typing.get_args(member)
                spec["list"] = self.type(item, f"{where}[]")
            elif origin is dict:
                key, value = typing.get_args(member)
                if key is not str:
                    raise SchemaError(f"{where}: map keyed by {key!r}")
                spec["map"] = self.type(value, f"{where}{{}}")
            elif _is_untyped_object(member):
                spec["map"] = "any" if not typing.get_args(member) else self.type(
                    typing.get_args(member)[0], f"{where}{{}}"
                )
            elif member is Any:
                spec["any"] = True
            elif typing_extensions.is_typeddict(member):
                if "obj" in spec:
                    raise SchemaError(f"{where}: a union of two objects")
                spec["obj"] = self.obj(member)
            else:
                raise SchemaError(f"{where}: unsupported type {member!r}")
        if enum:
            # `Literal[...] | str` is the SDK leaving room for values a later API version adds; at this
            # version the API takes the listed values only.
            spec["enum"] = enum
        elif plain_str:
            scalars.add("str")
        if scalars:
            spec["scalar"] = sorted(scalars)
        if list(spec) == ["scalar"] and len(scalars) == 1:
            return next(iter(scalars))  # the common case, written as "str" / "int" / "bool" / "num"
        if spec.get("map") == "any" and list(spec) == ["map"]:
            return {"map": "any"}
        if not spec:
            raise SchemaError(f"{where}: no usable type in {hint!r}")
        return spec


def _hints(typed_dict: type) -> dict[str, Any]:
    """The TypedDict's field types, without the inherited RequestOptions keys (whose annotations name
    types that exist only for type checkers)."""
    own = {k: v for k, v in typed_dict.__annotations__.items() if k not in _OPTION_KEYS}
    probe = type("_Probe", (), {"__annotations__": own, "__module__": typed_dict.__module__})
    return typing.get_type_hints(probe)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _is_untyped_object(hint: Any) -> bool:
    origin = typing.get_origin(hint) or hint
    return isinstance(origin, type) and origin.__name__ == "UntypedStripeObject"


# ---- the document ------------------------------------------------------------------------------------


def build() -> dict[str, Any]:
    client = stripe.StripeClient("sk_test_schema_generator")
    builder = _Builder()
    endpoints: dict[str, Any] = {}
    for attribute_path, method_name in ENDPOINTS:
        http_method, path, params_type = sdk_endpoint(client, attribute_path, method_name)
        key = endpoint_key(http_method, path)
        if key in endpoints:
            raise SchemaError(f"{key} listed twice")
        endpoints[key] = {
            "sdk": f"{attribute_path}.{method_name}",
            "params": builder.obj(params_type, shared=False),
        }
    return {
        "api_version": _ApiVersion.CURRENT,
        "sdk_version": stripe.VERSION,
        "generated_by": "python -m stripe_emulator.schema_gen",
        "endpoints": dict(sorted(endpoints.items())),
        "defs": dict(sorted(builder.defs.items())),
    }


def render() -> bytes:
    return (json.dumps(build(), indent=1, sort_keys=True) + "\n").encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed schema is stale")
    args = parser.parse_args(argv)
    fresh = render()
    if args.check:
        if SCHEMA_PATH.read_bytes() != fresh:
            print(f"{SCHEMA_PATH.name} is stale for stripe {stripe.VERSION}: run python -m "
                  "stripe_emulator.schema_gen", file=sys.stderr)
            return 1
        print(f"{SCHEMA_PATH.name} matches stripe {stripe.VERSION} ({_ApiVersion.CURRENT})")
        return 0
    SCHEMA_PATH.write_bytes(fresh)
    print(f"wrote {SCHEMA_PATH} ({len(fresh)} bytes) for stripe {stripe.VERSION} ({_ApiVersion.CURRENT})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
