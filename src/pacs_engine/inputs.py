"""The ingest's sources moved to `pacs_engine.ingest.inputs`; the names docs/inputs.md
showed here keep working for the code that imports them from this module."""

from pacs_engine.ingest.inputs import (
    InputError,
    InputPolicy,
    InputRef,
    InputTooLarge,
    iter_inputs,
    read_chunks,
    read_input,
)

__all__ = [
    "InputError",
    "InputPolicy",
    "InputRef",
    "InputTooLarge",
    "iter_inputs",
    "read_chunks",
    "read_input",
]
