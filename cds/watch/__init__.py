"""The watch (issue #12): continuous CRS surveillance of every patient in a risk window.

CDS Hooks speaks only when a chart is opened; the watch notices, between chart opens,
that a patient's data now meet or escalate CRS criteria, and tells someone once.

- census.py       who is watched (the census), each patient's state, row leases
- reading.py      the FHIR side: what changed since the last look, the patient's data
                  (the service's own fallback queries), the census search, catch-up
- changes.py      what matters (pure): a higher grade, a possible grade, a first fever,
                  a data gap — each with a change key that makes it notified once
- subscriptions.py FHIR Subscriptions (R5 Backport IG on R4, rest-hook): the notification
                  bundles read, stored before they are acknowledged
- delivery.py     webhooks (retries, backoff, idempotency keys) and the FHIR write-back
- worker.py       `crs-cds watch run`: several of them share the work through the database
- enrolment.py    patient-view calls enrol the patients they find in a window
- status.py       what `crs-cds watch status` and the API show
- config.py, ids.py, service.py: the settings resolved, patient ids at rest, assembly

It evaluates with the service's engine (cds.evaluation) and never orders anything.
"""
