"""vestige probes: instruments that read one kind of trace from a model through hooks.

No module here imports ``analyses``.
"""

import probes.environment  # noqa: F401 - first: process settings that must precede loading torch
from probes.data import QA, Concept, load_concept, load_concepts
from probes.errors import VestigeError
from probes.model import Model, from_hf, load_model
from probes.qa import score_qa

__all__ = [
    "QA",
    "Concept",
    "Model",
    "VestigeError",
    "from_hf",
    "load_concept",
    "load_concepts",
    "load_model",
    "score_qa",
]
