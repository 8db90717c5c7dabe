"""`hub eval` against lm-evaluation-harness: the same examples, the same prompts, the same scores.

    .venv/bin/python benchmarks/lm_eval_agreement.py [--limit 50] [--tasks commonsenseqa,piqa,squad]
        [--expert NAME --catalog URL] [--write-section docs/results.md] [--threads 1]

Needs lm-eval (`pip install -e '.[oracle]'`). Two models are scored: the base model (smollm2-135m) and one
expert on it, either `--expert NAME` from `--catalog URL` or, by default, a small sparse commonsenseqa
expert trained here (20 steps) into a throw-away catalog. hub's numbers come from `hubtool.api.evaluate_expert`
(what `hub eval` runs, store=False); lm-eval's from `simple_evaluate` with its HFLM on a model folder (the
base's own folder; for the expert, base + delta applied in fp32 and saved in fp32, the weights hub scores).

Same prompts: every example is rendered with hubtool's own formatting into a local JSONL (the context is
`format_prompt`'s output: the chat template, with the assistant header), and an lm-eval task is defined over
that file (dataset_path json + data_files, zero-shot, no lm-eval chat template), so lm-eval sees the very
context strings hub encodes. What follows a context is what hub scores or generates:

  multiple choice  choices are the options; target_delimiter is hub's `answer_text` prefix ("" after a chat
                   template, " " after a plain prompt), so lm-eval's continuation == hub's answer text.
                   acc == hub accuracy (argmax of summed log-probs); acc_norm == hub accuracy_norm (argmax
                   of log-prob / the option's length in characters, both; lm-eval's acc_bytes divides by
                   UTF-8 bytes, the same on ASCII options).
  generation       greedy, max_gen_toks == hub's max_new_tokens; until: the EOS strings of hub's stop ids,
                   plus "\\n" when there is no chat template (hub keeps the first line then). exact_match is
                   lm-eval's own, configured to hub's SQuAD normalisation as far as it goes: punctuation,
                   then articles (case-blind), then whitespace removed, case ignored. hub collapses whitespace
                   where lm-eval can only remove it, so lm-eval can count "new york" == "newyork" and hub
                   not; the script also scores lm-eval's generations with hub's metric functions (the
                   "hub metric on lm-eval text" column, and rougeL, which lm-eval lacks), which separates a
                   normalisation difference from a generation difference.

Known difference, explained where it shows: lm-eval moves a context's trailing whitespace into every
continuation (SmolLM2's template ends "assistant\\n"), so each option's log-prob carries the same extra
log p("\\n" | context): acc cannot change, acc_norm can (the constant is divided by each option's length).
The script measures that constant through lm-eval itself and recomputes acc_norm without it (printed
after the table; it explains an acc_norm gap). Near-ties (two options within 1e-4 nats) are counted too:
batching and padding change fp32 sums at ~1e-6, enough to swap such a pair.

A difference over 1 point that none of these explains fails the run (exit 1). On busy cores `--threads 1`
is several times faster than torch's default (threads spin-waiting on each other); scores do not depend on it.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import re
import shlex
import string
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Nothing may come from the Hub: datasets' json builder and transformers work from local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1.0  # points
NEAR_TIE = 1e-4  # nats: two options closer than this may swap between batchings
SECTION = "lm-eval agreement"
# hub's SQuAD normalisation (hubtool.data.metrics.normalize_answer) in lm-eval's terms: regexes removed in
# this order, then lower case. Punctuation goes first, as in hub, so "the-end" keeps its "the".
EM_REGEXES = [f"[{re.escape(string.punctuation)}]", r"(?i)\b(a|an|the)\b", r"\s+"]


def default_tasks() -> list[str]:
    """Two multiple-choice tasks and one generation task: squad when ../shared/data has it, else nq_open."""
    from hubtool.data import load_task
    from hubtool.errors import HubError

    try:
        load_task("squad")
        gen = "squad"
    except HubError:
        gen = "nq_open"
    return ["commonsenseqa", "piqa", gen]


# ------------------------------------------------------------------------------- rendering


@dataclass
class Rendered:
    """One task as lm-eval will see it (its config names the JSONL), with the hub examples and the rendered
    contexts the diagnostics need afterwards."""

    name: str
    kind: str  # "multiple_choice" | "generation"
    config: dict[str, Any]
    examples: list[Any]
    contexts: list[str]


def answer_delimiter(tokenizer: Any, contexts: list[str]) -> str:
    """What hub puts between a rendered prompt and an option (hubtool.data.prompts.answer_text); lm-eval has
    one target_delimiter per task, so every example must agree."""
    from hubtool.data.prompts import answer_text

    found = {answer_text(tokenizer, c, "") for c in contexts}
    if len(found) != 1:
        raise SystemExit(f"prompts need different delimiters {sorted(found)}: not expressible as one lm-eval task")
    return found.pop()


def stop_strings(model: Any, tokenizer: Any) -> list[str]:
    """lm-eval's `until` for hub's stopping rule: hub cuts at its stop ids (EOS of the tokenizer and of the
    generation config) and, without a chat template, keeps the first line."""
    from hubtool.data.prompts import has_chat_template
    from hubtool.evaluate import stop_ids

    until = [tokenizer.decode([i], skip_special_tokens=False) for i in stop_ids(model, tokenizer)]
    return until + ([] if has_chat_template(tokenizer) else ["\n"])


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def render_task(name: str, examples: list[Any], model: Any, tokenizer: Any, folder: Path, *,
                max_new_tokens: int) -> Rendered:
    """The examples as a local JSONL of hub-formatted contexts, and an lm-eval task config over it."""
    from hubtool.data.prompts import format_prompt

    folder.mkdir(parents=True, exist_ok=True)
    contexts = [format_prompt(tokenizer, e.input) for e in examples]
    path = folder / f"{name}.jsonl"
    task = f"hub_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"
    config: dict[str, Any] = {
        "task": task,
        "dataset_path": "json",
        # A private cache: datasets' builder output must not outlive the run or mix with another's.
        "dataset_kwargs": {"data_files": {"test": str(path)}, "cache_dir": str(folder / "datasets-cache")},
        "test_split": "test",
        "doc_to_text": "context",
        "num_fewshot": 0,
        "metadata": {"version": 1},
    }
    multiple_choice = all(e.options for e in examples)
    if multiple_choice:
        write_jsonl(path, [{"context": c, "choices": e.options, "label": e.options.index(e.output)}
                           for c, e in zip(contexts, examples)])
        config |= {
            "output_type": "multiple_choice",
            "doc_to_choice": "choices",
            "doc_to_target": "label",
            "target_delimiter": answer_delimiter(tokenizer, contexts),
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                            for m in ("acc", "acc_norm", "acc_bytes")],
        }
    elif not any(e.options for e in examples):
        write_jsonl(path, [{"context": c, "refs": e.references} for c, e in zip(contexts, examples)])
        config |= {
            "output_type": "generate_until",
            "doc_to_target": "refs",  # a list: lm-eval's multiple-target rule, any reference matches
            "target_delimiter": "",
            "generation_kwargs": {"until": stop_strings(model, tokenizer), "do_sample": False,
                                  "max_gen_toks": max_new_tokens},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                             "ignore_case": True, "ignore_punctuation": True, "regexes_to_ignore": EM_REGEXES}],
        }
    else:
        raise SystemExit(f"task {name}: some examples have options and some not; score it as two tasks")
    return Rendered(name, "multiple_choice" if multiple_choice else "generation", config, examples, contexts)


# ------------------------------------------------------------------------------- lm-eval side


def make_lm(folder: str, *, batch_size: int, chat: bool) -> Any:
    """lm-eval's HFLM on a model folder, fp32 on the CPU. A chat-templated prompt is encoded by hub without
    special tokens (the template wrote them); a plain one with the tokenizer's own, lm-eval's default."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=folder, dtype="float32", device="cpu", batch_size=batch_size,
                add_bos_token=False if chat else None)


