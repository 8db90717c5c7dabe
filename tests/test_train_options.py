"""`hub train`'s settings declared once (issue 15 §5): the fields of AdapterConfig and TrainConfig carry
each setting's default, help, flag and rule; the CLI's options are generated from them, train() takes the
same objects and checks them by the same rules, docs/training.md's table is generated from them, and the
experiment's cache keys did not move when its jobs switched to the new form."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer

from hubtool.errors import HubError
from hubtool.sparse.config import AdapterConfig, TrainConfig, checked

ROOT = Path(__file__).resolve().parents[1]


def train_command():
    from hubtool.cli import app

    group = typer.main.get_command(app)
    return group.commands["train"]


def flagged(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("flag")]


# --- the experiment's cache keys ------------------------------------------------------------------------

# Computed at the commit before train() took configs (fd2ba8a): a job's name is a digest of its settings,
# so a change here would retrain every cached expert of every experiment.
PINNED = {
    ("smoke", "sparse"): "boolq-sparse-s0-c70bd4c1",
    ("smoke", "block-sparse"): "boolq-block-sparse-s0-dec7d814",
    ("smoke", "lora"): "boolq-lora-s0-a7cdd1aa",
    ("smoke", "full"): "boolq-full-s0-9166075c",
    ("smoke", "sparse-mlp"): "boolq-sparse-mlp-s0-76ed1718",
    ("quick", "sparse"): "boolq-sparse-s0-f7119c02",
    ("quick", "block-sparse"): "boolq-block-sparse-s0-6ee0a6d8",
    ("quick", "lora"): "boolq-lora-s0-cb132bf1",
    ("quick", "full"): "boolq-full-s0-a00f7f6c",
    ("quick", "sparse-mlp"): "boolq-sparse-mlp-s0-86ac073e",
}


def planner_for(preset_name: str):
    from hubtool.experiment.jobs import Planner, Task
    from hubtool.experiment.presets import get_preset

    example = SimpleNamespace(input="what is two plus two", output="four", options=None)
    data = SimpleNamespace(train=[example], test=[example], category="qa")
    task = Task("boolq", "boolq", data, "ab" * 32)
    planner = Planner(get_preset(preset_name), [task], base="smollm2-135m",
                      base_key={"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "r1"},
                      catalog_url="sqlite:///x.db", catalog=None)  # fmt: skip
    return planner, task


@pytest.mark.parametrize(("preset", "label"), sorted(PINNED))
def test_job_keys_of_fixed_preset_jobs_are_unchanged(preset: str, label: str) -> None:
    from hubtool.experiment.presets import KINDS

    planner, task = planner_for(preset)
    assert planner.train_job(task, KINDS[label], 0, 1e-4).key == PINNED[(preset, label)]


@pytest.mark.parametrize("label", ["sparse", "lora", "full", "block-sparse", "sparse-mlp"])
def test_a_jobs_command_line_means_the_configs_its_library_call_passes(label: str) -> None:
    """The job's argv, parsed by the real `hub train` command, builds exactly the AdapterConfig and
    TrainConfig the runner hands train(): the plan's command lines fill the same cache."""
    from hubtool.experiment.presets import KINDS

    planner, task = planner_for("quick")
    job = planner.train_job(task, KINDS[label], 3, 2e-4)
    assert set(job.settings) == {"base", "adapter", "training"}
    cmd = train_command()
    params = cmd.make_context("train", list(job.argv[2:])).params
    assert params["base"] == job.settings["base"] and params["method"] == KINDS[label].method
    adapter = checked(AdapterConfig, {f.name: params[f.name] for f in flagged(AdapterConfig)})
    training = checked(TrainConfig, {f.name: params[f.name] for f in flagged(TrainConfig)})
    # --method sets the kind (train() resolves the old name); the adapter's seed is the run's seed
    assert dataclasses.replace(adapter, kind=params["method"], seed=training.seed) == job.settings["adapter"]
    assert training == job.settings["training"] and training.eval_limit == 0 and training.seed == 3


# --- the generated options ------------------------------------------------------------------------------


def test_every_flagged_field_is_one_option_with_its_default_and_help() -> None:
    cmd = train_command()
    options = {name: p for p in cmd.params for name in p.opts}
    for cls in (AdapterConfig, TrainConfig):
        for f in flagged(cls):
            opt = options[f.metadata["flag"]]
            assert opt.name == f.name and opt.default == f.default and opt.help == f.metadata["help"], f.name
            assert not opt.hidden
    # settings without a flag are the library's alone; --method is the hidden old name of --kind
    assert "max_grad_norm" not in {p.name for p in cmd.params}
    assert options["--method"].hidden and options["--seed"].name == "seed"
    # the options declared by hand are still there, with their aliases
    for flag in ("--task", "--data", "--category", "--base", "--name", "--resume", "--quiet", "-q", "--avoid",
                 "--avoid-catalog", "--avoid-beta", "--trust-remote-code", "--catalog"):
        assert flag in options, flag
    flags = [f.metadata["flag"] for cls in (AdapterConfig, TrainConfig) for f in flagged(cls)]
    assert len(flags) == len(set(flags)) == 20


