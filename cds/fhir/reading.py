"""Collect FHIR resources from prefetch values and Bundles, entry by entry.

A prefetch value may be a single resource, a Bundle (searchset, collection,
transaction…), or null. Search entries with `search.mode = outcome` are skipped.
Anything that is not a resource is reported as an `Issue` with its location and never
stops the evaluation.

Values come as parsed JSON (dicts) or already decoded into `structs.Resource` (a request
body decoded in one pass); both are walked alike, and a resource is kept as it came.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from msgspec import UNSET, Struct
from pydantic import ValidationError

from cds.fhir.structs import Resource, to_json


@dataclass(frozen=True, slots=True)
class Issue:
    """An entry that could not be read: where it is and what is wrong with it."""

    location: str
    problem: str

    def as_json(self) -> dict[str, str]:
        """As reported in the response."""
        return {"location": self.location, "problem": self.problem}


@dataclass(frozen=True, slots=True)
class Truncated:
    """A Bundle sent with a `next` link: only its first page(s) arrived. `received` entries
    were read; `total` is the Bundle's own count of matches, when it gives one."""

    location: str  # e.g. "prefetch.observations"
    next_url: str | None
    received: int
    total: int | None

    def as_json(self) -> dict[str, Any]:
        """As reported in the response (`total` only when the Bundle gave it)."""
        out: dict[str, Any] = {"location": self.location, "entriesRead": self.received}
        if self.total is not None:
            out["total"] = self.total
        return out

    def describe(self) -> str:
        """ "20 of 45 entries of prefetch.observations" for the card."""
        of = f" of {self.total}" if self.total is not None else ""
        return f"{self.received}{of} entries of {self.location}"


class RawResource(Struct, gc=False):
    """A resource as received (a JSON object or a decoded `Resource`), with where it was
    found: `where` itself, or entry `index` of the Bundle at `where`. A chart has
    thousands of entries and few problems, so the location is written out when asked."""

    where: str
    data: dict[str, Any] | Resource
    resource_type: str
    full_url: str | None = None
    index: int = -1

    @classmethod
    def of(
        cls,
        location: str,
        data: dict[str, Any] | Resource,
        full_url: str | None = None,
        index: int = -1,
    ) -> RawResource:
        """`data` found at `location` (or in entry `index` of the Bundle there)."""
        kind = data.resourceType if isinstance(data, Resource) else str(data.get("resourceType"))
        return cls(location, data, kind, full_url, index)

    @property
    def location(self) -> str:
        """The FHIR path of the resource in the request."""
        if self.index < 0:
            return self.where
        return f"{self.where}.entry[{self.index}].resource"

    def get(self, name: str) -> Any:
        """A top-level field as received (None when absent); of a decoded Resource only
        the fields it declares."""
        data = self.data
        if isinstance(data, Resource):
            value = getattr(data, name, None)
            return None if value is UNSET else value
        return data.get(name)

    def json(self) -> dict[str, Any]:
        """The resource as a JSON object (of a decoded Resource, the fields it declares)."""
        data = self.data
        return to_json(data) if isinstance(data, Resource) else data

    @property
    def reference(self) -> str:
        """`Type/id` when the resource has an id, else its fullUrl or location."""
        rid = self.get("id")
        if isinstance(rid, str) and rid:
            return f"{self.resource_type}/{rid}"
        return self.full_url or self.location


