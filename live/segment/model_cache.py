"""Engine weights loaded once per process, whatever the number of sessions.

A worker hosts many sessions; each used to build its own segmenter, and with
SAM 2 that meant one model copy (and one checkpoint read) per session. Here a
model is built on first use and handed to every session asking with the same
key (model, checkpoint, size, device and whatever else the built object
depends on). The cache holds its values weakly: a model lives as long as some
session uses it, so a worker that switches models does not keep the old one.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from typing import Any, Callable, Hashable, TypeVar

T = TypeVar("T")

_values: "weakref.WeakValueDictionary[Hashable, Any]" = weakref.WeakValueDictionary()
_key_locks: dict[Hashable, threading.Lock] = {}
_lock = threading.Lock()
#: how many times each key was built in this process (tests and stats read it)
builds: Counter = Counter()


def shared(key: Hashable, build: Callable[[], T]) -> T:
    """The live object for ``key``, built by ``build()`` if no session holds one.

    Two sessions starting at once build it once: the second waits for the
    first (a per-key lock, so other models still load in parallel).
    """
    with _lock:
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        value = _values.get(key)
        if value is None:
            value = build()
            _values[key] = value
            builds[key] += 1
        return value


def live_keys() -> list[Hashable]:
    """Keys whose object some session still holds."""
    return list(_values.keys())
