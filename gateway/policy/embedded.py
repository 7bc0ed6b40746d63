"""The embedded engine: regorus in policy worker processes, with hot reload and a decision cache.

regorus holds the GIL for a whole evaluation and has no time limit, so the gateway never
evaluates a decision itself: cache misses and ``advertise`` go to this process's policy
workers (:mod:`.workerpool`), each bounded by ``timeout_ms`` (an overrun is a fail-closed deny
and the worker is killed and replaced). Checking a new revision before it serves (compile +
probe: a bundle that does not compile is rejected) runs in a worker too, under the same
deadline discipline (``LOAD_FACTOR`` x ``timeout_ms``): a revision slow to compile or probe,
or one that crashes the engine, is refused and costs a worker, never the gateway process.
What stays here is reading the files, the cache key (from the AST the check returns), and the
cache. ``Evaluator.decide``/``evaluate`` still evaluate in-process,
for ``switchboard policy check``/``test`` and the benchmarks.

Decisions are cached per revision, keyed on the parts of ``input`` the policy can read
(found statically, see :mod:`.inputpaths`): for the shipped policy that is the principal, the
action kind/operation and the catalog entry, not arguments or time. A policy that reads the
whole input or calls a non-deterministic built-in is never cached. A hit costs what it did
before the workers: it never leaves the gateway.

What the files say is what runs (OPA's file-watcher semantics): a change that does not compile
is rejected and the previous revision keeps serving, but files that are gone or empty mean *no*
policy (every decision a deny with :data:`POLICY_UNAVAILABLE`), and a policy whose ``decision``
is missing or undefined serves as it is (OPA would answer undefined: a deny) while
``unavailable`` tells readiness it is not usable. The evaluator, and with it the decision cache,
belongs to one revision: nothing decided by an old revision is served after a change, and
every request to a worker names its revision.
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
from .bundle import UNDEFINED, Bundle, Snapshot, clean_error, load_bundle, probe, snapshot
from .decisionlog import fail_closed, finish, finish_discovery, policy_unavailable, tracer
from .inputpaths import CacheKeyFn, make_key_fn
from .worker import RuleFailed, evaluate_rule
from .workerpool import Checked, LoadAborted, PolicyWorkers, input_json

__all__ = ["EmbeddedPolicyEngine", "Evaluator", "action_kind", "probe_problem"]

_log = structlog.get_logger("switchboard.policy")

_PER_THREAD = threading.local()
_ENGINES_PER_THREAD = 4
_MAX_KEY_CHARS = 8192


class Evaluator:
    """Synchronous evaluation of one bundle, with one regorus Engine per thread."""

    def __init__(self, bundle: Bundle, *, cache_size: int = 4096,
                 checked: Checked | None = None) -> None:
        """``checked``: what a policy worker's check found (the gateway's engine: nothing is
        compiled in this process); without it, compile + probe here, on the creating thread
        (``policy check``/``test``, benchmarks): a bad policy fails here, not per decision."""
        self.bundle = bundle
        self._token = object()
        if checked is None:
            engine = bundle.build_engine()
            value, ast = probe(engine), engine.get_ast_as_json()
            # Even the creating thread's engine lives in the thread-local, never on this
            # object: an Evaluator may be garbage-collected on any thread, and a regorus
            # Engine dropped off its own thread raises (at a random later point).
            self._per_thread().update({self._token: engine})
        else:
            value, ast = checked.value, checked.ast
        self.probe_problem: str | None = probe_problem(value, bundle)
        self.cache_key: CacheKeyFn | None = make_key_fn(ast) if cache_size > 0 else None
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
        """The rule's value (None when undefined or null), in this process; PolicyError on
        failure (the texts a worker sends: :func:`.worker.evaluate_rule`)."""
        engine = self._engine()
        input_json(input)
        try:
            return evaluate_rule(engine, input, rule)
        except RuleFailed as exc:
            raise PolicyError(str(exc)) from exc

    def lookup(self, input: dict[str, Any]) -> tuple[Decision | None, str | None]:
        """(the cached decision, None) on a hit; else (None, the key to :meth:`remember` the
        decision under, or None when this input is not cached)."""
        if self.cache_key is None:
            return None, None
        try:
            key: str | None = self.cache_key(input)
        except (TypeError, ValueError):
            return None, None  # not JSON: evaluate (and fail) the slow way
        if key is None or len(key) > _MAX_KEY_CHARS:
            return None, None  # a policy keyed on big arguments: do not hold them in memory
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return hit, None
        return None, key

    def remember(self, key: str | None, decision: Decision) -> None:
        if key is None:
            return
        with self._cache_lock:
            self._cache[key] = decision
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def decide(self, input: dict[str, Any]) -> Decision:
        """Evaluate (in this process) and parse; never raises for policy problems."""
        if not isinstance(input, dict):
            return fail_closed("policy input must be a JSON object")
        hit, key = self.lookup(input)
        if hit is not None:
            return hit
        try:
            decision = parse_decision(self.evaluate(input), kind=action_kind(input))
        except PolicyError as exc:
            return fail_closed(exc.message)  # never cached: the next call tries again
        self.remember(key, decision)
        return decision


def action_kind(input: dict[str, Any]) -> str:
    action = input.get("action")
    return str(action.get("kind", "")) if isinstance(action, dict) else ""


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
        # Why the revision read at start was refused without the engine's verdict (its check
        # overran, crashed its worker, or found no worker): nothing serves meanwhile.
        self._refused: str | None = None
        self._snapshot: Snapshot = ()
        self._watcher: asyncio.Task[None] | None = None
        self.workers: PolicyWorkers | None = None  # started by start(), stopped by close()
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
        if self._evaluator is None and self._refused is not None:
            return self._refused
        if self._evaluator is None or self.workers is None:
            return "policy engine is not started"
        return self._evaluator.probe_problem or self.workers.unavailable

    async def _checked(self, bundle: Bundle) -> Evaluator:
        """An evaluator for ``bundle`` once a worker compiled and probed it (never this
        process: :meth:`PolicyWorkers.check`); PolicyError / LoadAborted: refused."""
        if self.workers is None:
            raise LoadAborted("policy engine is not started", retry=True)
        return Evaluator(bundle, checked=await self.workers.check(bundle))

    async def start(self) -> None:
        """Load the policy and start watching.

        Raises PolicyError when the directory does not exist or the policy does not compile
        (``opa run`` refuses to start on both). A directory without policy starts the engine
        with no policy (every decision denied, ``unavailable`` set), as OPA starts with none.
        The policy workers start first (one that cannot is retried, never raised), then one
        of them checks the revision (compile + probe); a check that overruns its budget or
        whose worker dies (an engine crash) refuses the revision: the engine starts with
        nothing serving (every decision denied, ``unavailable`` says why) until the files
        change.
        """
        if not self.root.is_dir():
            raise PolicyError(f"policy directory {self.root} does not exist")
        current = snapshot(self.root)
        bundle: Bundle | None = None
        try:
            bundle = load_bundle(self.root)
        except NoPolicy as exc:
            self._absent = exc.message
            _log.error("policy.unavailable", reason=exc.message, root=str(self.root))
        if self.workers is None:
            self.workers = PolicyWorkers(self.settings.workers, self.settings.timeout_ms)
            await self.workers.start()
        self._snapshot = current
        if bundle is not None:
            try:
                self._evaluator = await self._checked(bundle)
            except LoadAborted as exc:
                self._refused = exc.message
                if exc.retry:  # it never reached a worker: the watcher tries again
                    self._snapshot = ()
                _log.error("policy.load_refused", revision=bundle.revision, error=exc.message,
                           root=str(self.root))
            except BaseException:
                await self.workers.close()  # refusing to start leaves no worker behind
                self.workers = None
                raise
            else:
                self._refused = None
                self.workers.load(bundle)  # every worker compiles it before it is needed
                _log.info("policy.loaded", revision=self.revision, root=str(self.root),
                          workers=self.workers.pids, unavailable=self.unavailable)
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
        if self.workers is not None:
            await self.workers.close()
            self.workers = None

    async def reload_now(self) -> bool:
        """Reload if the files changed; True when what serves changed (a new revision, or
        no policy at all).

        A bundle that fails to load, or to compile or probe in a policy worker (an error,
        its budget overrun, its worker dead), is rejected and logged; whatever served before
        (a revision, or no policy) keeps serving. Files that hold no policy (directory gone
        or emptied, every ``.rego`` removed or zero-byte) are not an error: nothing serves
        and every decision is denied until a policy is back. Call it on the serving loop:
        it sends a new revision to the workers at once.
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
            evaluator = await self._checked(bundle)
        except NoPolicy as exc:
            self.last_reload_error = None
            self._refused = None
            if self._absent == exc.message and self._evaluator is None:
                return False
            self._evaluator = None  # drop the old revision and its cache: nothing serves
            self._absent = exc.message
            _log.error("policy.unavailable", reason=exc.message, previous=previous)
            return True
        except LoadAborted as exc:
            self.last_reload_error = exc.message
            if exc.retry:  # it never reached a worker: try again at the next look
                self._snapshot = ()
            _log.error("policy.reload_rejected", error=exc.message, serving=previous)
            return False
        except PolicyError as exc:
            self.last_reload_error = exc.message
            _log.error("policy.reload_rejected", error=exc.message, serving=previous)
            return False
        except Exception as exc:  # anything else that fails a load rejects it the same way
            self.last_reload_error = f"the policy could not be loaded: {clean_error(exc)}"
            _log.error("policy.reload_rejected", error=self.last_reload_error, serving=previous)
            return False
        if self._snapshot != current:  # another look replaced it meanwhile: that one wins
            return False
        self._evaluator = evaluator  # atomic swap; in-flight decisions hold the old evaluator
        self._absent = None
        self._refused = None
        if self.workers is not None:
            self.workers.load(bundle)
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
                await self.reload_now()
            except Exception as exc:  # never let the watcher die
                _log.error("policy.reload_failed", error=str(exc))

    async def _evaluate(self, evaluator: Evaluator, input: dict[str, Any], rule: str) -> Any:
        """The rule's value from a worker; PolicyError with the fail-closed reason."""
        encoded = input_json(input)
        if self.workers is None:
            raise PolicyError("policy engine is not started")
        return await self.workers.evaluate(evaluator.bundle, rule, encoded)

    async def _decide(self, evaluator: Evaluator, input: dict[str, Any]) -> Decision:
        """:meth:`Evaluator.decide` with the evaluation in a worker: a hit never leaves."""
        if not isinstance(input, dict):
            return fail_closed("policy input must be a JSON object")
        hit, key = evaluator.lookup(input)
        if hit is not None:
            return hit
        try:
            value = await self._evaluate(evaluator, input, ENTRYPOINT)
            decision = parse_decision(value, kind=action_kind(input))
        except PolicyError as exc:
            return fail_closed(exc.message)  # never cached: the next call tries again
        evaluator.remember(key, decision)
        return decision

    async def decide(self, input: dict[str, Any]) -> Decision:
        with tracer.start_as_current_span(
                "policy.decide", record_exception=False,
                set_status_on_exception=False) as span, audited(span):
            start = time.perf_counter()
            evaluator = self._evaluator
            if evaluator is None:
                absent = self._absent
                decision = (policy_unavailable(absent) if absent is not None
                            else fail_closed(self._refused or "policy engine is not started"))
                revision = self.revision
            else:
                decision = await self._decide(evaluator, input)
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
                result = Discovery(policy_revision=self.revision, error=self._absent
                                   or self._refused or "policy engine is not started")
            else:
                try:
                    tools, code = parse_advertise(
                        await self._evaluate(evaluator, input, ADVERTISE))
                    result = Discovery(tools, code, evaluator.revision)
                except PolicyError as exc:
                    result = Discovery(policy_revision=evaluator.revision, error=exc.message)
            return finish_discovery(result, engine=self.engine_name, span=span,
                                    latency_ms=(time.perf_counter() - start) * 1000)
