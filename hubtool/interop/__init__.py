"""Other tools' formats in and out (PEFT adapter folders, GGUF base models). No torch at import time."""

from hubtool.fileio import atomic_folder

__all__ = ["atomic_folder"]
