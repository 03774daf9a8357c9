"""The audit's two caches: stages on disk (resume an interrupted audit) and base-side results in memory
(several unlearned models against one base)."""

from __future__ import annotations

import copy
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from probes.results import to_jsonable, write_json


class StageCache:
    """JSON per stage under ``root/stages``; an entry counts only when its key matches (atomic writes, so
    a killed run never leaves a half file behind). ``hits``: the stages read from disk instead of run."""

    def __init__(self, root: str | Path | None, key: str):
        self.dir = Path(root) / "stages" if root is not None else None
        self.key = key
        self.hits: set[str] = set()

    def get_or_run(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if self.dir is not None:
            path = self.dir / f"{name}.json"
            if path.exists():
                try:
                    stored = json.loads(path.read_text())
                    if stored.get("key") == self.key:
                        self.hits.add(name)
                        return stored["value"]
                except (json.JSONDecodeError, KeyError):
                    pass
        value = to_jsonable(fn())
        if self.dir is not None:
            write_json(self.dir / f"{name}.json", {"key": self.key, "value": value})
            # a run killed while writing this stage leaves its temporary file behind: the stage is now
            # complete, so the leftover is garbage
            for stale in self.dir.glob(f".{name}.json.*.tmp"):
                stale.unlink(missing_ok=True)
        return value


def stage_key(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
    return h.hexdigest()[:24]


class BaseMemo:
    """Results that depend on the base model only (its behaviour, relearning, located vectors, lens,
    probes, head effects, CHES), kept in memory under a key of the base's weights, the concept and the
    config: auditing several unlearned models against one base (the demo, a sweep) computes them once."""

    def __init__(self, size: int = 64):
        self.size = size
        self._store: OrderedDict[str, Any] = OrderedDict()

    def get_or_run(self, key: str, fn: Callable[[], Any]) -> Any:
        if key in self._store:
            self._store.move_to_end(key)
        else:
            self._store[key] = fn()
            while len(self._store) > self.size:
                self._store.popitem(last=False)
        return copy.deepcopy(self._store[key])

    def clear(self) -> None:
        self._store.clear()


BASE_MEMO = BaseMemo()
OnBase = Callable[[str, Callable[[], Any]], Any]
