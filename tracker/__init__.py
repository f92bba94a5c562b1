"""clusterprobe.tracker: the store abstraction; the only package that imports mlflow.

``Store``/``resolve_store`` come from `store` (no mlflow import); ``Tracker`` and
``RunContext`` from `tracking`, imported on first use so that resolving a store or
reading the conventions stays cheap.
"""

from clusterprobe.tracker.store import Store, add_store_arguments, resolve_store, store_from_args

__all__ = [
    "RunContext",
    "Store",
    "Tracker",
    "add_store_arguments",
    "resolve_store",
    "store_from_args",
]


def __getattr__(name: str):
    if name in ("Tracker", "RunContext", "handle_sigterm"):
        from clusterprobe.tracker import tracking

        return getattr(tracking, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
