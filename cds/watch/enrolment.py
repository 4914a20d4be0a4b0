"""Every patient-view call that finds its patient in a risk window enrols the patient (so
that an EHR without search support still gets its patients watched after the first
chart open).

The pipeline's decision memory is wrapped: once a call's record is written (its record
step), the enrolment is handed to a background thread and the answer does not wait for
it. A patient enrolled recently for the same exposure is not written again (a small
memory per process). Only calls about the watched FHIR server enrol: the patient id
means something only there (a call without `fhirServer` is taken to be about it).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

from cds.decision import Decision
from cds.evaluation import Evaluation
from cds.fhir.client import is_fhir_id, normalise_base_url
from cds.pipeline import HookCall, Memory
from cds.watch.changes import exposure_key
from cds.watch.service import Watch

log = logging.getLogger("cds.watch.enrolment")

RECENT = 10_000  # (patient, exposure) pairs remembered as enrolled, per process
# Enrolments are written one at a time, off the calls' threads.
ENROLMENTS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crs-enrol")


class EnrollingMemory:
    """The service's memory, enrolling the patient-view patients found in a window."""

    def __init__(self, inner: Memory, watch: Watch) -> None:
        self.inner = inner
        self.watch = watch
        self.recent: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.pending: set[Future[str]] = set()
        self._lock = threading.Lock()  # remember() runs in several threads

    def remember(
        self,
        call: HookCall,
        evaluation: Evaluation,
        decision: Decision,
        input_digest: str,
        started: float,
    ) -> Decision:
        """The inner memory's suppress-and-record, then the enrolment (not waited for)."""
        answered = self.inner.remember(call, evaluation, decision, input_digest, started)
        server = call.request.fhirServer
        if (
            evaluation.exposure is not None
            and call.request.hook == "patient-view"
            and is_fhir_id(call.context.patientId)  # the watch reads Patient/<id>
            and (server is None or normalise_base_url(server) == self.watch.config.server)
        ):
            self.enrol_later(call.context.patientId, exposure_key(evaluation.exposure))
        return answered

    def enrol_later(self, patient_id: str, exposure: str) -> None:
        """Enrol in the background thread, without waiting (an already-known pair:
        nothing)."""
        key = (patient_id, exposure)
        with self._lock:
            if key in self.recent:
                self.recent.move_to_end(key)
                return
            self.recent[key] = None
            if len(self.recent) > RECENT:
                self.recent.popitem(last=False)
            watch = self.watch
            future = ENROLMENTS.submit(
                lambda: watch.census.enrol(patient_id, "patient-view", watch.clock(), due_now=False)
            )
            self.pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[str]) -> None:
        error = future.exception()
        with self._lock:
            self.pending.discard(future)
            if error is not None:
                self.recent.clear()  # try again on the next call
        if error is not None:
            log.warning("patient-view enrolment failed", extra={"error": type(error).__name__})
