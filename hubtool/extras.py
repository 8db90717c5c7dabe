"""Optional parts of hubtool and the packages each needs (pyproject.toml's extras), checked before the work
that needs them starts: a missing one is one line naming the extra to install, not a traceback.

    pip install 'hubtool[server]'    # hub serve, hub ui
    pip install 'hubtool[all]'       # everything (`make install` does this)

Stdlib only: the CLI calls need() before it imports anything heavy.
"""

from __future__ import annotations

import importlib

from hubtool.errors import HubError

# extra -> the modules it installs (keep in step with [project.optional-dependencies]; a test checks)
EXTRAS: dict[str, tuple[str, ...]] = {
    "server": ("starlette", "uvicorn", "jinja2", "markdown_it", "blake3", "lz4"),  # hub serve, hub ui; Xet
    "postgres": ("psycopg",),  # postgresql+psycopg:// catalogs
    "plots": ("matplotlib",),  # the experiment report's figures
    "gguf": ("gguf",),  # converting the embedded base model (smollm2-135m) from its GGUF file
    "oracle": ("lm_eval",),  # benchmarks/lm_eval_agreement.py
}


def missing(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here."""
    gone = []
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError:
            gone.append(module)
    return gone


def need(extra: str, what: str) -> None:
    """A HubError naming the extra when `what` (e.g. "hub serve") cannot run for lack of it."""
    gone = missing(extra)
    if gone:
        raise HubError(f"{what} needs the {extra!r} extra ({', '.join(gone)} not installed): "
                       f"pip install 'hubtool[{extra}]'")  # fmt: skip
