"""The request pipeline: policy decision, then the tool channel or the code channel.

Transport-free: the gRPC servicer and the MCP server both call :class:`Pipeline`. Every step
runs in its own span under the caller's current span (the per-call root span is opened by the
transport's interceptor), so the trace of a call is its audit trail. Gateway errors raise;
user-code errors come back as data in :class:`Outcome`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway.approvals import ApprovalService, action_digest
from gateway.audit import attributes as attr
from gateway.audit import audited, json_attr, record_outcome, redact
from gateway.audit.redact import (
    CallSecrets,
    DigestKey,
    current_call_secrets,
    masked_values,
    register_masked,
    scrub_data,
    scrub_error,
)
from gateway.catalog import (
    Catalog,
    TokenCounter,
    describe_bounded,
    describe_document,
    python_signature,
    sdk_doc,
)
from gateway.catalog.loader import cache_read, cache_write
from gateway.errors import (
    ApprovalConsumed,
    ApprovalExpired,
    ApprovalMismatch,
    ApprovalRejected,
    ApprovalRequired,
    GatewayError,
    IdempotencyConflict,
    InvalidRequest,
    PolicyDenied,
    PolicyError,
    ResourceExhausted,
    UnknownOperation,
)
from gateway.manifest import ToolDef, dedicated_tools, meta_tools
from gateway.models import (  # the action/outcome types are the front door's (re-exported)
    Action,
    CodeAction,
    Decision,
    Limits,
    Operation,
    Outcome,
    Principal,
    ToolAction,
)
from gateway.policy import Discovery, PolicyEngine, build_input
from gateway.policy.base import IDEMPOTENCY_OBLIGATION
from gateway.sandbox import RunRequest, SandboxEvent, SandboxPool, SdkFunction, principal_key
from gateway.tools import BackendClient, ToolChannel, idempotency_key, validate_arguments
from gateway.tools.channel import fingerprint

__all__ = [
    "Action",
    "CodeAction",
    "EventSink",
    "Outcome",
    "Pipeline",
    "SearchHit",
    "ToolAction",
]

EventSink = Callable[[SandboxEvent], Awaitable[None]]
APPROVAL_ERRORS = (ApprovalRequired, ApprovalRejected, ApprovalExpired, ApprovalMismatch,
                   ApprovalConsumed)
# Discovery results kept (one per tenant + role set + catalog and policy revision).
DISCOVERY_CACHE_SIZE = 256
DiscoveryKey = tuple[str, tuple[str, ...], str, str]


@dataclass(frozen=True)
class SearchHit:
    name: str
    summary: str
    tags: tuple[str, ...]
    score: float
    route: str


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def _annotate_decision(span: trace.Span, decision: Decision) -> None:
    span.set_attribute(attr.ROUTE, decision.route)
    span.set_attribute(attr.DECISION_ID, decision.decision_id)
    span.set_attribute(attr.POLICY_REVISION, decision.policy_revision)
    if decision.reasons:
        span.set_attribute(attr.REASONS, list(decision.reasons))


def _deny(decision: Decision, what: str) -> GatewayError:
    reasons = list(decision.reasons) or ["denied by policy"]
    if decision.error_code == PolicyError.code:
        return PolicyError(f"{what}: policy could not decide: {'; '.join(reasons)}",
                           details={"reasons": reasons, "decision_id": decision.decision_id})
    return PolicyDenied(f"{what}: {'; '.join(reasons)}", reasons=reasons,
                        details={"decision_id": decision.decision_id})


class Pipeline:
    """Routes and runs actions; owns no transport and no process lifecycle."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        policy: PolicyEngine,
        client: BackendClient,
        tools: ToolChannel,
        sandbox: SandboxPool,
        tracer: trace.Tracer,
        approvals: ApprovalService | None = None,
        digest_key: DigestKey | None = None,
    ) -> None:
        self.catalog = catalog
        # Without a store, actions the policy holds for approval are denied (fail closed).
        self.approvals = approvals or ApprovalService(None, digest_key=digest_key)
        # Keys the argument digests in the trail (docs/audit.md, "Keyed digests").
        self.digest_key = digest_key or self.approvals.digest_key
        self.policy = policy
        self.client = client
        self.tools = tools
        self.sandbox = sandbox
        self.tracer = tracer
        # The SDK the sandbox sees: built on the first code run (or by warm_sdk once serving),
        # from the on-disk cache when this catalog revision was rendered before (the docs are
        # token-bounded with o200k_base: seconds for thousands of operations).
        self._sdk_built: tuple[SdkFunction, ...] | None = None
        # What the advertise rule sees of the catalog: built once, shared by every evaluation.
        self._discovery_ops = [op.to_input() for op in catalog.operations]
        self._discovery: OrderedDict[DiscoveryKey, Discovery] = OrderedDict()
        self.discovery_evaluations = 0  # advertise evaluations (cache misses), for tests
        # Memoised subtree sizes for bounded descriptions; made on the first describe (loading
        # the o200k_base ranks takes ~1 s: not on the way to SERVING).
        self._token_counter: TokenCounter | None = None

    @property
    def _sdk(self) -> tuple[SdkFunction, ...]:
        built = self._sdk_built
        if built is None:
            built = _sdk_functions(self.catalog)
            assert built is not None  # rendering never misses
            self._sdk_built = built
        return built

    async def _sdk_for_run(self) -> tuple[SdkFunction, ...]:
        if self._sdk_built is None:  # the first code run renders it, off the event loop
            return await asyncio.to_thread(lambda: self._sdk)
        return self._sdk_built

    def _tokens(self) -> TokenCounter:
        counter = self._token_counter
        if counter is None:
            counter = self._token_counter = TokenCounter()
        return counter

    def warm_sdk(self) -> None:
        """Load the sandbox SDK now if the disk cache has it (the server runs this in a thread
        once it serves). A miss is left to the first code run: rendering thousands of token-
        bounded docs in a background thread would hold the GIL against the first calls."""
        if self._sdk_built is None:
            self._sdk_built = _sdk_functions(self.catalog, render=False)

    # -- decisions -------------------------------------------------------------------------

    async def _decide(self, principal: Principal, kind: str, op: Operation | None, name: str,
                      **extra: Any) -> Decision:
        decision = await self.policy.decide(
            build_input(principal=principal, kind=kind, operation=op, operation_name=name, **extra)
        )
        return decision

    async def explain(self, principal: Principal, action: Action) -> Decision:
        if isinstance(action, ToolAction):
            op = self.catalog.get(action.name)
            return await self._decide(principal, "tool", op, action.name,
                                      arguments=action.arguments, labels=action.labels)
        return await self._decide(principal, "code", None, "",
                                  source_sha256=hashlib.sha256(action.source.encode()).hexdigest(),
                                  labels=action.labels)

    # -- execute ---------------------------------------------------------------------------

    async def execute(self, principal: Principal, action: Action, *,
                      on_event: EventSink | None = None) -> Outcome:
        span = trace.get_current_span()
        # The principal, tenant and roles are on the root already (the call scope sets them
        # as soon as identity succeeds); the request id is the envelope's, which may differ
        # from the stand-in the scope recorded before the envelope was checked.
        span.set_attribute(attr.REQUEST_ID, action.request_id)
        if isinstance(action, ToolAction):
            return await self._execute_tool(principal, action, span)
        return await self._execute_code(principal, action, span, on_event)

    async def _execute_tool(self, principal: Principal, action: ToolAction,
                            span: trace.Span) -> Outcome:
        span.set_attribute(attr.ACTION_KIND, "tool")
        span.set_attribute(attr.OPERATION, action.name)
        span.set_attribute(attr.GEN_AI_OPERATION_NAME, "execute_tool")
        span.set_attribute(attr.GEN_AI_TOOL_NAME, action.name)
        span.set_attribute(attr.GEN_AI_TOOL_CALL_ID, action.request_id)
        span.set_attribute(attr.ARGUMENTS_HMAC, self.digest_key.digest(action.arguments))
        span.set_attribute(attr.DIGEST_KEY_ID, self.digest_key.key_id)
        op = self.catalog.require(action.name)
        decision = await self._decide(principal, "tool", op, op.name,
                                      arguments=action.arguments, labels=action.labels)
        _annotate_decision(span, decision)
        span.set_attribute(attr.ARGUMENTS,
                           json_attr(redact({"arguments": action.arguments},
                                            [m.removeprefix("action.") for m in decision.mask])))
        # The masked values are secrets of this call from here on: no span, event, log line
        # or error of it may quote them (docs/audit.md, "Masked values in free text").
        secrets = register_masked(action.arguments, decision.mask, "action.arguments")
        try:
            if decision.route == "deny":
                raise _deny(decision, op.name)
            if decision.route != "tool":
                raise PolicyDenied(
                    f"{op.name}: the policy routes it to the code channel; call it from "
                    "execute_code", reasons=list(decision.reasons) or ["route is code"],
                    details={"decision_id": decision.decision_id},
                )
            if action.generated_id_field and IDEMPOTENCY_OBLIGATION in decision.obligations:
                # The door made the request id up: the caller's retry would get another one,
                # so the exactly-once promise the decision asks for cannot be kept.
                raise InvalidRequest(
                    f"{action.generated_id_field} is required: {op.name} must be called with "
                    f"a request id (obligation {IDEMPOTENCY_OBLIGATION}); send the same one on "
                    "every retry", field=action.generated_id_field)
            if decision.approval is not None:
                # Nobody is asked to approve arguments the schema rejects; nothing reaches the
                # idempotency store or the backend before the approval is there.
                validate_arguments(op, action.arguments, strict=decision.strict,
                                   mask=decision.mask)
                await self._check_request_id(principal, op, action)
                await self.approvals.gate(
                    principal, decision, request_id=action.request_id, kind="tool",
                    operation=op.name, arguments=action.arguments)
            # The channel validates (recorded on this root span) before anything reaches the
            # store or backend.
            outcome = await self.tools.execute(
                op, action.arguments, request_id=action.request_id, principal=principal,
                strict=decision.strict, mask=decision.mask)
        except GatewayError as exc:
            scrub_error(exc, secrets)
            raise
        span.set_attribute(attr.REPLAYED, outcome.replayed)
        return Outcome(decision=decision, result=outcome.result, trace_id=current_trace_id(),
                       replayed=outcome.replayed)

    async def _check_request_id(self, principal: Principal, op: Operation,
                                action: ToolAction) -> None:
        """A request_id already used for another call is refused before an approval is asked
        for (the channel would refuse it after the approval anyway)."""
        if not action.request_id:
            return
        rec = await self.tools.store.get(idempotency_key(principal, action.request_id))
        if rec is not None and rec.fingerprint != fingerprint(op, action.arguments):
            raise IdempotencyConflict(
                f"request_id {action.request_id!r} was already used for a different call "
                f"({rec.operation} with other arguments); use a new request_id",
                field="request_id", details={"operation": rec.operation})

    async def _execute_code(self, principal: Principal, action: CodeAction, span: trace.Span,
                            on_event: EventSink | None) -> Outcome:
        sha = hashlib.sha256(action.source.encode()).hexdigest()
        span.set_attribute(attr.ACTION_KIND, "code")
        # Keyed: the trail never holds a plain hash of the source (docs/audit.md, "Keyed
        # digests"); the policy still matches scripts by the plain source_sha256 in-process.
        span.set_attribute(attr.CODE_HMAC, self.digest_key.digest(action.source))
        span.set_attribute(attr.DIGEST_KEY_ID, self.digest_key.key_id)
        span.set_attribute(attr.GEN_AI_OPERATION_NAME, "execute_tool")
        span.set_attribute(attr.GEN_AI_TOOL_NAME, "execute_code")
        span.set_attribute(attr.GEN_AI_TOOL_CALL_ID, action.request_id)
        decision = await self._decide(principal, "code", None, "", source_sha256=sha,
                                      labels=action.labels)
        _annotate_decision(span, decision)
        if decision.route == "deny":
            raise _deny(decision, "execute_code")
        limits = decision.limits
        if action.timeout_ms and action.timeout_ms < limits.timeout_ms:
            limits = Limits(timeout_ms=action.timeout_ms, memory_mb=limits.memory_mb,
                            max_host_calls=limits.max_host_calls,
                            max_output_bytes=limits.max_output_bytes)
        with self.tracer.start_as_current_span(
                "sandbox.run", record_exception=False,
                set_status_on_exception=False) as run_span, audited(run_span):
            run_span.set_attribute("switchboard.sandbox.timeout_ms", limits.timeout_ms)
            if action.session_id:
                run_span.set_attribute("switchboard.session_id", action.session_id)
            host = _HostBridge(self, principal, decision, limits, run_span,
                               request_id=action.request_id, source_sha256=sha)
            # A retry of a run that paused for approval: its earlier host calls replay.
            host.log = await self.approvals.run_log(principal, action.request_id)
            req = RunRequest(
                source=action.source,
                inputs=dict(action.inputs),
                limits=limits,
                # Sessions are per role set too: a narrower token never reuses their state.
                principal_key=principal_key(principal.tenant, principal.id, principal.roles),
                session_id=action.session_id,
                sdk=await self._sdk_for_run(),
                sdk_revision=self.catalog.revision,
                output_schema=action.output_schema,
            )
            result = await self.sandbox.run(req, host, on_event)
            run_span.set_attribute(attr.HOST_CALLS, host.calls)
            run_span.set_attribute("switchboard.sandbox.ok", result.ok)
        if host.paused is None and (host.log or host.approved):
            # A run resumed after approval finished: record every call it made, so a further
            # retry of this request_id replays the whole run instead of repeating its effects.
            await self.approvals.record_calls(principal, action.request_id, host.results)
        if host.paused is not None:
            # A host call is held for approval: the run ends with that status, whatever the
            # code did with the error (docs/approvals.md, "Code runs").
            raise host.paused
        span.set_attribute(attr.HOST_CALLS, host.calls)
        error = None
        if not result.ok:
            # The code's error may quote what a host call's error said: scrub the masked values
            # of its host calls (stdout/stderr are the code's own output, returned as written).
            error = {"code": "user_code_error", **scrub_data(result.error or {}, host.secrets)}
            span.set_attribute(attr.OUTCOME, "user_code_error")
        return Outcome(
            decision=decision,
            result=result.result,
            stdout=result.stdout,
            stderr=result.stderr,
            error=error,
            trace_id=current_trace_id(),
            host_calls=host.calls,
            output_truncated=result.output_truncated,
        )

    # -- discovery -------------------------------------------------------------------------

    async def discovery(self, principal: Principal) -> Discovery:
        """What the policy's ``advertise`` rule gives this principal's tenant and role set.

        ONE evaluation over the whole catalog per (tenant, roles, catalog revision, policy
        revision), cached; the input carries no principal id, so the answer may only depend
        on what the key holds. Fail closed: while no usable policy serves, or when the rule is
        missing, undefined or malformed, nothing is advertised (and nothing is cached, so the
        next call asks again)."""
        roles = tuple(sorted(set(principal.roles)))
        key: DiscoveryKey = (principal.tenant, roles, self.catalog.revision,
                             self.policy.revision)
        hit = self._discovery.get(key)
        if hit is not None:
            self._discovery.move_to_end(key)
            return hit
        unusable = self.policy.unavailable
        if unusable is not None:
            return Discovery(policy_revision=self.policy.revision, error=unusable)
        self.discovery_evaluations += 1
        result = await self.policy.advertise({
            "principal": {"tenant": principal.tenant, "roles": list(roles)},
            "operations": self._discovery_ops,
        })
        if result.error is None:
            # Keyed on the revision that answered (a reload may have happened meanwhile).
            self._discovery[(key[0], key[1], key[2], result.policy_revision)] = result
            while len(self._discovery) > DISCOVERY_CACHE_SIZE:
                self._discovery.popitem(last=False)
        return result

    async def route_for(self, principal: Principal, op: Operation) -> str:
        """How this principal can use ``op``: ``tool`` (an advertised dedicated tool),
        ``code`` (callable from execute_code) or ``deny``; from :meth:`discovery`, so no
        policy evaluation per operation. Every actual call is still decided on its own."""
        return (await self.discovery(principal)).route(op.name)

    async def search(self, principal: Principal, query: str, limit: int) -> list[SearchHit]:
        found = await self.discovery(principal)
        hits: list[SearchHit] = []
        for op, score in self.catalog.search(query, limit=max(limit * 3, limit)):
            route = found.route(op.name)
            if route == "deny":
                continue  # operations the caller can never use are not advertised
            hits.append(SearchHit(op.name, op.summary, op.tags, score, route))
            if len(hits) >= limit:
                break
        return hits

    async def describe(self, principal: Principal, name: str, path: str | None = None,
                       page: int | None = None, *, field_prefix: str = "") -> dict[str, Any]:
        """The operation within ``MAX_DESCRIBE_TOKENS`` (gateway/catalog/describe.py): the
        overview, or with ``path`` the subtree it names (``page`` pages a big one). Bad
        ``path``/``page`` are ``InvalidRequest`` with ``field`` = ``field_prefix`` + name."""
        op = self.catalog.require(name, field=f"{field_prefix}name")
        route = await self.route_for(principal, op)
        if route == "deny":
            raise UnknownOperation(f"unknown operation {name!r}", field=f"{field_prefix}name")
        return describe_bounded(describe_document(op, route, python_signature(op)),
                                path=path, page=page, counter=self._tokens(),
                                path_field=f"{field_prefix}path",
                                page_field=f"{field_prefix}page")

    async def manifest(self, principal: Principal) -> list[ToolDef]:
        """The meta-tools plus the dedicated tools the policy's ``advertise`` rule names for
        this principal (names not in the catalog are ignored)."""
        found = await self.discovery(principal)
        dedicated = [op for op in self.catalog.operations if op.name in found.tools]
        return meta_tools() + dedicated_tools(dedicated)


