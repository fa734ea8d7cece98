"""The `reaseq` command line end to end on the synthetic dataset: resumable steps, artifacts, clear errors."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import reaseq.pipeline as pipeline_module
from reaseq.cli import app
from reaseq.config import load_config, with_overrides
from reaseq.errors import ConfigError
from reaseq.io import sha256_file
from reaseq.runs import RunDir

runner = CliRunner()

HELP_PURPOSE = {
    "prepare": "canonical parquet tables",
    "train": "train the configured model",
    "evaluate": "re-score the test split",
    "demo": "embedded default dataset",
    "export-recbole": "recbole pre-split benchmark files",
    "config-schema": "every config key",
}


def invoke(*args: str):  # noqa: ANN201
    return runner.invoke(app, list(args))


def flat(text: str) -> str:
    """Output with line wrapping and box drawing removed, lower-cased, for phrase matching."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split()).lower()


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text(encoding="utf-8"))


def card_checksums_match(run: Path) -> dict[str, bool]:
    card = json.loads((run / "data" / "card.json").read_text(encoding="utf-8"))
    return {name: sha256_file(run / "data" / name) == digest for name, digest in card["checksums"]["prepared"].items()}


@pytest.mark.parametrize("command", list(HELP_PURPOSE))
def test_help(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert HELP_PURPOSE[command] in flat(result.output)


def test_config_schema_lists_keys() -> None:
    result = invoke("config-schema")
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert {"dataset", "protocol", "model", "train", "evaluate"} <= set(schema["properties"])


def test_prepare_is_resumable(config_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="reaseq")
    run = tmp_path / "run"
    first = invoke("prepare", "-c", str(config_file))
    assert first.exit_code == 0, first.output
    assert "card.md" in first.output
    files = ["interactions.parquet", "items.parquet", "users.parquet", "vocab.json", "ctr_samples.parquet", "card.json", "card.md"]
    assert all((run / "data" / f).is_file() for f in files)
    before = (run / "manifest.json").read_bytes()
    mtimes = {f: (run / "data" / f).stat().st_mtime_ns for f in files}
    record = manifest(run)["steps"]["prepare"]
    assert record["metrics"] == {"users": 40, "items": 60, "interactions": 1094}

    caplog.clear()
    second = invoke("prepare", "-c", str(config_file))
    assert second.exit_code == 0, second.output
    assert (run / "manifest.json").read_bytes() == before
    assert {f: (run / "data" / f).stat().st_mtime_ns for f in files} == mtimes
    assert "up to date" in caplog.text

    forced = invoke("prepare", "-c", str(config_file), "--force")
    assert forced.exit_code == 0, forced.output
    redone = manifest(run)["steps"]["prepare"]
    assert redone["started"] != record["started"] and redone["key"] == record["key"]
    assert all(card_checksums_match(run).values())

    # A changed protocol setting is a different step key: prepare runs again without --force.
    changed = invoke("prepare", "-c", str(config_file), "--set", "protocol.ctr.min_hist=3")
    assert changed.exit_code == 0, changed.output
    assert manifest(run)["steps"]["prepare"]["key"] != record["key"]


def test_train_evaluate_and_resume(config_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="reaseq")
    run = tmp_path / "run"
    result = invoke("train", "-c", str(config_file))
    assert result.exit_code == 0, result.output
    assert "test auc:" in result.output and "report:" in result.output

    # The resolved config: every section with its defaults filled in, loadable as it is.
    resolved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert resolved["model"]["embedding_dim"] == 8 and resolved["train"]["patience"] == 2
    assert resolved["protocol"]["ctr"]["label_threshold"] == 4.0 and "evaluate" in resolved
    assert load_config(run / "config.yaml") == load_config(config_file)

    steps = manifest(run)["steps"]
    assert set(steps) == {"prepare", "train_seed0"}
    for record in steps.values():
        assert re.fullmatch(r"[0-9a-f]{64}", record["key"])
        assert record["wall_s"] >= 0
        assert {"reaseq", "torch", "numpy", "polars", "python"} <= set(record["versions"])
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["model"] == "din" and metrics["seeds"] == [0]
    assert 0.0 <= metrics["test"]["auc"]["mean"] <= 1.0 and metrics["test"]["logloss"]["mean"] > 0
    assert steps["train_seed0"]["metrics"]["auc"] == metrics["test"]["auc"]["mean"]
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "auc" in report.lower() and (run / "report.html").read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")
    model_pt = run / "train" / "seed0" / "model.pt"
    assert model_pt.is_file()

    # Rerunning skips the finished seed (and prepare).
    caplog.clear()
    started = steps["train_seed0"]["started"]
    mtime = model_pt.stat().st_mtime_ns
    again = invoke("train", "-c", str(config_file))
    assert again.exit_code == 0, again.output
    assert manifest(run)["steps"]["train_seed0"]["started"] == started
    assert model_pt.stat().st_mtime_ns == mtime
    assert "train_seed0: up to date, skipped" in caplog.text
    assert json.loads((run / "metrics.json").read_text(encoding="utf-8"))["test"] == metrics["test"]

    # evaluate re-scores the test split from the checkpoint and reproduces train's numbers.
    evaluated = invoke("evaluate", "-c", str(config_file))
    assert evaluated.exit_code == 0, evaluated.output
    evaluation = json.loads((run / "evaluation.json").read_text(encoding="utf-8"))
    assert set(evaluation["test"]) == set(metrics["test"])
    for name, value in metrics["test"].items():
        assert evaluation["test"][name]["mean"] == pytest.approx(value["mean"], abs=1e-6), name
    assert (run / "evaluation" / "report.md").is_file()


def test_full_ranker_through_the_cli_gbr_train_evaluate(config_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "full"
    tiny_gbr = [f"--set=gbr.{k}" for k in ("dim=8", "layers=1", "heads=2", "max_len=12", "batch_size=32", "epochs=2", "k=4", "steps=2", "init_from_knowledge=false")]
    full = ["--run-dir", str(run), "--set", "model.inferred=true", *tiny_gbr]
    trained = invoke("train", "-c", str(config_file), *full)  # without the gbr step first: a clear error, not a crash
    assert trained.exit_code == 2 and "reaseq gbr" in trained.output
    assert invoke("gbr", "-c", str(config_file), *full).exit_code == 0
    trained = invoke("train", "-c", str(config_file), *full)
    assert trained.exit_code == 0, trained.output
    steps = json.loads((run / "manifest.json").read_text(encoding="utf-8"))["steps"]
    assert "inferred.parquet" in steps["train_seed0"]["inputs"]  # the table's content keys the train step
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    evaluated = invoke("evaluate", "-c", str(config_file), *full)
    assert evaluated.exit_code == 0, evaluated.output
    evaluation = json.loads((run / "evaluation.json").read_text(encoding="utf-8"))
    assert evaluation["test"]["auc"]["mean"] == pytest.approx(metrics["test"]["auc"]["mean"], abs=1e-6)


def test_unknown_override_key_exits_2(config_file: Path) -> None:
    result = invoke("train", "-c", str(config_file), "--set", "train.lrr=1")
    assert result.exit_code == 2
    assert "train.lrr" in result.output and "Fix:" in result.output and "config-schema" in result.output
    assert "Traceback" not in result.output


def test_overrides_on_a_resolved_config(config_file: Path) -> None:
    cfg = load_config(config_file)
    moved = with_overrides(cfg, ["train.device=cuda", "train.num_threads=3"])
    assert (moved.train.device, moved.train.num_threads) == ("cuda", 3)
    assert moved.model == cfg.model and cfg.train.device == "cpu"  # the rest unchanged, the original untouched
    with pytest.raises(ConfigError, match="train.lrr"):
        with_overrides(cfg, ["train.lrr=1"])


def test_misspelt_yaml_key_exits_2(config_file: Path, tmp_path: Path) -> None:
    tree = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    tree["model"]["embeding_dim"] = tree["model"].pop("embedding_dim")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tree), encoding="utf-8")
    result = invoke("prepare", "-c", str(bad))
    assert result.exit_code == 2
    assert "model.embeding_dim" in result.output and str(bad) in result.output and "Fix:" in result.output
    assert not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.parametrize("what", ["folder", "inter"])
