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


def _result_json(value: Any) -> str:
    """The value as JSON, or ``{repr, type}`` for a value JSON cannot hold (serialised once)."""
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps({"repr": repr(value), "type": type(value).__name__})


def _ok_text(result_json: str) -> str:
    return '{"ok": true, "result": ' + result_json + ', "error": null}'


def _error(exc: BaseException) -> dict[str, Any]:
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != FILENAME:
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb if tb is not None else None)
    text = "".join(lines)
    if len(text) > 16384:
        text = text[:8192] + "\n...\n" + text[-8192:]
    out: dict[str, Any] = {
        "type": type(exc).__name__, "message": str(exc)[:4096], "traceback": text}
    if isinstance(exc, SdkError):
        out["code"] = exc.code
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
                  "memory_error": isinstance(exc, MemoryError)}
    finally:
        _state["host"] = None
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    if text is None:
        text = json.dumps(failed, allow_nan=False)
    if len(text) > max_result_bytes:
        out = {"ok": False, "result": None, "error": {
            "type": "ResultTooLarge", "traceback": "",
            "message": f"result is {len(text)} bytes of JSON; the limit is {max_result_bytes}"}}
        text = json.dumps(out)
    return text