def _sdk_cache_name(catalog: Catalog) -> str:
    from gateway import __version__
    from gateway.catalog import render

    h = hashlib.sha256(f"{__version__}|{catalog.revision}".encode())
    h.update(Path(render.__file__).read_bytes())  # the code that renders signatures and docs
    return f"sdk-{h.hexdigest()[:32]}.json"


def _sdk_functions(catalog: Catalog, *, render: bool = True) -> tuple[SdkFunction, ...] | None:
    """Every operation as an SDK function; (signature, doc) cached on disk as JSON, keyed by
    the catalog revision (a content hash) and the rendering code. ``render=False``: None
    unless the cache has every operation."""
    name = _sdk_cache_name(catalog)
    rendered: dict[str, list[str]] = {}
    data = cache_read(name)
    with contextlib.suppress(ValueError):
        found = json.loads(data) if data is not None else None
        if isinstance(found, dict):
            rendered = found
    fresh = False
    out = []
    for op in catalog.operations:
        pair = rendered.get(op.name)
        if not (isinstance(pair, list) and len(pair) == 2
                and all(isinstance(x, str) for x in pair)):
            if not render:
                return None
            pair = rendered[op.name] = [python_signature(op), sdk_doc(op)]
            fresh = True
        out.append(SdkFunction(operation=op.name, backend=op.backend, function=op.short_name,
                               signature=pair[0], doc=pair[1]))
    if fresh:
        cache_write(name, json.dumps(rendered).encode())
    return tuple(out)


