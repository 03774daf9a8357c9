"""Process settings vestige makes before torch loads, each only where the user has not set it.

- ``MKL_DISABLE_FAST_MM=1``: torch's CPU build links Intel MKL, whose memory manager by default keeps the
  buffers of every matrix product it runs (per thread and shape) for reuse and never returns them. Over a
  quick audit of SmolLM2 on a 2-core CPU that cache reached 37 MiB of heap (glibc ``mallinfo2``'s bytes in
  use) by the third stage and stayed, raising every later stage's peak; with the cache off the heap in
  use stays flat and the audit took the same time (229 s against 239 s). MKL reads the variable once,
  when torch loads it, so this module runs first from ``probes/__init__.py`` and ``analyses/__init__.py``:
  in a process that imported torch before vestige (a notebook that ran ``import torch`` first) the setting
  has no effect: set ``MKL_DISABLE_FAST_MM=1`` in the environment before starting it. (Freeing MKL's
  buffers between stages, ``mkl_free_buffers``, was tried for that case and dropped: three quick audits
  with it peaked at 2.60-2.65x the parameter bytes, one without it at 2.51x.)
  MKL turns its cache off whatever the variable's value (``0`` too); to keep the cache, set
  ``VESTIGE_MKL_CACHE=1`` instead, and vestige leaves the variable unset.
"""

from __future__ import annotations

import os

if os.environ.get("VESTIGE_MKL_CACHE", "").lower() not in ("1", "true", "yes", "on"):
    os.environ.setdefault("MKL_DISABLE_FAST_MM", "1")
