"""Bitwise copies of tensors kept out of the memory that holds the model, to put back later.

An in-place edit that must be undone exactly (the quantization attack rounds every block weight) needs the
originals somewhere. Kept beside the model they cost as much memory as the weights they save; a
``Stash`` keeps them elsewhere: a CUDA tensor's copy in host memory, a CPU tensor's in a temporary file on
disk (written once, read back once, removed on ``close``). ``restore`` copies every saved tensor back into
the tensor it came from, bit for bit, last saved first.

    with Stash() as stash:
        for w in weights:
            stash.save(w)
            w.copy_(rounded(w))
        ...
        stash.restore()
"""

from __future__ import annotations

import os
import tempfile
from types import TracebackType

import torch


class Stash:
    """Saved copies of tensors (``save``), put back by ``restore``; ``close`` (or leaving the ``with``
    block) drops them and removes the file."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self._folder = folder
        self._file = None
        self._saved: list[tuple[torch.Tensor, torch.Tensor | None, int, int]] = []

    def save(self, tensor: torch.Tensor) -> None:
        """Keep a bitwise copy of ``tensor`` (its current values) to restore later."""
        data = tensor.detach()
        if data.device.type != "cpu":
            self._saved.append((tensor, data.to("cpu", copy=True), 0, 0))
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self._folder, prefix="vestige-stash-")
        raw = data.contiguous().view(-1).view(torch.uint8).numpy()
        offset = self._file.seek(0, os.SEEK_END)
        self._file.write(memoryview(raw))
        self._saved.append((tensor, None, offset, raw.nbytes))

    @torch.no_grad()
    def restore(self) -> None:
        """Copy every saved tensor back into its source, bit for bit, last saved first."""
        if self._file is not None:
            self._file.flush()
        for tensor, copy, offset, nbytes in reversed(self._saved):
            if copy is None:
                self._file.seek(offset)  # type: ignore[union-attr]
                buf = bytearray(self._file.read(nbytes))  # type: ignore[union-attr]
                copy = torch.frombuffer(buf, dtype=torch.uint8).view(tensor.dtype).view(tensor.shape)
            tensor.copy_(copy)

    def __len__(self) -> int:
        return len(self._saved)

    def close(self) -> None:
        self._saved.clear()
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Stash:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
