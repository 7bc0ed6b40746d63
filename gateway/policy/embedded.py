"""The embedded engine: regorus in-process, with hot reload and a sound decision cache.

regorus Engines are thread-affine and hold the GIL (~0.2 ms per decision), so decisions are
evaluated inline on the calling thread. Each thread gets its own Engine per revision (built on
first use, ~2 ms); the serving :class:`Bundle` is swapped atomically by the reload watcher,
so in-flight calls finish on the revision they started with.

Decisions are cached per revision, keyed on the parts of ``input`` the policy can read
(found statically, see :mod:`.inputpaths`): for the shipped policy that is the principal, the
action kind/operation and the catalog entry, not arguments or time. A policy that reads the
whole input or calls a non-deterministic built-in is never cached.

What the files say is what runs (OPA's file-watcher semantics): a change that does not compile
is rejected and the previous revision keeps serving, but files that are gone or empty mean *no*
policy (every decision a deny with :data:`POLICY_UNAVAILABLE`), and a policy whose ``decision``
is missing or undefined serves as it is (OPA would answer undefined: a deny) while
``unavailable`` tells readiness it is not usable. The evaluator, and with it the decision cache,
belongs to one revision: nothing decided by an old revision is served after a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import regorus
import structlog

from gateway.audit.outcome import audited
from gateway.errors import PolicyError
from gateway.models import Decision

from .base import (
    ADVERTISE,
    ENTRYPOINT,
    NO_REVISION,
    POLICY_UNAVAILABLE,
    Discovery,
    NoPolicy,
    PolicySettings,
    default_policy_dir,
    parse_advertise,
    parse_decision,
)
from .bundle import (
    UNDEFINED,
    Bundle,
    Snapshot,
    clean_error,
    engine_failure,
    load_bundle,
    probe,
    snapshot,
)
from .decisionlog import fail_closed, finish, finish_discovery, policy_unavailable, tracer
from .inputpaths import CacheKeyFn, make_key_fn

__all__ = ["EmbeddedPolicyEngine", "Evaluator"]

_log = structlog.get_logger("switchboard.policy")

_PER_THREAD = threading.local()
_ENGINES_PER_THREAD = 4
_MAX_KEY_CHARS = 8192


class Evaluator:
    """Synchronous evaluation of one bundle, with one regorus Engine per thread."""

    def __init__(self, bundle: Bundle, *, cache_size: int = 4096) -> None:
        self.bundle = bundle
        # Compile + probe on the creating thread: a bad policy fails here, not per decision.
        engine = bundle.build_engine()
        self.probe_problem: str | None = probe_problem(probe(engine), bundle)
        self._token = object()
        # Even the creating thread's engine lives in the thread-local, never on this object:
        # an Evaluator may be garbage-collected on any thread, and a regorus Engine dropped
        # off its own thread raises (at a random later point, inside whatever code runs).
        self._per_thread().update({self._token: engine})
        self.cache_key: CacheKeyFn | None = (
            make_key_fn(engine.get_ast_as_json()) if cache_size > 0 else None
        )
        self._cache_size = cache_size
        self._cache: OrderedDict[str, Decision] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.cache_hits = 0

    @property
    def revision(self) -> str:
        return self.bundle.revision

    @staticmethod
    def _per_thread() -> dict[object, regorus.Engine]:
        engines: dict[object, regorus.Engine] | None = getattr(_PER_THREAD, "engines", None)
        if engines is None:
            engines = _PER_THREAD.engines = {}
        return engines

    def release(self) -> None:
        """Drop this evaluator's engine on the calling thread (call it where it was used)."""
        self._per_thread().pop(self._token, None)

    def _engine(self) -> regorus.Engine:
        # Each thread keeps its few newest engines in a module-level thread-local, so they are
        # dropped by their own thread.
        engines = self._per_thread()
        engine = engines.get(self._token)
        if engine is None:
            engine = self.bundle.build_engine()
            engines[self._token] = engine
            while len(engines) > _ENGINES_PER_THREAD:
                del engines[next(iter(engines))]
        return engine

    def evaluate(self, input: dict[str, Any], rule: str = ENTRYPOINT) -> Any:
        """The rule's value (None when undefined or null); PolicyError on failure."""
        engine = self._engine()
        try:
            # regorus takes the process down (SIGSEGV) on a string with an unpaired surrogate
            # instead of raising: the engine only ever sees what orjson can write as JSON
            # (no lone surrogates, integers within 64 bits, depth <= 255, string keys).
            orjson.dumps(input)
        except TypeError as exc:
            raise PolicyError(f"the policy input is not valid JSON: {clean_error(exc)}") from None
        try:
            engine.set_input(input)
            # eval_rule, not eval_rule_as_json: the JSON variant renders undefined as the
            # string "<undefined>", and the native one is ~25 % faster.
            return engine.eval_rule(rule)
        except Exception as exc:
            if "not a valid rule path" in str(exc):  # no module defines the rule
                raise PolicyError(f"{rule} is undefined: no policy file defines it") from exc
            raise PolicyError(f"policy evaluation failed: {clean_error(exc)}") from exc
        except BaseException as exc:  # pyo3 PanicException derives from BaseException
            if not engine_failure(exc):
                raise
            raise PolicyError(f"policy engine panicked: {clean_error(exc)}") from exc

    def decide(self, input: dict[str, Any]) -> Decision:
        """Evaluate and parse; never raises for policy problems (fail-closed deny instead)."""
        if not isinstance(input, dict):
            return fail_closed("policy input must be a JSON object")
        key = None
        if self.cache_key is not None:
            try:
                key = self.cache_key(input)
            except (TypeError, ValueError):
                key = None  # not JSON: evaluate (and fail) the slow way
            if key is not None and len(key) > _MAX_KEY_CHARS:
                key = None  # a policy keyed on big arguments: do not hold them in memory
            if key is not None:
                with self._cache_lock:
                    hit = self._cache.get(key)
                    if hit is not None:
                        self._cache.move_to_end(key)
                        self.cache_hits += 1
                        return hit
        try:
            action = input.get("action")
            kind = str(action.get("kind", "")) if isinstance(action, dict) else ""
            decision = parse_decision(self.evaluate(input), kind=kind)
        except PolicyError as exc:
            return fail_closed(exc.message)  # never cached: the next call tries again
        if key is not None:
            with self._cache_lock:
                self._cache[key] = decision
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return decision


