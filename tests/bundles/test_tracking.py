# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Experiment tracking: ``python -m monai.bundle run --config_file configs/train.yaml --tracking mlflow``, run from the
bundle folder as the bundle README says, records the run in a local store that the MLflow client can read back.

For every bundle in ``bundles/``: one reduced epoch on the synthetic data of its checks file with MONAI's default
tracking settings (MONAI 1.6: SQLite store ``<output_dir>/mlruns.db``, artifacts in ``<output_dir>/mlruns``), then the
store is opened with ``mlflow.MlflowClient`` and the run must hold the real training loss per iteration, the
validation metrics the bundle defines (finite; Dice and AUC in [0, 1]), the trainer parameters and the executed
config. Needs the ``tracking`` extra (mlflow-skinny + SQLAlchemy + Alembic), which the ``test`` extra includes.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import (
    bundle_params,
    cli_overrides,
    copy_bundle,
    make_synthetic_data,
    reduced_train_overrides,
    subprocess_env,
)

EXPERIMENT = "monai_experiment"  # experiment_name of MONAI's `--tracking mlflow` settings
TRAIN_LOSS = "train_loss"  # tag_name of MONAI's trainer MLFlowHandler (logged every iteration)


def _sqlite_uri(path: Path) -> str:
    return "sqlite:///" + quote(path.resolve().as_posix(), safe="/:")


def _train_setup(config: Path, bundle_root: Path) -> tuple[Path, dict[str, tuple[bool, bool]]]:
    """The resolved ``output_dir`` (MONAI's default ``<bundle_root>/eval`` if the config has none) and the metrics the
    run must log, ``{name: (is_validation, is_bounded)}`` (a Dice or an AUC, which lie in [0, 1]), from
    ``validate#key_metric``, ``validate#additional_metrics`` and ``train#key_metric``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config))
    parser["bundle_root"] = str(bundle_root)
    output_dir = Path(parser.get_parsed_content("output_dir")) if "output_dir" in parser else bundle_root / "eval"
    metrics = {}
    for section in ("validate#key_metric", "validate#additional_metrics", "train#key_metric"):
        for name, item in (parser.get(section) or {}).items():
            target = str(item.get("_target_", "")) if isinstance(item, dict) else ""
            bounded = target.endswith(("MeanDice", "ROCAUC")) or "dice" in name.lower() or "auc" in name.lower()
            metrics[name] = (section.startswith("validate"), bounded)
    return output_dir, metrics


def _finite(values: list[float]) -> bool:
    return bool(values) and all(math.isfinite(v) for v in values)


@pytest.mark.slow
@pytest.mark.parametrize("bundle", bundle_params())
def test_tracking_mlflow_records_local_run(bundle: Path, tmp_path: Path):
    work = copy_bundle(bundle, tmp_path)
    dataset = make_synthetic_data(bundle, tmp_path / "dataset")
    config = next((work / "configs").glob("train.*"))
    output_dir, metrics = _train_setup(config, work)
    assert any(is_val for is_val, _ in metrics.values()), f"no validation metric in {config.name}"

    # the README command from the bundle folder (default bundle_root "."), one reduced epoch, one validation
    overrides = {**reduced_train_overrides(bundle), "dataset_dir": str(dataset), "epochs": 1, "val_interval": 1}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"configs/{config.name}",
           "--tracking", "mlflow", *cli_overrides(overrides)]
    env = {k: v for k, v in subprocess_env().items() if not k.startswith("MLFLOW_")}  # no redirect from outside
    result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    log = result.stdout + result.stderr
    # the root cause (e.g. "unsupported URI 'sqlite:///...'" without SQLAlchemy) sits mid-way in a chained traceback
    errors = "\n".join(line for line in log.splitlines() if "Error:" in line or "Exception:" in line)
    assert result.returncode == 0, f"{errors}\n...\n{log[-4000:]}"

    db = output_dir / "mlruns.db"
    assert db.is_file(), f"no MLflow store at {db}:\n{log[-3000:]}"
    assert not (work / "mlruns").exists() and not (work / "mlruns.db").exists(), "tracking wrote outside output_dir"

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=_sqlite_uri(db))
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None, [e.name for e in client.search_experiments()]
    assert experiment.artifact_location.rstrip("/").endswith(f"{output_dir.name}/mlruns")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, "trainer and validator must log into one run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    run_id = run.info.run_id

    # training loss: one finite, non-negative value per iteration, steps 1..epoch_length (one epoch)
    loss = client.get_metric_history(run_id, TRAIN_LOSS)
    assert [m.step for m in loss] == list(range(1, len(loss) + 1)), [m.step for m in loss]
    assert _finite([m.value for m in loss]) and all(m.value >= 0 for m in loss), [m.value for m in loss]
    assert run.data.params.get("max_epochs") == "1", run.data.params
    assert run.data.params.get("epoch_length") == str(len(loss)), run.data.params

    # validation (and training key) metrics the bundle defines: finite, Dice and AUC in [0, 1]; one validation ran
    missing = sorted(set(metrics) - set(run.data.metrics))
    assert not missing, f"metrics not logged: {missing}; logged: {sorted(run.data.metrics)}"
    for name, (is_val, bounded) in metrics.items():
        values = [m.value for m in client.get_metric_history(run_id, name)]
        assert _finite(values), (name, values)
        if is_val:
            assert len(values) == 1, (name, values)
        if bounded:
            assert all(0.0 <= v <= 1.0 for v in values), (name, values)

    # the executed config is kept as a run artifact under <output_dir>/mlruns
    artifacts = [a.path for a in client.list_artifacts(run_id)]
    assert any(a.startswith("config_") and a.endswith(".json") for a in artifacts), artifacts
    assert any(p.name.startswith("config_") for p in (output_dir / "mlruns").rglob("*.json"))