def test_missing_dataset_file_exits_2(config_file: Path, tmp_path: Path, what: str) -> None:
    if what == "folder":
        missing = tmp_path / "nowhere"
        result = invoke("prepare", "-c", str(config_file), "--set", f"dataset.path={missing}")
    else:
        missing = tmp_path / "synth" / "synth.inter"
        missing.unlink()
        result = invoke("prepare", "-c", str(config_file))
    assert result.exit_code == 2
    assert str(missing) in result.output
    assert "Fix:" in result.output and "Traceback" not in result.output


def test_failed_run_leaves_earlier_artifacts_intact(config_file: Path, tmp_path: Path, synthetic) -> None:
    run = tmp_path / "run"
    assert invoke("train", "-c", str(config_file)).exit_code == 0
    inter = synthetic.folder / "synth.inter"
    good = inter.read_text(encoding="utf-8")
    before = {p: p.read_bytes() for p in (run / "data").iterdir()}
    manifest_before = (run / "manifest.json").read_bytes()

    # The dataset now names an item the items file lacks: prepare must refuse, naming the file.
    inter.write_text(good + "user1\tno-such-movie\t4\t999999999\n", encoding="utf-8")
    failed = invoke("train", "-c", str(config_file), "--force")
    assert failed.exit_code == 2
    assert str(inter) in failed.output and "item_id" in failed.output
    assert {p: p.read_bytes() for p in (run / "data").iterdir()} == before
    assert (run / "manifest.json").read_bytes() == manifest_before
    assert all(card_checksums_match(run).values())

    # With the file restored, everything is up to date again and evaluate still works.
    inter.write_text(good, encoding="utf-8")
    assert invoke("prepare", "-c", str(config_file)).exit_code == 0
    assert (run / "manifest.json").read_bytes() == manifest_before
    assert invoke("evaluate", "-c", str(config_file)).exit_code == 0