def _holds_values(data: Any) -> bool:
    """False for data that is only (nested) empty objects: no data file, or only empty ones."""
    return not isinstance(data, dict) or any(_holds_values(v) for v in data.values())


def probe_problem(value: Any, bundle: Bundle) -> str | None:
    """Why the probe's decision makes the policy unusable (None: it is a well-formed one)."""
    if value is UNDEFINED or value is None:
        why = "the rule is missing or depends on something absent"
        if not _holds_values(bundle.data):
            why += " (no data file is loaded)"
        return f"{ENTRYPOINT} is undefined for the probe input: {why}"
    try:
        parse_decision(value)
    except PolicyError as exc:
        return f"the probe's decision is malformed: {exc.message}"
    return None


class EmbeddedPolicyEngine:
    """:class:`PolicyEngine` over regorus, reloading the policy directory when it changes."""

    engine_name = "embedded"

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings
        self.root: Path = default_policy_dir(settings.path)
        self._evaluator: Evaluator | None = None
        self._absent: str | None = None  # why the files hold no policy; None when they do
        self._snapshot: Snapshot = ()
        self._watcher: asyncio.Task[None] | None = None
        self.last_reload_error: str | None = None

    @property
    def revision(self) -> str:
        if self._evaluator is not None:
            return self._evaluator.revision
        return NO_REVISION if self._absent else ""

    @property
    def unavailable(self) -> str | None:
        """None while a usable policy serves; else why not (readiness: NOT_SERVING)."""
        if self._absent is not None:
            return self._absent
        if self._evaluator is None:
            return "policy engine is not started"
        return self._evaluator.probe_problem

    async def start(self) -> None:
        """Load the policy and start watching.

        Raises PolicyError when the directory does not exist or the policy does not compile
        (``opa run`` refuses to start on both). A directory without policy starts the engine
        with no policy (every decision denied, ``unavailable`` set), as OPA starts with none.
        """
        if not self.root.is_dir():
            raise PolicyError(f"policy directory {self.root} does not exist")
        self._snapshot = snapshot(self.root)
        try:
            self._evaluator = Evaluator(load_bundle(self.root))
        except NoPolicy as exc:
            self._absent = exc.message
            _log.error("policy.unavailable", reason=exc.message, root=str(self.root))
        else:
            _log.info("policy.loaded", revision=self.revision, root=str(self.root),
                      unavailable=self.unavailable)
        if self.settings.reload and self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="policy-reload")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self._evaluator is not None:
            self._evaluator.release()  # on the serving thread, where its engine lives

    def reload_now(self) -> bool:
        """Reload if the files changed; True when what serves changed (a new revision, or
        no policy at all).

        A bundle that fails to load, compile or probe is rejected and logged; whatever served
        before (a revision, or no policy) keeps serving. Files that hold no policy (directory
        gone or emptied, every ``.rego`` removed or zero-byte) are not an error: nothing serves
        and every decision is denied until a policy is back.
        """
        current = snapshot(self.root)
        if current == self._snapshot:
            return False
        self._snapshot = current
        previous = self.revision
        try:
            bundle = load_bundle(self.root)
            if self._evaluator is not None and bundle.revision == self._evaluator.revision:
                return False
            evaluator = Evaluator(bundle)
        except NoPolicy as exc:
            self.last_reload_error = None
            if self._absent == exc.message and self._evaluator is None:
                return False
            self._evaluator = None  # drop the old revision and its cache: nothing serves
            self._absent = exc.message
            _log.error("policy.unavailable", reason=exc.message, previous=previous)
            return True
        except PolicyError as exc:
            self.last_reload_error = exc.message
            _log.error("policy.reload_rejected", error=exc.message, serving=previous)
            return False
        except Exception as exc:  # anything else that fails a load rejects it the same way
            self.last_reload_error = f"the policy could not be loaded: {clean_error(exc)}"
            _log.error("policy.reload_rejected", error=self.last_reload_error, serving=previous)
            return False
        self._evaluator = evaluator  # atomic swap; in-flight decisions hold the old evaluator
        self._absent = None
        self.last_reload_error = None
        if evaluator.probe_problem:
            _log.error("policy.reloaded", revision=self.revision, previous=previous,
                       unavailable=evaluator.probe_problem)
        else:
            _log.info("policy.reloaded", revision=self.revision, previous=previous)
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval_s)
            try:
                self.reload_now()
            except Exception as exc:  # never let the watcher die
                _log.error("policy.reload_failed", error=str(exc))

    async def decide(self, input: dict[str, Any]) -> Decision:
        with tracer.start_as_current_span(
                "policy.decide", record_exception=False,
                set_status_on_exception=False) as span, audited(span):
            start = time.perf_counter()
            evaluator = self._evaluator
            if evaluator is None:
                absent = self._absent
                decision = (policy_unavailable(absent) if absent is not None
                            else fail_closed("policy engine is not started"))
                revision = self.revision
            else:
                decision = evaluator.decide(input)
                revision = evaluator.revision
                if decision.error_code and evaluator.probe_problem:
                    # What serves has no usable decision (rule gone, data gone): say so.
                    decision = replace(decision, reasons=(*decision.reasons, POLICY_UNAVAILABLE))
            latency_ms = (time.perf_counter() - start) * 1000
            return finish(
                decision,
                input=input,
                revision=revision,
                engine=self.engine_name,
                latency_ms=latency_ms,
                span=span,
            )

    async def advertise(self, input: dict[str, Any]) -> Discovery:
        """Evaluate :data:`ADVERTISE` (uncached here: the pipeline caches per role set and
        revision); a missing, undefined or malformed result advertises nothing."""
        with tracer.start_as_current_span(
                "policy.advertise", record_exception=False,
                set_status_on_exception=False) as span, audited(span):
            start = time.perf_counter()
            evaluator = self._evaluator
            if evaluator is None:
                result = Discovery(policy_revision=self.revision,
                                   error=self._absent or "policy engine is not started")
            else:
                try:
                    tools, code = parse_advertise(evaluator.evaluate(input, ADVERTISE))
                    result = Discovery(tools, code, evaluator.revision)
                except PolicyError as exc:
                    result = Discovery(policy_revision=evaluator.revision, error=exc.message)
            return finish_discovery(result, engine=self.engine_name, span=span,
                                    latency_ms=(time.perf_counter() - start) * 1000)