@pytest.mark.parametrize(
    ("flag", "text", "field", "value"),
    [
        ("--batch-size", "0", "batch_size", 0),
        ("--max-length", "1", "max_length", 1),
        ("--max-val", "-1", "max_val", -1),
        ("--lr", "2", "lr", 2.0),
        ("--epochs", "-1", "epochs", -1.0),
        ("--seed", "-1", "seed", -1),
        ("--keep-ratio", "1.5", "keep_ratio", 1.5),
        ("--mask-steps", "0", "mask_steps", 0),
        ("--alpha", "0", "alpha", 0.0),
    ],
)
def test_the_cli_and_the_library_refuse_with_the_same_rule(flag: str, text: str, field: str, value: object) -> None:
    cmd = train_command()
    with pytest.raises(typer.BadParameter) as cli:
        cmd.make_context("train", ["--task", "t", flag, text])
    cls = TrainConfig if field in {f.name for f in dataclasses.fields(TrainConfig)} else AdapterConfig
    with pytest.raises(HubError) as lib:
        checked(cls, {field: value})
    rule = str(lib.value)
    assert rule.startswith(f"{flag} ") and cli.value.message == rule[len(flag) + 1:], (cli.value.message, rule)
    if cls is TrainConfig:  # a TrainConfig is checked when it is made
        with pytest.raises(HubError, match=re.escape(rule)):
            TrainConfig(**{field: value})


def test_text_settings_are_refused_in_one_line_naming_the_option(hub_home: Path) -> None:
    """--kind, --targets, --mask-score: checked when the config is built, before anything loads (the base
    does not exist); exit 1 with one line."""
    cases = {("--kind", "dense"): "--kind 'dense': expected one of", ("--targets", " "): "--targets ' '",
             ("--mask-score", "best"): "--mask-score 'best': expected one of sensitivity"}  # fmt: skip
    for args, words in cases.items():
        result = subprocess.run([sys.executable, "-m", "hubtool", "train", "--task", "t", "--base",
                                 str(hub_home / "nowhere"), *args], capture_output=True, text=True, check=False)  # fmt: skip
        assert result.returncode == 1 and words in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# --- train() takes the configs --------------------------------------------------------------------------


def test_train_takes_configs_and_checks_them_before_any_work(tmp_path: Path, hub_home: Path) -> None:
    import hubtool.train as train_module
    from hubtool.train import train

    nowhere = str(tmp_path / "no-base")
    with pytest.raises(HubError, match="^--keep-ratio 0: expected a number in"):  # a config made by hand
        train("t", adapter=_mutated(AdapterConfig(), keep_ratio=0), base=nowhere)
    with pytest.raises(HubError, match="^--max-steps 0"):  # a field by name, as before
        train("t", max_steps=0, base=nowhere)
    with pytest.raises(HubError, match="^--kind 'dense'"):
        train("t", kind="dense", base=nowhere)
    with pytest.raises(HubError, match="--kind lora and --method full"):
        train("t", adapter=AdapterConfig(kind="lora"), method="full", base=nowhere)
    with pytest.raises(HubError, match="one seed"):
        train("t", adapter=AdapterConfig(seed=2), training=TrainConfig(seed=3), base=nowhere)
    with pytest.raises(TypeError, match="unexpected keyword argument 'keep_ratios'"):
        train("t", keep_ratios=0.1, base=nowhere)
    with pytest.raises(TypeError, match="AdapterConfig"):
        train("t", adapter={"kind": "lora"}, base=nowhere)
    assert list((hub_home).glob("runs/*")) == []
    assert train_module.TrainConfig is TrainConfig and train_module.AdapterConfig is AdapterConfig


def _mutated(config: AdapterConfig, **values: object) -> AdapterConfig:
    """A config changed after it was made (its own __post_init__ does not run again): train() checks it."""
    for key, value in values.items():
        setattr(config, key, value)
    return config


def test_what_an_expert_stores_as_its_adapter_config_is_unchanged() -> None:
    """The adapter config written into every expert (and compared on resume) keeps its keys; an old
    stored config, with "method", still reads back."""
    assert list(AdapterConfig().to_dict()) == ["kind", "targets", "keep_ratio", "block_size", "mask_score",
                                               "mask_interval", "mask_steps", "rank", "alpha", "seed", "extra"]
    old = {"method": "lora", "targets": "qkv", "keep_ratio": 0.05, "block_size": 16, "mask_score": "sensitivity",
           "mask_interval": 6, "mask_steps": None, "rank": 4, "alpha": 16.0, "seed": 0, "extra": {}}
    assert AdapterConfig.from_dict(old) == AdapterConfig(kind="lora")


# --- docs -----------------------------------------------------------------------------------------------


def test_the_docs_options_table_is_generated_from_the_fields() -> None:
    from hubtool.cli.train import options_table

    text = (ROOT / "docs" / "training.md").read_text()
    found = re.search(r"<!-- options:[^\n]*-->\n(.*?)<!-- /options -->", text, re.DOTALL)
    assert found, "docs/training.md lost its options table"
    assert found.group(1) == options_table(), "run: python -c 'from hubtool.cli.train import options_table; print(options_table())'"
    for cls in (AdapterConfig, TrainConfig):
        for f in flagged(cls):
            assert f"`{f.metadata['flag']}`" in found.group(1)