def run_lm_eval(lm: Any, rendered: Rendered) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """lm-eval's metrics (in percent) on the rendered task, and its per-example samples in doc order."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    # include_defaults=False: indexing lm-eval's thousands of built-in task files is not needed here.
    out = simple_evaluate(model=lm, tasks=[rendered.config], task_manager=TaskManager(include_defaults=False),
                          bootstrap_iters=0, log_samples=True, random_seed=0)
    name = rendered.config["task"]
    metrics = {k.split(",")[0]: 100 * float(v) for k, v in out["results"][name].items()
               if "," in k and "stderr" not in k and isinstance(v, (int, float))}
    samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    return metrics, samples


def sample_lls(sample: dict[str, Any]) -> list[float]:
    """Per option, lm-eval's summed log-prob of its continuation."""
    return [float(r[0]) for r in sample["filtered_resps"]]


def sample_text(sample: dict[str, Any]) -> str:
    resp = sample["filtered_resps"]
    return resp[0] if isinstance(resp, list) else resp


def shared_prefix_logprobs(lm: Any, contexts: list[str]) -> list[float]:
    """Per context, the log-prob lm-eval adds to every option by moving the context's trailing whitespace
    into the continuation (0 when there is none), measured through lm-eval's own loglikelihood."""
    from lm_eval.api.instance import Instance

    out = [0.0] * len(contexts)
    requests, where = [], []
    for i, c in enumerate(contexts):
        stripped = c.rstrip()
        # Whitespace the tokenizer drops (a word-level one) moves no token, so adds nothing.
        if lm.tok_encode(stripped) != lm.tok_encode(c):
            requests.append(Instance("loglikelihood", {}, (stripped, c[len(stripped):]), len(requests)))
            where.append(i)
    for i, (ll, _) in zip(where, lm.loglikelihood(requests, disable_tqdm=True) if requests else []):
        out[i] = float(ll)
    return out


