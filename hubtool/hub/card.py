"""Model cards (README.md) for pushed experts and expert libraries, through huggingface_hub's ModelCard.

The metadata is what the Hub indexes: base_model (a Hub id), base_model_relation: adapter,
library_name, tags (hubtool, the task, its category, the kind), and the metrics as model-index eval
results. The text holds the fields, metrics, lineage, how to load it and the training recipe.

Cards are built from the pushed record alone, with sorted keys and no timestamps of the push, so
pushing the same expert again gives a byte-identical card (and the client skips the file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hubtool.data.metrics import HEADLINE
from hubtool.errors import HubError
from hubtool.hub.client import check_repo_id

# The Hub task every hubtool expert serves: prompt in, answer out of a causal LM.
PIPELINE_TASK = "text-generation"
_PEFT_NAMES = {"shira": "SHiRA", "supertuning": "Super-Tuning", "lora": "LoRA"}


def base_hub_id(base_model: str | None) -> str | None:
    """The Hub id of a base model: the embedded model's `hub_id`, a Hub-style id unchanged; None for a
    local folder (or anything else the Hub would not know)."""
    from hubtool.models import EMBEDDED

    if not base_model:
        return None
    if base_model in EMBEDDED:
        return EMBEDDED[base_model].hub_id
    if base_model.startswith(("/", ".", "~")) or Path(base_model).expanduser().exists():
        return None
    try:
        check_repo_id(base_model)
    except HubError:
        return None
    return base_model if "/" in base_model else None


def expert_card(
    record: dict[str, Any], *, repo_id: str, peft_format: str | None, note: str | None = None
) -> str:
    """README.md text of one pushed expert (`record`: what goes into hubtool.json)."""
    from huggingface_hub import ModelCard, ModelCardData

    base = base_hub_id(record.get("base_model"))
    data = ModelCardData(
        base_model=base,
        base_model_relation="adapter" if base else None,
        library_name="peft" if peft_format else "hubtool",
        pipeline_tag=PIPELINE_TASK,
        tags=_tags(record, peft_format),
        model_name=record["name"] if _eval_results(record) else None,
        eval_results=_eval_results(record) or None,
    )
    lines = [
        f"# {record['name']}",
        "",
        f"A hubtool {record['kind']} expert for the task `{record['task']}`"
        + (f" (category `{record['category']}`)" if record.get("category") else "")
        + f", a sparse delta over `{record['base_model']}`.",
        "",
    ]
    if record.get("description"):
        lines += [_text(record["description"]), ""]
    lines += _fields(record, base)
    lines += _metrics_section(record)
    lines += _lineage_section(record)
    lines += _usage_section(record, repo_id, base, peft_format, note)
    lines += _recipe_section(record)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).content


def export_card(expert: Any, *, peft_format: str, base: str, nnz: int, stored: int, sidecar: str) -> str:
    """README.md of a `hub export --format peft` folder: the same metadata a push gives (base_model as
    a Hub id, with base_model_relation: adapter; none for a local base) for an expert outside a catalog.
    `base`: what adapter_config.json names as the base (a local folder, or a Hub id)."""
    from huggingface_hub import ModelCard, ModelCardData

    hub_base = base_hub_id(expert.base_model) or base_hub_id(base)
    fmt_name = _PEFT_NAMES.get(peft_format, peft_format)
    record = {"task": expert.task, "kind": expert.kind}
    data = ModelCardData(
        base_model=hub_base,
        base_model_relation="adapter" if hub_base else None,
        library_name="peft",
        pipeline_tag=PIPELINE_TASK,
        tags=_tags(record, peft_format),
    )
    base_text = f"`{_cell(expert.base_model)}`"
    if expert.base_revision:
        base_text += f" (revision `{_cell(expert.base_revision)}`)"
    if hub_base and hub_base != expert.base_model:
        base_text += f", on the Hub `{hub_base}`"
    rows = [
        ("kind", _cell(expert.kind)),
        ("base model", base_text),
        ("adapted weights", f"{len(expert.deltas)}" + (f" ({_cell(expert.targets)})" if expert.targets else "")),
        ("keep ratio", "-" if expert.keep_ratio is None else f"{expert.keep_ratio:.6g}"),
        ("trained entries", f"{nnz:,}"),
    ]
    if stored > nnz:
        rows.append(("stored entries", f"{stored:,} (zero-valued padding: {peft_format} fixes the count per layer)"))
    lines = [
        f"# {expert.name}",
        "",
        f"A hubtool {expert.kind} expert for the task `{expert.task}`, exported to PEFT's {fmt_name} format.",
        "",
        "| field | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
        "## Use it",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        "",
        f"base = AutoModelForCausalLM.from_pretrained({json.dumps(base)})",
        'model = PeftModel.from_pretrained(base, "<this folder>")',
        "```",
        "",
        f"`{sidecar}` lets `hub import` restore the expert exactly (metadata, masks without padding).",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).content


def library_card(records: list[dict[str, Any]], *, repo_id: str) -> str:
    """README.md text of an expert library: every expert with its task, kind, headline metric and file."""
    from huggingface_hub import ModelCard, ModelCardData

    bases = sorted({r["base_model"] for r in records})
    hub_bases = sorted({b for b in (base_hub_id(x) for x in bases) if b})
    tasks = sorted({t for r in records for t in r["tasks"]})
    categories = sorted({r["category"] for r in records if r.get("category")})
    kinds = sorted({r["kind"] for r in records})
    data = ModelCardData(
        base_model=(hub_bases[0] if len(hub_bases) == 1 else hub_bases) or None,
        base_model_relation="adapter" if hub_bases else None,
        library_name="hubtool",
        pipeline_tag=PIPELINE_TASK,
        tags=_unique(["hubtool", "expert-library", *kinds, *tasks, *categories]),
    )
    rows = [
        f"| {_cell(r['ref'])} | {_cell(r['task'])} | {_cell(r.get('category') or '-')} | {_cell(r['kind'])} | "
        f"{_headline(r)} | `{_cell(r['file'])}` | `{r['sha256'][:12]}` |"
        for r in records
    ]
    lines = [
        f"# Expert library: {len(records)} hubtool experts",
        "",
        f"Tasks: {', '.join(f'`{t}`' for t in tasks)}. Base model{'s' if len(bases) > 1 else ''}: "
        + ", ".join(f"`{b}`" for b in bases)
        + ".",
        "",
        "| expert | task | category | kind | metric | file | sha256 |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "`hubtool_library.json` holds each expert's full catalog record (tasks, metrics, training config,",
        "lineage, sha256).",
        "",
        "## Use it",
        "",
        "```bash",
        f"hub pull {repo_id}                 # every expert into the local catalog",
        f"hub pull {repo_id} --expert {records[0]['name']}   # one of them",
        "```",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).content


# --- pieces ---------------------------------------------------------------------------------------------


def _tags(record: dict[str, Any], peft_format: str | None) -> list[str]:
    extra = ["peft", peft_format] if peft_format else []
    return _unique(
        [
            "hubtool",
            *record.get("tasks", [record["task"]]),
            record.get("category"),
            record["kind"],
            *extra,
            *record.get("tags", []),
        ]
    )


def _unique(items: list[Any]) -> list[str]:
    return list(dict.fromkeys(str(i) for i in items if i))


def _eval_results(record: dict[str, Any]) -> list[Any]:
    from huggingface_hub import EvalResult

    split = ((record.get("config") or {}).get("eval") or {}).get("split")
    out = []
    for task in sorted(record.get("metrics") or {}):
        for metric, value in sorted(record["metrics"][task].items()):
            out.append(
                EvalResult(
                    task_type=PIPELINE_TASK,
                    dataset_type=task,
                    dataset_name=task,
                    dataset_split=split if task == record["task"] else None,
                    metric_type=metric,
                    metric_value=value,
                )
            )
    return out


def _fields(record: dict[str, Any], base: str | None) -> list[str]:
    revision = record.get("base_revision")
    base_text = f"`{_cell(record['base_model'])}`" + (f" (revision `{_cell(revision)}`)" if revision else "")
    if base and base != record["base_model"]:
        base_text += f", on the Hub `{base}`"
    rows = [
        ("expert", f"`{record['ref']}`"),
        ("tasks", ", ".join(f"`{_cell(t)}`" for t in record.get("tasks", [record["task"]]))),
        ("category", _cell(record.get("category") or "-")),
        ("kind", _cell(record["kind"])),
        ("base model", base_text),
        ("adapted weights", _cell(record.get("targets") or "-")),
        ("keep ratio", "-" if record.get("keep_ratio") is None else f"{record['keep_ratio']:.6g}"),
        ("trained entries", f"{record['nnz']:,}"),
        ("values", _cell(record.get("value_dtype") or "-")),
        ("file", f"`{record['file']}` ({record['bytes']:,} bytes, sha256 `{record['sha256']}`)"),
    ]
    return ["| field | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]


def _metrics_section(record: dict[str, Any]) -> list[str]:
    metrics = record.get("metrics") or {}
    if not metrics:
        return []
    rows = [
        f"| {_cell(task)} | {_cell(metric)} | {value:.6g} |"
        for task in sorted(metrics)
        for metric, value in sorted(metrics[task].items())
    ]
    return ["## Metrics", "", "| task | metric | value |", "|---|---|---|", *rows, ""]


def _lineage_section(record: dict[str, Any]) -> list[str]:
    parents = (record.get("lineage") or {}).get("parents") or []
    if not parents:
        return []
    rows = [
        f"| `{_cell(p['ref'])}` | {_cell(p.get('role') or '-')} | "
        f"{'-' if p.get('weight') is None else format(p['weight'], 'g')} |"
        for p in parents
    ]
    return ["## Lineage", "", "| parent | role | weight |", "|---|---|---|", *rows, ""]


def _usage_section(
    record: dict[str, Any], repo_id: str, base: str | None, peft_format: str | None, note: str | None
) -> list[str]:
    lines = ["## Use it", ""]
    if peft_format:
        load_base = json.dumps(base or record["base_model"])
        lines += [
            f"With PEFT (the repo root is a {_PEFT_NAMES.get(peft_format, peft_format)} adapter):",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            "",
            f"base = AutoModelForCausalLM.from_pretrained({load_base})",
            f"model = PeftModel.from_pretrained(base, {json.dumps(repo_id)})",
            "```",
            "",
        ]
    elif note:
        lines += [f"No PEFT adapter in this repo: {note}", ""]
    if base and base != record["base_model"]:
        lines += [
            f"The expert was trained against `{record['base_model']}`"
            + (f" (revision `{record['base_revision']}`)" if record.get("base_revision") else "")
            + f"; `{base}` is that model on the Hub. Its weights may differ slightly: hubtool checks each "
            "weight's fingerprint when it applies the expert.",
            "",
        ]
    lines += [
        "With hubtool (registers it in the local catalog, keeping its record):",
        "",
        "```bash",
        f"hub pull {repo_id}",
        "```",
        "",
    ]
    return lines


def _recipe_section(record: dict[str, Any]) -> list[str]:
    config = record.get("config") or {}
    if not config:
        return []
    import yaml

    text = yaml.safe_dump(config, sort_keys=True, default_flow_style=False, allow_unicode=True)
    return ["## Training recipe", "", "```yaml", text.rstrip("\n"), "```", ""]


def _headline(record: dict[str, Any]) -> str:
    per_task = (record.get("metrics") or {}).get(record["task"]) or {}
    for metric in (*HEADLINE, *sorted(per_task)):
        if metric in per_task:
            return f"{_cell(metric)} {per_task[metric]:.4g}"
    return "-"


def _cell(value: object) -> str:
    """Text safe inside a Markdown table cell: one line, pipes escaped."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _text(value: object) -> str:
    return str(value).strip()
