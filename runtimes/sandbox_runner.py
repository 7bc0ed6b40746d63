"""The Python half of a sandbox worker: runs inside Pyodide, never on the host.

Loaded once into the interpreter before the memory snapshot is taken, so every worker starts with
it already imported. Everything here is reachable by sandboxed code; it holds no secrets and
grants nothing: SDK calls go through ``_host`` (a JS function the worker passes per run) to the
host, which authorises each one as the run's principal and enforces the budget.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import inspect
import json
import keyword
import pydoc  # imported before the snapshot so help() is fast
import re
import sys
import textwrap
import traceback
import types
from typing import Any

from _pyodide._base import EvalCodeResultException, should_quiet
from pyodide.ffi import run_sync

FILENAME = "<code>"
# Mirrors the wire protocol's limits (runtimes/PROTOCOL.md): honest code gets a clear error here,
# only forged frames reach the supervisor's checks.
MAX_CALL_ARGS = 1024 * 1024
MAX_OPERATION = 256
MAX_RUN_CALL_ARGS = 8 * 1024 * 1024
_MISSING = object()
_state: dict[str, Any] = {"host": None, "rev": None, "session_ns": None, "arg_chars": 0}


class SdkError(Exception):
    """A host call was refused or failed; ``code`` is the gateway's stable error code."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message
        self.details = details or {}