def mc_diagnostics(lm: Any, rendered: Rendered, samples: list[dict[str, Any]]) -> dict[str, float]:
    """Near-ties, and acc_norm without the shared trailing-whitespace term: what explains an acc/acc_norm gap."""
    shift = shared_prefix_logprobs(lm, rendered.contexts)
    ties = ties_norm = 0
    corrected = []
    for e, s, c in zip(rendered.examples, samples, shift):
        lls = sample_lls(s)
        lengths = [max(1, len(o)) for o in e.options]
        ties += _near_tie(lls)
        ties_norm += _near_tie([ll / n for ll, n in zip(lls, lengths)])
        normed = [(ll - c) / max(1, len(o.encode())) for ll, o in zip(lls, e.options)]
        corrected.append(e.options[max(range(len(normed)), key=normed.__getitem__)] == e.output)
    n = len(samples)
    return {"near_ties": ties, "near_ties_norm": ties_norm, "shift_max": max((abs(c) for c in shift), default=0.0),
            "acc_norm_without_shift": 100 * sum(corrected) / n}


def _near_tie(values: list[float]) -> int:
    top = sorted(values, reverse=True)[:2]
    return int(len(top) == 2 and top[0] - top[1] < NEAR_TIE)


def gen_diagnostics(rendered: Rendered, samples: list[dict[str, Any]]) -> dict[str, float]:
    """hub's own metrics on lm-eval's generations: equal to hub's scores when the generations are equal."""
    from hubtool.data.metrics import exact_match, rouge_l

    texts = [sample_text(s).strip() for s in samples]
    n = len(texts)
    return {"exact_match": 100 * sum(exact_match(t, e.references) for t, e in zip(texts, rendered.examples)) / n,
            "rougeL": 100 * sum(rouge_l(t, e.references) for t, e in zip(texts, rendered.examples)) / n}


# ------------------------------------------------------------------------------- hub side