def test_train_reruns_when_a_protocol_setting_it_uses_changes(config_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert invoke("train", "-c", str(config_file)).exit_code == 0
    started = manifest(run)["steps"]["train_seed0"]["started"]
    # The ranker reads histories of protocol.ctr.max_len events: a different length is a different model.
    assert invoke("train", "-c", str(config_file), "--set", "protocol.ctr.max_len=3").exit_code == 0
    assert manifest(run)["steps"]["train_seed0"]["started"] != started


def test_prepare_failing_after_tables_are_written_leaves_data_consistent(config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_root = tmp_path / "run"
    pipeline_module.prepare(RunDir(run_root, load_config(config_file)))
    assert all(card_checksums_match(run_root).values())

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # e.g. Ctrl-C while the samples of a large dataset are built

    monkeypatch.setattr(pipeline_module, "build_ctr_samples", crash)
    with pytest.raises(KeyboardInterrupt):
        pipeline_module.prepare(RunDir(run_root, load_config(config_file, ["dataset.min_user_interactions=5"])))
    monkeypatch.undo()
    # Either the old data is intact, or the step is not considered done; here both must hold for the old config.
    pipeline_module.prepare(RunDir(run_root, load_config(config_file)))
    assert all(card_checksums_match(run_root).values())
    assert json.loads((run_root / "data" / "vocab.json").read_text(encoding="utf-8"))["n_users"] == 40


@pytest.mark.slow
def test_demo_quick_end_to_end(embedded_wheel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the demo config's data cache is relative to the working directory
    result = invoke("demo", "--quick", "--run-dir", str(tmp_path / "demo"))
    assert result.exit_code == 0, result.output
    report = tmp_path / "demo" / "demo_report.md"
    assert report.is_file() and str(report) in result.output
    rows = [line.split("|")[1:-1] for line in report.read_text(encoding="utf-8").splitlines() if line.startswith("| ")]
    table = {(r[0].strip(), r[1].strip(), r[2].strip()): r[3].strip() for r in rows[1:]}
    full = "reaseq (din + rer + gbr)"
    for protocol, model, metric in [("ctr", "din", "auc"), ("ctr", "din", "logloss"), ("topk", "sasrec", "ndcg@10"), ("topk", "sasrec", "hr@10"), ("ctr", "popularity", "auc"), ("ctr", full, "auc")]:
        value = table[(protocol, model, metric)]
        mean = float(value.split("±")[0])
        assert 0.0 <= mean <= (10.0 if metric == "logloss" else 1.0), value
    assert 0.5 < float(table[("ctr", "din", "auc")].split("±")[0])
    # Both paths ran: RER's tables and GBR's table fed the full ranker.
    assert "GBR: 943 users x 20 inferred items (validity 1.00" in report.read_text(encoding="utf-8")
    assert (tmp_path / "demo" / "ctr-reaseq" / "embed" / "knowledge.npz").is_file() and (tmp_path / "demo" / "ctr-reaseq" / "gbr" / "inferred.parquet").is_file()
    card = json.loads((tmp_path / "demo" / "ctr-din" / "data" / "card.json").read_text(encoding="utf-8"))
    assert card["counts"]["users"] == 943