def validation_issues(location: str, exc: ValidationError) -> list[Issue]:
    """One Issue per pydantic error, located by FHIR path under `location` (or, with "",
    from the root of what was validated: `feedback[0].outcome`)."""
    issues = []
    for err in exc.errors(include_url=False, include_input=False):
        path = location
        for part in err["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            else:
                path += f".{part}" if path else str(part)
        issues.append(Issue(path, err["msg"]))
    return issues


def validation_message(location: str, exc: ValidationError) -> str:
    """Every pydantic error as `path: message`, joined: for 400 answers."""
    return "; ".join(f"{i.location}: {i.problem}" for i in validation_issues(location, exc))


# a value to add: (the value, where it was found, the fullUrl of its entry)
_Found = tuple[Any, str, str | None]


class ResourceCollector:
    """Walks prefetch values and Bundles, keeping resources and reporting the rest."""

    def __init__(self) -> None:
        self.resources: list[RawResource] = []
        self.issues: list[Issue] = []
        # Bundles cut at a page (a `next` link): fetched further, or reported as incomplete
        self.truncated: list[Truncated] = []
        self._by_type: dict[str, list[RawResource]] | None = None
        self._indexed = 0  # how many resources `_by_type` holds

    def add_prefetch(self, prefetch: Mapping[str, Any], root: str = "prefetch") -> None:
        """Add every non-null prefetch value."""
        for key, value in prefetch.items():
            if value is not None:
                self.add(value, f"{root}.{key}")

    def add(self, value: Any, location: str, full_url: str | None = None) -> None:
        """Add a resource or a Bundle found at `location`. Bundles within Bundles are
        walked with a stack of their own, in document order: any nesting is safe."""
        stack: list[Iterator[_Found]] = [iter(((value, location, full_url),))]
        while stack:
            found = next(stack[-1], None)
            if found is None:
                stack.pop()
                continue
            inner = self._add_one(*found)
            if inner is not None:
                stack.append(inner)

    def _add_one(self, value: Any, location: str, full_url: str | None) -> Iterator[_Found] | None:
        """Keep a resource (or report what is not one); of a Bundle, its entries to walk."""
        if type(value) is Resource:
            return self._add_decoded(value, location, full_url)
        if not isinstance(value, dict):
            self.issues.append(
                Issue(location, f"expected a FHIR resource or Bundle, got {_kind(value)}")
            )
            return None
        resource_type = value.get("resourceType")
        if not isinstance(resource_type, str) or not resource_type:
            self.issues.append(Issue(f"{location}.resourceType", "missing resourceType"))
            return None
        if resource_type == "Bundle":
            return self._bundle_entries(value, location)
        if resource_type != "OperationOutcome":
            self.resources.append(RawResource.of(location, value, full_url))
        return None

    def _bundle_entries(self, bundle: dict[str, Any], location: str) -> Iterator[_Found]:
        """The resources of a Bundle's entries, to be added (its link and entry problems
        noted on the way)."""
        entries = bundle.get("entry", [])
        links = bundle.get("link")
        for link in links if isinstance(links, list) else ():
            if isinstance(link, dict) and link.get("relation") == "next":
                url, total = link.get("url"), bundle.get("total")
                self.truncated.append(
                    Truncated(
                        location,
                        url if isinstance(url, str) and url else None,
                        len(entries) if isinstance(entries, list) else 0,
                        total if type(total) is int else None,
                    )
                )
                break
        if not isinstance(entries, list):
            self.issues.append(Issue(f"{location}.entry", "Bundle.entry must be an array"))
            return
        for i, entry in enumerate(entries):
            # Locations are written out only where needed: a chart has thousands of entries.
            if not isinstance(entry, dict):
                self.issues.append(
                    Issue(f"{location}.entry[{i}]", f"expected a Bundle entry, got {_kind(entry)}")
                )
                continue
            search = entry.get("search")
            if isinstance(search, dict) and search.get("mode") == "outcome":
                continue
            resource = entry.get("resource")
            if resource is None:
                if "request" not in entry and "response" not in entry:
                    self.issues.append(
                        Issue(f"{location}.entry[{i}]", "Bundle entry has no resource")
                    )
                continue
            full_url = entry.get("fullUrl")
            yield (
                resource,
                f"{location}.entry[{i}].resource",
                full_url if isinstance(full_url, str) else None,
            )

    def _add_decoded(
        self, value: Resource, location: str, full_url: str | None
    ) -> Iterator[_Found] | None:
        """`_add_one` for a decoded Resource: the same walk, on fields already typed."""
        kind = value.resourceType
        if kind == "Bundle":
            return self._decoded_bundle_entries(value, location)
        if not kind:
            self.issues.append(Issue(f"{location}.resourceType", "missing resourceType"))
        elif kind != "OperationOutcome":
            self.resources.append(RawResource(location, value, kind, full_url))
        return None

    def _decoded_bundle_entries(self, bundle: Resource, location: str) -> Iterator[_Found]:
        """Keeps the resources of a decoded Bundle as it goes (thousands, in one loop);
        yields only its Bundles within, and what has no resourceType, to be added."""
        for link in bundle.link or ():
            if link.relation == "next":
                url = link.url if isinstance(link.url, str) and link.url else None
                total = bundle.total if type(bundle.total) is int else None
                self.truncated.append(Truncated(location, url, len(bundle.entry or ()), total))
                break
        append = self.resources.append
        for i, entry in enumerate(bundle.entry or ()):
            resource = entry.resource
            search = entry.search
            if search is not None and search.mode == "outcome":
                continue
            if resource is None:
                if entry.request is UNSET and entry.response is UNSET:
                    self.issues.append(
                        Issue(f"{location}.entry[{i}]", "Bundle entry has no resource")
                    )
                continue
            kind = resource.resourceType
            if kind == "Bundle" or not kind:
                yield (resource, f"{location}.entry[{i}].resource", entry.fullUrl)
            elif kind != "OperationOutcome":
                append(RawResource(location, resource, kind, entry.fullUrl, i))

    def of_type(self, *types: str) -> Iterable[RawResource]:
        """The collected resources of the given types, in the order found."""
        if self._by_type is None or self._indexed != len(self.resources):
            # (asked for a few rare types, of thousands of Observations: indexed once)
            self._by_type = {}
            for r in self.resources:
                self._by_type.setdefault(r.resource_type, []).append(r)
            self._indexed = len(self.resources)
        if len(types) == 1:
            return tuple(self._by_type.get(types[0], ()))
        return (r for r in self.resources if r.resource_type in types)


FAILED_SEVERITIES = frozenset({"error", "fatal"})


def reports_failure(value: Any) -> bool:
    """Whether a prefetch value reports an error in fetching it (CDS Hooks 2.0): an
    OperationOutcome, or a Bundle carrying one with an issue of severity error or fatal.
    (Outcome entries with warnings or information accompany ordinary searches.)"""
    if type(value) is Resource:
        if value.resourceType == "OperationOutcome":
            return True
        entries = value.entry if type(value.entry) is tuple else ()
        for entry in entries:  # (a loop, not any(): thousands of entries, at every call)
            resource = entry.resource
            if (
                resource is not None
                and resource.resourceType == "OperationOutcome"
                and _failed(resource.issue)
            ):
                return True
        return False
    if not isinstance(value, dict):
        return False
    kind = value.get("resourceType")
    if kind == "OperationOutcome":
        return True
    listed = value.get("entry") if kind == "Bundle" else None
    return isinstance(listed, list) and any(
        isinstance(e, dict)
        and isinstance(e.get("resource"), dict)
        and e["resource"].get("resourceType") == "OperationOutcome"
        and _failed(e["resource"].get("issue"))
        for e in listed
    )


def _failed(issues: Any) -> bool:
    return isinstance(issues, list | tuple) and any(
        isinstance(i, dict) and i.get("severity") in FAILED_SEVERITIES for i in issues
    )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