def hub_scores(target: str | None, task: str, *, base: str, catalog: Any, limit: int, max_new_tokens: int,
               batch_size: int) -> dict[str, float]:
    """What `hub eval` prints, without storing it."""
    from hubtool.api import evaluate_expert

    return evaluate_expert(target, task, base=base if target is None else None, catalog=catalog, store=False,
                           limit=limit, max_new_tokens=max_new_tokens, batch_size=batch_size)


# ------------------------------------------------------------------------------- models


@dataclass
class Subject:
    """A model both tools score: hub by `target` (None: the base), lm-eval by `folder`."""

    label: str
    target: str | None
    folder: str


def train_expert(catalog: Any, work: Path) -> str:
    """A small sparse commonsenseqa expert in the throw-away catalog: enough to move the scores off the base's."""
    from hubtool.train import train  # `from hubtool import train` gives the module of that name

    result = train("commonsenseqa", method="sparse", max_steps=20, max_val=16, eval_limit=0, catalog=catalog,
                   out_dir=work / "run", quiet=True)
    return result.record.ref


def expert_folder(ref: str, catalog: Any, out: Path) -> str:
    """base + expert as a model folder in fp32: the weights evaluate_expert scores (it adds the delta into
    fp32 weights), where `hub compose` would round them to the base's dtype."""
    import torch

    from hubtool.apply import apply_expert
    from hubtool.models import load_base

    expert = catalog.load(catalog.get(ref).ref)
    model, tokenizer = load_base(expert.base_model, dtype=torch.float32)
    apply_expert(model, expert)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    gc.collect()
    return str(out)


# ------------------------------------------------------------------------------- comparing


@dataclass
class Row:
    model: str
    task: str
    metric: str  # "hub name / lm-eval name"
    hub: float
    lm: float
    explanation: str = ""

    @property
    def diff(self) -> float:
        return self.lm - self.hub

    @property
    def ok(self) -> bool:
        return abs(self.diff) <= TOLERANCE or bool(self.explanation)


def compare_mc(label: str, task: str, hub: dict[str, float], lm: dict[str, float], diag: dict[str, float],
               n: int) -> list[Row]:
    point = 100 / n  # one example, in points
    acc = Row(label, task, "accuracy / acc", hub["accuracy"], lm["acc"])
    norm = Row(label, task, "accuracy_norm / acc_norm", hub["accuracy_norm"], lm["acc_norm"])
    if abs(acc.diff) > TOLERANCE and abs(acc.diff) <= diag["near_ties"] * point + 1e-9:
        acc.explanation = f"{diag['near_ties']:.0f} near-ties (< {NEAR_TIE} nats) in lm-eval's option scores"
    if abs(norm.diff) > TOLERANCE:
        if abs(diag["acc_norm_without_shift"] - norm.hub) <= TOLERANCE:
            norm.explanation = (f"lm-eval adds log p(trailing whitespace) (up to {diag['shift_max']:.3g} nats) to "
                                f"every option; without it acc_norm is {diag['acc_norm_without_shift']:.1f}")
        elif abs(norm.diff) <= diag["near_ties_norm"] * point + 1e-9:
            norm.explanation = f"{diag['near_ties_norm']:.0f} near-ties in lm-eval's per-character option scores"
    return [acc, norm]


def compare_gen(label: str, task: str, hub: dict[str, float], lm: dict[str, float],
                diag: dict[str, float]) -> list[Row]:
    em = Row(label, task, "exact_match / exact_match", hub["exact_match"], lm["exact_match"])
    if abs(em.diff) > TOLERANCE and abs(diag["exact_match"] - em.hub) <= TOLERANCE:
        em.explanation = (f"normalisation: hub's exact_match on lm-eval's text is {diag['exact_match']:.1f} "
                          "(lm-eval removes whitespace, hub collapses it)")
    # lm-eval has no rougeL: hub's metric on lm-eval's generations, a check that the generated texts agree.
    rouge = Row(label, task, "rougeL / hub metric on lm-eval text", hub["rougeL"], diag["rougeL"])
    return [em, rouge]


