"""What a hubtool repo on a Hub holds: the file names and format tags that `hub push` writes and `hub pull`
reads (a module of its own, so that neither of the two imports the other for them)."""

from __future__ import annotations

RECORD_FILE = "hubtool.json"
LIBRARY_FILE = "hubtool_library.json"
LIBRARY_FOLDER = "experts"
EXPERT_FORMAT = "hubtool-expert-repo"  # hubtool.json's "hub_format"
LIBRARY_FORMAT = "hubtool-expert-library"
HUB_FORMAT_VERSION = 1
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
