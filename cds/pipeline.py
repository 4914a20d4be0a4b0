"""One hook call, one way: parse → gather → evaluate → decide → suppress → record → render.

Each step takes the typed value the previous one returned; JSON exists only at the two
edges (the request body, the rendered response). The clock is read once, at the start
of a call, and every step uses that instant.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

import orjson
from pydantic import ValidationError

from cds.auth import ClientIdentity
from cds.clock import Clock
from cds.decision import Decision
from cds.errors import InvalidRequest, TooManyDraftOrders, UnknownService, not_json, shown
from cds.evaluation import Evaluation, evaluate, risk_data_since
from cds.fhir.gather import FhirAccess, SentPrefetch, collect_prefetch, gather
from cds.fhir.reading import ResourceCollector, validation_message
from cds.fhir.structs import decode_body
from cds.ids import NewId
from cds.metrics import observe_cards
from cds.protocol import HookRequest, OrderContext, PatientContext, parse_context, render
from cds.runtime import Runtime
from cds.services.base import ServiceDefinition

log = logging.getLogger("cds.pipeline")
_T = TypeVar("_T")


@dataclass(frozen=True)
class HookCall:
    """A parsed hook call: the service called, the request, and its typed context."""

    service: ServiceDefinition
    request: HookRequest
    context: PatientContext
    client: ClientIdentity | None = None  # the verified caller (None: authentication off)


Judged = tuple[Evaluation, Decision]


@dataclass(frozen=True)
class Outcome:
    """What a hook call produced: the decision (typed), the response (rendered) and the
    data it was decided on (`collected`: held so that whoever holds the outcome decides
    when the call's objects are freed — see `api.hooks`)."""

    call: HookCall
    evaluation: Evaluation
    decision: Decision
    body: bytes
    collected: ResourceCollector


class Memory(Protocol):
    """Where decisions are remembered (the store implements it). Called in the thread
    that evaluated the call (or on the loop for a small one)."""

    def remember(
        self,
        call: HookCall,
        evaluation: Evaluation,
        decision: Decision,
        input_digest: str,
        started: float,
    ) -> Decision:
        """Suppress, then record: the cards a clinician already acted on made quiet, and
        the call's record written (before the answer is sent) — one step in one worker
        thread and one transaction. Returns the decision as it will be answered."""
        ...


def body_digest(body: bytes) -> str:
    """sha256 of the request body as received: ties a decision's record to its input."""
    return hashlib.sha256(body).hexdigest()


def parse(
    services: Mapping[str, ServiceDefinition],
    service_id: str,
    body: bytes,
    client: ClientIdentity | None = None,
    max_draft_orders: int | None = None,
) -> HookCall:
    """The request body as a typed hook call, or InvalidRequest / UnknownService (and
    TooManyDraftOrders past `max_draft_orders`)."""
    service = services.get(service_id)
    if service is None:
        raise UnknownService(
            f"no CDS service {shown(service_id)}; GET /cds-services lists "
            + ", ".join(sorted(services))
        )
    request = _request(body)
    if request.hook != service.hook:
        raise InvalidRequest(
            f"service {service.id} answers hook {service.hook!r}, not {request.hook!r}", "hook"
        )
    context = parse_context(service.context, request.context)
    if isinstance(context, OrderContext):
        entries = context.draftOrders.get("entry")
        count = len(entries) if isinstance(entries, list) else 0
        if max_draft_orders is not None and count > max_draft_orders:
            raise TooManyDraftOrders(
                f"context.draftOrders holds {count} entries; this service checks at most "
                f"{max_draft_orders} draft orders per call (setting CRS_MAX_DRAFT_ORDERS)",
                "context.draftOrders.entry",
            )
        if request.hook == "order-sign":
            context = context.model_copy(update={"selections": None})  # sign checks every order
    return HookCall(service, request, context, client)


def _request(body: bytes) -> HookRequest:
    if not body:
        raise InvalidRequest("empty request body: expected a CDS Hooks request (JSON)")
    decoded = decode_body(body)
    if decoded is not None:
        # One pass: parsed, typed and the prefetch built as resources. The envelope is
        # still validated by the model, which names what is wrong.
        return _validated(decoded.members())
    # Not as the structs read it (invalid JSON, a prefetch value that is not a resource,
    # a field of another type…): parse it as plain JSON, which locates every problem.
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(not_json("request body", body, exc)) from exc
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    return _validated(data)


def _validated(data: dict[str, Any]) -> HookRequest:
    try:
        return HookRequest.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(validation_message("request", exc), "request") from exc


def evaluate_context(
    runtime: Runtime, collected: ResourceCollector, context: PatientContext, at: datetime
) -> Evaluation:
    """Evaluate the gathered data for a hook's context (its draft orders too)."""
    orders = context if isinstance(context, OrderContext) else None
    return evaluate(
        runtime,
        collected,
        context.patientId,
        at,
        encounter_id=context.encounterId,
        draft_orders=orders.draftOrders if orders is not None else None,
        selections=orders.selections if orders is not None else None,
    )


def decide_offline(
    runtime: Runtime,
    service: ServiceDefinition,
    collected: ResourceCollector,
    context: PatientContext,
    at: datetime,
    new_id: NewId,
) -> Decision:
    """Evaluate and decide without HTTP (the CLI, the benchmark, the tests)."""
    return service.decide(runtime, evaluate_context(runtime, collected, context, at), new_id)


@dataclass(frozen=True)
class Hooks:
    """The hook pipeline with its injected parts: the runtime, the clock, the FHIR access,
    the id source, (when the service keeps records) the decision memory, and the threads
    that do the CPU-bound steps (None: on the event loop itself)."""

    runtime: Runtime
    services: Mapping[str, ServiceDefinition]
    clock: Clock
    fhir: FhirAccess
    new_id: NewId
    memory: Memory | None = None
    workers: ThreadPoolExecutor | None = None

    async def _off_loop(self, work: Callable[[], _T], size: int) -> _T:
        """`work` for a request of `size` bytes. A large chart takes a CPU for tenths of a
        second: it is worked on in one of the pipeline's threads, during which the event
        loop keeps answering (/healthz, the I/O of other calls); the pool bounds how many
        are worked on at once. A small one (below CRS_EVALUATE_INLINE_BELOW_BYTES: a
        1,000-resource chart takes a few milliseconds) is worked on at once, on the loop:
        handing it to a thread would cost more than it holds the loop."""
        if self.workers is None or size < self.runtime.settings.evaluate_inline_below_bytes:
            return work()
        return await asyncio.get_running_loop().run_in_executor(self.workers, work)

    def _judge(self, call: HookCall, collected: ResourceCollector, at: datetime) -> Judged:
        """Evaluate the gathered data at `at` and decide the cards (a worker thread's work)."""
        evaluation = evaluate_context(self.runtime, collected, call.context, at)
        return evaluation, call.service.decide(self.runtime, evaluation, self.new_id)

    async def run(
        self,
        service_id: str,
        body: bytes,
        client: ClientIdentity | None = None,
        *,
        fhir_fallback: bool = False,
    ) -> Outcome:
        """Answer one hook call (raises a CdsError for anything the client must fix);
        `client` is the verified caller, None when authentication is off. Data missing
        from prefetch are read from fhirServer only with `fhir_fallback` (an authenticated
        client, or the explicit open mode)."""
        started = time.perf_counter()
        limit = self.runtime.settings.max_draft_orders

        def decided(
            call: HookCall, collected: ResourceCollector, at: datetime, digest: str | None
        ) -> Judged:
            """Evaluate, decide, and (when the service keeps records) suppress and record:
            the steps after gather, worked on together (one thread, or the loop)."""
            evaluation, decision = self._judge(call, collected, at)
            if self.memory is not None and digest is not None:
                decision = self.memory.remember(call, evaluation, decision, digest, started)
            return evaluation, decision

        def prepare() -> tuple[HookCall, SentPrefetch, str | None, Judged | None]:
            """Hash the body for the record, parse it and read the prefetch; when nothing
            has to be fetched (the usual case), go on to the end at once."""
            # Hashed first, while the body is in the CPU's cache, in the thread that works
            # on the call. (Hashed in a thread of its own beside the evaluation, it cost more
            # than it saved: the hand-overs of the GIL; measured in the served process,
            # service/floor at 1,000 resources 1.69 -> 1.51.)
            digest = body_digest(body) if self.memory is not None else None
            call = parse(self.services, service_id, body, client, limit)
            sent = collect_prefetch(call.request, call.service.prefetch)
            if sent.needs_fetching():
                return call, sent, digest, None
            return call, sent, digest, decided(call, sent.collected, self.clock(), digest)

        call, sent, digest, judged = await self._off_loop(prepare, len(body))
        collected = sent.collected
        log_extra = {"service": call.service.id, "hookInstance": call.request.hookInstance}
        if judged is None:
            at = self.clock()
            collected = await gather(
                call.request,
                call.service.prefetch,
                self.fhir,
                self.runtime.knowledge,
                risk_data_since(self.runtime, at),
                log_extra,
                fetch_allowed=fhir_fallback,
                sent=sent,
            )
            judged = await self._off_loop(lambda: decided(call, collected, at, digest), len(body))
        evaluation, decision = judged
        rendered = render(decision.response())
        observe_cards(
            call.service.id, ((c.kind, c.card.indicator, c.alert_grade) for c in decision.cards)
        )
        log.info(
            "evaluated",
            extra={
                **log_extra,
                "cards": len(decision.cards),
                "grades": decision.grades,
                "ruleSetVersion": self.runtime.rules.version,
                "ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )
        return Outcome(call, evaluation, decision, rendered, collected)