def mc_note(label: str, task: str, diag: dict[str, float]) -> str:
    return (f"{label} / {task}: lm-eval's shared trailing-whitespace term up to {diag['shift_max']:.2g} nats "
            f"(acc_norm without it {diag['acc_norm_without_shift']:.1f}); near-ties {diag['near_ties']:.0f} "
            f"(acc), {diag['near_ties_norm']:.0f} (acc_norm)")


def gen_note(label: str, task: str, diag: dict[str, float]) -> str:
    return f"{label} / {task}: hub's exact_match on lm-eval's generations {diag['exact_match']:.1f}"


def check_lengths(lm: Any, rendered: Rendered, max_new_tokens: int) -> None:
    """hub cuts no prompt (max_prompt_tokens None, `hub eval`'s default); lm-eval would cut one that does not
    fit its max_length, and then the two would score different inputs."""
    longest = max(len(lm.tok_encode(c)) for c in rendered.contexts)
    if longest + max_new_tokens > lm.max_length:
        raise SystemExit(f"{rendered.name}: a prompt of {longest} tokens + {max_new_tokens} does not fit "
                         f"lm-eval's max_length {lm.max_length}; it would be cut there and not in hub")


def evaluate_subject(subject: Subject, rendered: list[Rendered], *, base: str, catalog: Any, limit: int,
                     max_new_tokens: int, batch_size: int, chat: bool) -> tuple[list[Row], list[str]]:
    """Both tools on every task for one model: the compared rows and a diagnostic note per task."""
    rows, notes = [], []
    lm = make_lm(subject.folder, batch_size=batch_size, chat=chat)
    try:
        for r in rendered:
            check_lengths(lm, r, max_new_tokens)
            t0 = time.perf_counter()
            lm_metrics, samples = run_lm_eval(lm, r)
            t1 = time.perf_counter()
            hub = hub_scores(subject.target, r.name, base=base, catalog=catalog, limit=limit,
                             max_new_tokens=max_new_tokens, batch_size=batch_size)
            t2 = time.perf_counter()
            if r.kind == "multiple_choice":
                diag = mc_diagnostics(lm, r, samples)
                rows += compare_mc(subject.label, r.name, hub, lm_metrics, diag, len(samples))
                notes.append(mc_note(subject.label, r.name, diag))
            else:
                diag = gen_diagnostics(r, samples)
                rows += compare_gen(subject.label, r.name, hub, lm_metrics, diag)
                notes.append(gen_note(subject.label, r.name, diag))
            print(f"  {subject.label} / {r.name}: lm-eval {t1 - t0:.0f} s, hub {t2 - t1:.0f} s", file=sys.stderr)
    finally:
        del lm
        gc.collect()
    return rows, notes


# ------------------------------------------------------------------------------- output