_DISCOVERY_CALLS = frozenset({"sdk.search", "sdk.describe"})


class _HostBridge:
    """Serves SDK calls from sandboxed code: every call is authorised by the policy as the run's
    principal, counted against the host-call budget on the host side (the sandbox is untrusted),
    and traced as a child of the sandbox span."""

    def __init__(self, pipeline: Pipeline, principal: Principal, decision: Decision,
                 limits: Limits, parent: trace.Span, *, request_id: str = "",
                 source_sha256: str = "") -> None:
        self.p = pipeline
        self.request_id = request_id
        self.source_sha256 = source_sha256
        # Approvals: results recorded by an earlier run of this request_id that paused
        # (index → (digest, result)), this run's results (flushed when it pauses), and the
        # approval the run is paused on.
        self.log: dict[int, tuple[str, Any]] = {}
        self.results: dict[int, tuple[str, Any]] = {}
        self.paused: GatewayError | None = None
        self.approved = False  # an approval was used in this run
        self.principal = principal
        self.decision = decision
        self.limits = limits
        self.ctx = trace.set_span_in_context(parent)
        self.calls = 0
        # The masked values of every host call's decision (the run's call set when audited).
        found = current_call_secrets()
        self.secrets: CallSecrets = found if found is not None else CallSecrets()

    async def call(self, operation: str, arguments: dict[str, Any]) -> Any:
        """One path for every host call, discovery included (docs/sandbox.md: each one is
        budgeted, docs/audit.md: each one is a ``host_call`` span counted in
        ``switchboard.host_calls``): count, open the span, then dispatch by operation. The
        span ends through ``record_outcome`` only (no OTel exception recording: the error's
        message may quote a hostile argument, and an expected refusal has no stack trace)."""
        self.calls += 1
        with self.p.tracer.start_as_current_span(
                f"host_call {operation}", context=self.ctx, kind=SpanKind.INTERNAL,
                record_exception=False, set_status_on_exception=False) as span:
            span.set_attribute(attr.OPERATION, operation)
            span.set_attribute(attr.ARGUMENTS_HMAC, self.p.digest_key.digest(arguments))
            span.set_attribute(attr.DIGEST_KEY_ID, self.p.digest_key.key_id)
            span.set_attribute(attr.PARENT_DECISION_ID, self.decision.decision_id)
            try:
                if self.calls > self.limits.max_host_calls:
                    raise ResourceExhausted(
                        f"host-call budget of {self.limits.max_host_calls} calls exhausted",
                        details={"max_host_calls": self.limits.max_host_calls})
                if operation in _DISCOVERY_CALLS:
                    result = await self._discover(operation, arguments)
                else:
                    result = await self._tool_call(span, operation, arguments)
            except GatewayError as exc:
                scrub_error(exc, self.secrets)  # it goes back to the code, and to its caller
                record_outcome(span, exc)
                raise
            except asyncio.CancelledError as exc:
                # The run ended (deadline, cancel) with this call in flight: say so; its
                # backend.call span says whether the request may have been sent.
                record_outcome(span, exc)
                span.set_status(Status(StatusCode.ERROR, "the run ended before the call "
                                       "returned; it may have reached its backend"))
                raise
            except Exception as exc:
                record_outcome(span, exc)
                raise
            span.set_attribute(attr.OUTCOME, "ok")
            return result

    async def __call__(self, operation: str, arguments: dict[str, Any]) -> Any:
        return await self.call(operation, arguments)

    def refused(self, operation: str, error: GatewayError) -> None:
        """A call the pool refused before it reached :meth:`call` (budget, an operation not
        in the run's SDK, arguments that are not JSON): counted and recorded the same way."""
        self.calls += 1
        with self.p.tracer.start_as_current_span(
                f"host_call {operation}", context=self.ctx, kind=SpanKind.INTERNAL,
                record_exception=False, set_status_on_exception=False) as span:
            span.set_attribute(attr.OPERATION, operation)
            span.set_attribute(attr.PARENT_DECISION_ID, self.decision.decision_id)
            scrub_error(error, self.secrets)
            record_outcome(span, error)

    async def _discover(self, operation: str, arguments: dict[str, Any]) -> Any:
        """``sdk.search`` / ``sdk.describe``: what the run's principal may see, as the tool
        door's discovery answers it."""
        if operation == "sdk.search":
            query = str(arguments.get("query", ""))
            try:
                limit = int(arguments.get("limit", 10) or 10)
            except (TypeError, ValueError):
                raise InvalidRequest("limit must be an integer", field="limit") from None
            hits = await self.p.search(self.principal, query, min(max(limit, 1), 50))
            return [{"name": h.name, "summary": h.summary, "route": h.route,
                     "signature": python_signature(self.p.catalog.require(h.name))}
                    for h in hits]
        path = arguments.get("path")
        return await self.p.describe(self.principal, str(arguments.get("name", "")),
                                     None if path is None else str(path),
                                     arguments.get("page"))

    async def _tool_call(self, span: trace.Span, operation: str,
                         arguments: dict[str, Any]) -> Any:
        """A catalog operation: authorised as the run's principal, validated, gated by
        approvals, sent to its backend."""
        op = self.p.catalog.require(operation)
        decision = await self.p._decide(
            self.principal, "host_call", op, op.name, arguments=arguments,
            parent_decision_id=self.decision.decision_id)
        _annotate_decision(span, decision)
        self.secrets.add(masked_values(arguments, decision.mask, "action.arguments"))
        if decision.route == "deny":
            raise _deny(decision, op.name)
        validate_arguments(op, arguments, strict=decision.strict, mask=decision.mask)
        if self.paused is not None:
            raise self.paused  # nothing runs after a call held for approval
        index = self.calls
        call_digest = action_digest(self.principal, "host_call", op.name, arguments,
                                    self.source_sha256)
        approved = False
        try:
            if index in self.log:
                return self._replay(span, index, call_digest)
            if decision.approval is not None:
                rec = await self.p.approvals.gate(
                    self.principal, decision, request_id=self.request_id,
                    kind="host_call", operation=op.name, arguments=arguments,
                    source_sha256=self.source_sha256, step=f"host:{index}")
                if rec.state == "consumed":
                    # Consumed by another run of this request (concurrent, or one that
                    # died): replay its recorded result; without one it may have taken
                    # effect, so it is never sent again.
                    fresh = await self.p.approvals.run_log(self.principal, self.request_id)
                    if index in fresh:
                        self.log = fresh
                        return self._replay(span, index, call_digest)
                    raise ApprovalConsumed(
                        f"{op.name}: approval {rec.id} was used by another run of this "
                        "request whose outcome is not recorded; it is not sent again",
                        field="request_id", details={"approval_id": rec.id})
                approved = True
        except APPROVAL_ERRORS as exc:
            # Held, rejected, expired or a different action: the run ends with this status
            # whatever the code does with the error; what ran so far is recorded for the
            # retry.
            self.paused = exc
            await self.p.approvals.record_calls(self.principal, self.request_id,
                                                self.results)
            raise
        result = await self.p.client.call(op, arguments)
        self.results[index] = (call_digest, result)
        if approved:
            self.approved = True
            await self.p.approvals.record_calls(self.principal, self.request_id,
                                                {index: (call_digest, result)})
        return result

    def _replay(self, span: trace.Span, index: int, call_digest: str) -> Any:
        recorded_digest, result = self.log[index]
        if recorded_digest != call_digest:
            raise ApprovalMismatch(
                f"host call {index} of this run differs from the one its paused run made; "
                "a run resumed after approval must make the same calls (use a new "
                "request_id for different code or inputs)", field="request_id")
        self.results[index] = (call_digest, result)
        span.set_attribute(attr.REPLAYED, True)
        span.set_attribute(attr.OUTCOME, "ok")
        return result
