"""Collect FHIR resources from prefetch values and Bundles, entry by entry.

A prefetch value may be a single resource, a Bundle (searchset, collection,
transaction…), or null. Search entries with `search.mode = outcome` are skipped.
Anything that is not a resource is reported as an `Issue` with its location and never
stops the evaluation. A prefetch value that is not the data its template asks for at
all (`not_as_asked`: a Patient where Observations were searched) is not read: it is
fetched again, like a value reporting an error (`reports_failure`; see `gather`).

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


# An unreadable resource (a draft order, an administration) is searched for the names
# and codes of what it may be: at most this many JSON values (a hostile one may be huge
# or nested thousands deep).
MENTION_SCAN_LIMIT = 20_000


def json_strings(value: Any, limit: int) -> Iterator[str]:
    """The strings (keys and values) of a JSON value, depth-first, at most `limit` values."""
    stack = [value]
    seen = 0
    while stack and seen < limit:
        item = stack.pop()
        seen += 1
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for key, inner in item.items():
                yield str(key)
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)


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
                Issue(location, f"expected a FHIR resource or Bundle, got {_json_kind(value)}")
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
                    Issue(
                        f"{location}.entry[{i}]",
                        f"expected a Bundle entry, got {_json_kind(entry)}",
                    )
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


def not_as_asked(value: Any, resource_type: str) -> str | None:
    """What a prefetch value holds when it is not the data its template asks for, a
    `resource_type` resource or a Bundle of them (e.g. "a Patient resource" where
    Observations were searched); None when it is. A Bundle is what was asked for when it
    holds a `resource_type` (or a Bundle within), or no resource at all (nothing found);
    a search is answered by a single resource of the type too. (Resources of other types
    beside those asked for are read as usual: the Medications `_include`d with their
    administrations.) Called once per value, and the walk stops at the first resource of
    the type: the first entry, in a chart as sent."""
    kind: Any
    if type(value) is Resource:
        kind = value.resourceType
        if kind == "Bundle":
            return _decoded_bundle_not_as_asked(value, resource_type)
    elif isinstance(value, dict):
        kind = value.get("resourceType")
        if not isinstance(kind, str):
            return "a JSON object without resourceType"
        if kind == "Bundle":
            return _bundle_not_as_asked(value, resource_type)
    else:
        return _json_kind(value)
    if kind == resource_type:
        return None
    if not kind:
        return "a JSON object without resourceType"
    return f"{with_article(_type_name(kind))} resource"


def _bundle_not_as_asked(bundle: dict[str, Any], resource_type: str) -> str | None:
    entries = bundle.get("entry")
    if entries is None:
        return None
    if not isinstance(entries, list):
        return f"a Bundle whose entry is {_json_kind(entries)}, not an array"
    kinds: set[str] = set()
    unreadable = 0
    for entry in entries:
        if not isinstance(entry, dict):
            unreadable += 1
            continue
        resource = entry.get("resource")
        search = entry.get("search")
        if resource is None or (isinstance(search, dict) and search.get("mode") == "outcome"):
            continue  # (as the collector skips them)
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        if kind == resource_type or kind == "Bundle":
            return None
        if kind == "OperationOutcome":
            continue  # (one reporting no error: a search's warning)
        if isinstance(kind, str) and kind:
            kinds.add(kind)
        else:
            unreadable += 1
    return _bundle_kind(kinds, unreadable)


def _decoded_bundle_not_as_asked(bundle: Resource, resource_type: str) -> str | None:
    kinds: set[str] = set()
    unreadable = 0
    for entry in bundle.entry or ():
        resource = entry.resource
        search = entry.search
        if resource is None or (search is not None and search.mode == "outcome"):
            continue
        kind = resource.resourceType
        if kind == resource_type or kind == "Bundle":
            return None
        if kind == "OperationOutcome":
            continue
        if kind:
            kinds.add(kind)
        else:
            unreadable += 1
    return _bundle_kind(kinds, unreadable)


def _bundle_kind(kinds: set[str], unreadable: int) -> str | None:
    """ "a Bundle of Patient resources" (None for a Bundle of none: nothing found)."""
    parts = []
    if kinds:
        names = sorted({_type_name(kind) for kind in kinds})
        if len(names) > 3:
            names = [*names[:3], f"{len(names) - 3} other"]
        listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        parts.append(f"{listed} resources")
    if unreadable:
        parts.append(
            "1 entry that is not a resource"
            if unreadable == 1
            else f"{unreadable} entries that are not resources"
        )
    return f"a Bundle of {' and '.join(parts)}" if parts else None


_MAX_TYPE_NAME = 64  # (FHIR's longest is 35 letters)


def _type_name(kind: str) -> str:
    """A resourceType as sent, when it can be one (it is echoed in the response)."""
    if len(kind) <= _MAX_TYPE_NAME and kind.isascii() and kind.isalpha():
        return kind
    return "unrecognised"


def with_article(noun: str) -> str:
    """ "a Patient", "an Observation"."""
    return f"{'an' if noun and noun[0].lower() in 'aeiou' else 'a'} {noun}"


def _json_kind(value: Any) -> str:
    """A JSON value, named for a message ("a string")."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


def _failed(issues: Any) -> bool:
    return isinstance(issues, list | tuple) and any(
        isinstance(i, dict) and i.get("severity") in FAILED_SEVERITIES for i in issues
    )