def table(rows: list[Row]) -> str:
    """A markdown table, one row per (model, task, metric), in points."""
    lines = ["| model | task | metric (hub / lm-eval) | hub | lm-eval | difference | |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        mark = "ok" if abs(r.diff) <= TOLERANCE else (f"explained: {r.explanation}" if r.explanation else "**DIFFERS**")
        lines.append(f"| {r.model} | {r.task} | {r.metric} | {r.hub:.1f} | {r.lm:.1f} | {r.diff:+.1f} | {mark} |")
    return "\n".join(lines)


def verdict(rows: list[Row]) -> str:
    bad = [r for r in rows if not r.ok]
    explained = [r for r in rows if abs(r.diff) > TOLERANCE and r.explanation]
    if bad:
        return f"DISAGREE: {len(bad)} of {len(rows)} scores differ by more than {TOLERANCE:g} point, unexplained"
    extra = f" ({len(explained)} explained differences)" if explained else ""
    return f"AGREE: all {len(rows)} scores within {TOLERANCE:g} point{extra}"


def git_commit() -> str:
    from hubtool.experiment.report import source_commit

    return source_commit()


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm-eval")


def section_text(rows: list[Row], notes: list[str], *, command: str, seconds: float, limit: int) -> str:
    return "\n".join([
        (f"`hub eval` against lm-evaluation-harness {lm_eval_version()} on the first {limit} test examples of each "
         f"task, the same rendered prompts (commit {git_commit()}, {seconds / 60:.1f} min wall time):"),
        "",
        "```console",
        f"$ {command}",
        "```",
        "",
        table(rows),
        "",
        verdict(rows),
        "",
        *[f"- {n}" for n in notes],
    ])


def write_section(path: Path, body: str, name: str = SECTION) -> None:
    """This script's block of the results page (hubtool.experiment.report.write_section: between its
    markers, replaced or appended, atomically)."""
    from hubtool.experiment.report import write_section as write

    write(path, name, body)


# ------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=50, help="test examples per task (the first N)")
    p.add_argument("--tasks", help="comma-separated; default commonsenseqa,piqa and squad (else nq_open)")
    p.add_argument("--base", default="smollm2-135m", help="base model when no --expert is given")
    p.add_argument("--expert", help="an expert NAME[@VERSION] in --catalog (default: train a small one)")
    p.add_argument("--catalog", help="catalog URL of --expert (its blobs in $HUB_HOME/blobs, as for hub)")
    p.add_argument("--base-only", action="store_true", help="score the base model only (a quick check)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, help="torch threads (default torch's; 1 is faster when the cores are busy)")
    p.add_argument("--write-section", type=Path, metavar="PATH",
                   help=f"replace the '{SECTION}' section of this markdown file with the results")
    args = p.parse_args(argv)
    if args.catalog and not args.expert:
        p.error("--catalog is the catalog of --expert; give --expert too")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from hubtool.data import load_task
    from hubtool.data.prompts import has_chat_template
    from hubtool.models import load_tokenizer, resolve_base
    from hubtool.registry import Catalog

    work = Path(tempfile.mkdtemp(prefix="lm-eval-agreement-"))
    try:
        # The default catalog is never opened: a private one for training and for scoring the base.
        catalog = Catalog(args.catalog) if args.catalog else Catalog(f"sqlite:///{work / 'registry.db'}",
                                                                    blobs=work / "blobs")
        ref = None if args.base_only else (args.expert or train_expert(catalog, work))
        base = catalog.load(catalog.get(ref).ref).base_model if ref else args.base
        subjects = [Subject(base, None, resolve_base(base)[0])]
        if ref:
            subjects.append(Subject(f"expert {catalog.get(ref).ref}", ref, expert_folder(ref, catalog, work / "expert")))
        tokenizer = load_tokenizer(base)
        from transformers import GenerationConfig

        # stop ids come from the folder's generation config, as the loaded model's would.
        gen_config = GenerationConfig.from_pretrained(subjects[0].folder)
        holder = type("ModelConfig", (), {"generation_config": gen_config})()
        tasks = args.tasks.split(",") if args.tasks else default_tasks()
        rendered = [render_task(t, load_task(t, catalog=catalog).test[: args.limit], holder, tokenizer,
                                work / "tasks", max_new_tokens=args.max_new_tokens) for t in tasks]
        rows: list[Row] = []
        notes: list[str] = []
        for subject in subjects:
            more_rows, more_notes = evaluate_subject(subject, rendered, base=base, catalog=catalog, limit=args.limit,
                                     max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                     chat=has_chat_template(tokenizer))
            rows += more_rows
            notes += more_notes
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - start
    command = " ".join([".venv/bin/python", "benchmarks/lm_eval_agreement.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    print(table(rows))
    print(verdict(rows))
    print("\n".join(notes))
    print(f"lm-eval {lm_eval_version()}, commit {git_commit()}, {seconds:.0f} s")
    if args.write_section:
        write_section(args.write_section, section_text(rows, notes, command=command, seconds=seconds, limit=args.limit))
        print(f"wrote section '{SECTION}' of {args.write_section}")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
