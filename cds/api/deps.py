"""FastAPI dependencies: what a route needs, from the application's state (set once by
`create_app`, replaced in tests)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from cds.pipeline import Hooks
from cds.runtime import Runtime
from cds.store.decisions import DecisionStore


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_hooks(request: Request) -> Hooks:
    hooks: Hooks = request.app.state.hooks
    return hooks


def get_store(request: Request) -> DecisionStore:
    store: DecisionStore = request.app.state.store
    return store


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
StoreDep = Annotated[DecisionStore, Depends(get_store)]
HooksDep = Annotated[Hooks, Depends(get_hooks)]