def _call(operation: str, kwargs: dict[str, Any]) -> Any:
    host = _state["host"]
    if host is None:
        raise SdkError("sandbox_error", "no host channel in this context")
    try:
        payload = json.dumps(kwargs, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SdkError("invalid_request", f"arguments are not JSON: {exc}") from None
    if len(payload) > MAX_CALL_ARGS or len(operation) > MAX_OPERATION:
        raise SdkError("resource_exhausted",
                       f"the arguments of one call are limited to {MAX_CALL_ARGS} characters "
                       f"of JSON (these are {len(payload)})")
    if _state["arg_chars"] + len(payload) > MAX_RUN_CALL_ARGS:
        raise SdkError("resource_exhausted", "the host-call arguments of one run are limited "
                       f"to {MAX_RUN_CALL_ARGS} characters of JSON")
    _state["arg_chars"] += len(payload)
    reply = json.loads(run_sync(host(operation, payload)))
    if reply.get("ok"):
        return reply.get("value")
    err = reply.get("error") or {}
    raise SdkError(
        str(err.get("code", "internal")), str(err.get("message", "")), err.get("details")
    )


def search(query: str, limit: int = 10) -> Any:
    """Search the operations you may call: returns [{name, summary, signature}]."""
    return _call("sdk.search", {"query": str(query), "limit": int(limit)})


def describe(name: str, path: str | None = None, page: int | None = None) -> Any:
    """One operation (signature, parameters, schemas, docs) by its name, within 2,000 tokens.
    Parts too big to show are {"$elided": path, "tokens": n}: pass that path (and page for a
    paged part) to read them."""
    args: dict[str, Any] = {"name": str(name)}
    if path is not None:
        args["path"] = str(path)
    if page is not None:
        args["page"] = int(page)
    return _call("sdk.describe", args)


def _ident(name: str) -> str:
    if name.isascii() and name.isidentifier() and not keyword.iskeyword(name):
        return name  # the common case, without a loop over its characters (install_sdk)
    out = "".join(c if (c.isalnum() or c == "_") else "_" for c in name) or "_"
    if out[0].isdigit():
        out = "_" + out
    return out + "_" if keyword.iskeyword(out) else out


def _signature(text: str, func: str) -> inspect.Signature:
    """Parse (never execute) the catalog's signature text; fall back to ``(**kwargs)``."""
    try:
        head = text.strip()
        if not head.startswith(func):
            raise ValueError(head)
        tree = ast.parse(f"def {head}:\n    pass\n", mode="exec")
        fn = tree.body[0]
        assert isinstance(fn, ast.FunctionDef)
        params: list[inspect.Parameter] = []
        a = fn.args
        defaults: list[Any] = [None] * (len(a.args) - len(a.defaults)) + list(a.defaults)
        for arg, default in zip(a.args, defaults, strict=True):
            params.append(_param(arg, default, inspect.Parameter.POSITIONAL_OR_KEYWORD))
        for arg, default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
            params.append(_param(arg, default, inspect.Parameter.KEYWORD_ONLY))
        if a.kwarg is not None:
            params.append(inspect.Parameter(a.kwarg.arg, inspect.Parameter.VAR_KEYWORD))
        ret = ast.unparse(fn.returns) if fn.returns is not None else inspect.Signature.empty
        return inspect.Signature(params, return_annotation=ret)
    except Exception:
        return inspect.Signature([inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])


def _param(arg: ast.arg, default: ast.expr | None, kind: Any) -> inspect.Parameter:
    ann = ast.unparse(arg.annotation) if arg.annotation is not None else inspect.Parameter.empty
    value: Any = inspect.Parameter.empty
    if default is not None:
        try:
            value = ast.literal_eval(default)
        except ValueError:
            value = None
    return inspect.Parameter(arg.arg, kind, default=value, annotation=ann)


def _make_function(spec: dict[str, Any]) -> Any:
    operation = str(spec["operation"])
    name = _ident(str(spec["function"]))
    sig = _signature(str(spec.get("signature", "")), str(spec["function"]))

    def sdk_function(*args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(*args, **kwargs)
        arguments = dict(bound.arguments)
        for p in sig.parameters.values():
            if p.kind is inspect.Parameter.VAR_KEYWORD and p.name in arguments:
                arguments.update(arguments.pop(p.name))
        return _call(operation, arguments)

    sdk_function.__name__ = sdk_function.__qualname__ = name
    sdk_function.__signature__ = sig  # type: ignore[attr-defined]
    sdk_function._sdk_signature = str(spec.get("signature", ""))  # type: ignore[attr-defined]
    sdk_function.__doc__ = f"{operation}\n\n{spec.get('doc', '')}".strip()
    sdk_function.__module__ = "sdk." + _ident(str(spec["backend"]))
    return sdk_function


def install_sdk(sdk_text: str) -> None:
    """(Re)build the ``sdk`` package and one module per backend from the host's SDK text.

    A real catalog has thousands of operations and a run uses a few: each function's spec
    arrives as a JSON string and is parsed, and the function built (its signature parsed, ~1 ms
    in Pyodide), the first time code looks it up; so installing costs one decode of the text
    (the format: gateway/sandbox/sdk_text.py, runtimes/PROTOCOL.md)."""
    data = json.loads(sdk_text)
    for key in [k for k in sys.modules if k == "sdk" or k.startswith("sdk.")]:
        del sys.modules[key]
    pkg = types.ModuleType("sdk", "Backend operations you may call. sdk.search(q) finds them.")
    pkg.__path__ = []  # a package, so `from sdk import ledger` and `import sdk.ledger` work
    pkg.SdkError = SdkError  # type: ignore[attr-defined]
    pkg.search = search  # type: ignore[attr-defined]
    pkg.describe = describe  # type: ignore[attr-defined]
    backends: dict[str, tuple[types.ModuleType, dict[str, Any]]] = {}
    for entry in data["backends"]:
        backend = _ident(str(entry["name"]))
        if backend not in backends:
            backends[backend] = (types.ModuleType(f"sdk.{backend}", str(entry["doc"])), {})
        table = backends[backend][1]
        for name, spec in entry["functions"]:
            name = _ident(str(name))
            table.pop(name, None)  # a later spec of the same name wins
            table[name] = spec
    for backend, (mod, table) in backends.items():
        _make_lazy(mod, table)
        setattr(pkg, backend, mod)
        sys.modules[f"sdk.{backend}"] = mod
    sys.modules["sdk"] = pkg


def _make_lazy(mod: types.ModuleType, table: dict[str, Any]) -> None:
    """Module ``__getattr__``/``__dir__`` (PEP 562): a function is built on first lookup."""

    def __getattr__(name: str) -> Any:
        spec = table.get(name)
        if spec is None:
            raise AttributeError(f"module {mod.__name__!r} has no attribute {name!r}")
        fn = _make_function(json.loads(spec) if isinstance(spec, str) else spec)
        setattr(mod, name, fn)  # later lookups find it in the module: one object per name
        return fn

    def __dir__() -> list[str]:
        return sorted(set(mod.__dict__) | set(table))

    mod.__getattr__ = __getattr__  # type: ignore[method-assign]
    mod.__dir__ = __dir__  # type: ignore[method-assign]
    mod.__all__ = list(table)


def use_sdk(sdk_text: str, rev: str) -> None:
    """Install a revision ahead of its first run (a fresh interpreter, before any user code)."""
    install_sdk(sdk_text)
    _state["rev"] = rev


_HELP_CHARS = 6000  # help() on SDK objects prints at most this much (~2,000 tokens)
_pydoc_help = getattr(builtins, "help", None) or pydoc.help


def _sdk_help_text(obj: Any) -> str | None:
    if isinstance(obj, types.ModuleType):
        if obj.__name__ == "sdk" or obj.__name__.startswith("sdk."):
            return f"Help on {obj.__name__}:\n\n{obj.__doc__ or ''}"
        return None
    module = getattr(obj, "__module__", None)
    if callable(obj) and isinstance(module, str) and module.startswith("sdk.") and hasattr(
            obj, "__signature__"):
        signature = getattr(obj, "_sdk_signature", "") or f"{obj.__name__}{obj.__signature__}"
        return f"Help on {module}.{obj.__name__}:\n\n{signature}\n\n{obj.__doc__ or ''}"
    return None


def _help(*args: Any, **kwargs: Any) -> None:
    """help(), bounded for SDK modules and functions (a backend may have 1,000+ of them)."""
    if len(args) == 1 and not kwargs:
        text = _sdk_help_text(args[0])
        if text is not None:
            if len(text) > _HELP_CHARS:
                text = text[:_HELP_CHARS] + "\n... (cut: sdk.describe(name) shows more)"
            print(text)
            return
    _pydoc_help(*args, **kwargs)


builtins.help = _help


# What the host's parser accepts of a result (gateway/values.py, ``loads_bounded``): nesting of
# at most MAX_WIRE_DEPTH, integers within Python's default digit limit. A value past either is
# a value the wire cannot hold, so it comes back as ``{repr, type}`` like any other; honest code
# never gets a protocol violation (a crash, its session ended) for what it returned.
MAX_WIRE_DEPTH = 512
MAX_INT_DIGITS = 4300
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_LONG_NUMBER = re.compile(f"[0-9]{{{MAX_INT_DIGITS + 1}}}")
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST = re.compile(r"\[\]|\{\}")  # one scan removes exactly one level
# Captured before any user code runs: code that rebinds sys's functions changes nothing here.
_get_int_digits = sys.get_int_max_str_digits
_set_int_digits = sys.set_int_max_str_digits


def _wire_safe(text: str) -> bool:
    """Whether the host's bounded parser accepts ``text`` (JSON from ``json.dumps``)."""
    deep = text.count("[") + text.count("{") > MAX_WIRE_DEPTH
    if not deep and _LONG_NUMBER.search(text) is None:
        return True  # the common case: two C-speed scans
    bare = _STRING.sub('""', text)
    if _LONG_NUMBER.search(bare) is not None:
        return False
    if deep:
        nest = _NOT_BRACKET.sub("", bare)
        for _ in range(MAX_WIRE_DEPTH):  # each pass removes the innermost level
            if not nest:
                return True
            nest = _INNERMOST.sub("", nest)
        return not nest
    return True


def _dumps_for_wire(value: Any) -> str:
    """``json.dumps`` under the host's integer digit limit; ValueError for what the host's
    parser would refuse."""
    digits = _get_int_digits()
    _set_int_digits(MAX_INT_DIGITS)
    try:
        text = json.dumps(value, allow_nan=False)
    finally:
        _set_int_digits(digits)
    if not _wire_safe(text):
        raise ValueError("the value is nested too deep or holds too large a number for JSON")
    return text


def _result_json(value: Any) -> str:
    """The value as JSON, or ``{repr, type}`` for a value JSON (as the host reads it) cannot
    hold (serialised once)."""
    try:
        return _dumps_for_wire(value)
    except (TypeError, ValueError):
        return _dumps_for_wire({"repr": repr(value), "type": _type_name(value)})


def _type_name(value: Any) -> str:
    # type's own __name__: a metaclass can redefine the attribute to return anything.
    name = _TYPE_NAME.__get__(type(value))
    return name if isinstance(name, str) else "object"


_TYPE_NAME = type.__dict__["__name__"]


def _text(make: Any, default: str, limit: int) -> str:
    """``make()`` as a plain str of at most ``limit`` characters, or ``default`` if user code
    it runs (``__str__``, properties) raises anything or returns something else."""
    try:
        value = make()
        if not isinstance(value, str):
            return default
        return str.__str__(value)[:limit]  # a plain str, never a subclass's slicing
    except BaseException:
        return default


def _ok_text(result_json: str) -> str:
    return '{"ok": true, "result": ' + result_json + ', "error": null}'


def _error(exc: BaseException) -> dict[str, Any]:
    """The report of a user-code exception: plain, bounded strings only. Every part of it may
    run the code's own methods (``__str__``, a metaclass's ``__name__``, properties), which may
    raise or return anything: that must still be a user error, never an interpreter fatal."""

    def trace() -> str:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != FILENAME:
            tb = tb.tb_next
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        if len(text) > 16384:
            text = text[:8192] + "\n...\n" + text[-8192:]
        return text

    out: dict[str, Any] = {
        "type": _text(lambda: _type_name(exc), "BaseException", 256),
        "message": _text(lambda: str(exc), "<the exception's str() failed>", 4096),
        "traceback": _text(trace, "", 16384 + 8)}
    if issubclass(type(exc), SdkError):  # type(): isinstance would ask exc.__class__
        out["code"] = _text(lambda: str(exc.code), "internal", 256)
    return out


def _quiet(source: str) -> bool:
    """``should_quiet`` (a trailing ``;`` suppresses the result) without tokenizing the whole
    program when its answer is plain: with no comment in the text, the last token is ``;``
    only if the last non-blank character is."""
    if "#" not in source and not source.rstrip().endswith(";"):
        return False
    return should_quiet(source)


def _eval(source: str, ns: dict[str, Any]) -> Any:
    """Run ``source`` in ``ns``; the value of its last expression statement, else None.

    What ``pyodide.code.eval_code(source, ns, filename=FILENAME)`` does (dedent, parse, the last
    expression raised as ``EvalCodeResultException``, a trailing ``;`` quiets it, compiled
    without inheriting this module's ``__future__`` flags), without its per-run overheads:
    a deepcopy of the raise template, a walk of the whole tree to fill in locations the new
    nodes get here directly, and a tokenize of the whole program for the ``;`` check
    (~0.5 ms of a ~0.8 ms trivial run in the worker)."""
    source = textwrap.dedent(source)
    mod = compile(source, FILENAME, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    last = mod.body[-1] if mod.body else None
    if isinstance(last, ast.Expr) and not _quiet(source):
        # raise ___EvalCodeResultException[0](<last expression>), at the expression's place
        holder = ast.Subscript(ast.Name("___EvalCodeResultException", ast.Load()),
                               ast.Constant(0), ast.Load())
        raise_node = ast.Raise(ast.Call(holder, [last.value], []), None)
        for node in (holder, holder.value, holder.slice, raise_node.exc, raise_node):
            ast.copy_location(node, last)
        mod.body[-1] = raise_node
    code = compile(mod, FILENAME, "exec", 0, dont_inherit=True)
    try:
        eval(code, ns, ns)
    except EvalCodeResultException as exc:
        return exc.value
    return None


def warm(promise: Any = None) -> None:
    """Exercise the run path once in a new spare (our code, no user state) so the first real
    run does not pay for first-call setup (the first JSPI suspension costs ~20 ms)."""
    if promise is not None:
        run_sync(promise)
    _eval("x = [1]\nlen(x)", {"__name__": "__main__", "__builtins__": builtins})
    json.loads(_ok_text(json.dumps([1, "a", None], allow_nan=False)))
    _signature("f(a: str, b: int = 1) -> dict", "f")


def run(source: str, inputs_json: str, sdk_json: str | None, sdk_rev: str, host: Any,
        session: bool, max_result_bytes: int) -> str:
    """Run one program; returns a JSON string ``{ok, result, error, memory_error}``."""
    _state["host"] = host
    _state["arg_chars"] = 0
    if sdk_json is not None and (sdk_rev != _state["rev"] or not sdk_rev):
        install_sdk(sdk_json)
        _state["rev"] = sdk_rev
    elif sdk_json is None and sdk_rev != _state["rev"]:
        # The supervisor sends null only for the revision this interpreter holds.
        raise RuntimeError(f"SDK revision {sdk_rev!r} was never installed")
    if session:
        if _state["session_ns"] is None:
            _state["session_ns"] = {"__name__": "__main__", "__builtins__": builtins}
        ns = _state["session_ns"]
    else:
        ns = {"__name__": "__main__", "__builtins__": builtins}
    ns["inputs"] = json.loads(inputs_json)
    before = ns.get("result", _MISSING)
    text: str | None = None
    failed: dict[str, Any] | None = None
    try:
        value = _eval(source, ns)
        if value is None and ns.get("result", _MISSING) is not before:
            value = ns.get("result")
        text = _ok_text(_result_json(value))
    except BaseException as exc:  # user code may raise anything, SystemExit included
        failed = {"ok": False, "result": None, "error": _error(exc),
                  # type(): the real class (an exception's __class__ can claim anything)
                  "memory_error": issubclass(type(exc), MemoryError)}
    finally:
        _state["host"] = None
        for stream in (sys.stdout, sys.stderr):
            # The code's own stream object may raise anything here, SystemExit included.
            with contextlib.suppress(BaseException):
                stream.flush()
    if text is None:
        text = json.dumps(failed, allow_nan=False)
    if len(text) > max_result_bytes:
        out = {"ok": False, "result": None, "error": {
            "type": "ResultTooLarge", "traceback": "",
            "message": f"result is {len(text)} bytes of JSON; the limit is {max_result_bytes}"}}
        text = json.dumps(out)
    return text
