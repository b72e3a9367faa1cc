# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
End-to-end CPU tests of the bundle ``bundles/segmamba_brats`` on a few tiny synthetic BraTS-layout cases: training
through ``python -m monai.bundle run training``, evaluation, inference, fine-tuning, resuming, and bad data; plus unit
tests of the helpers in ``shared_networks.bundle`` against hand-computed references.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.engines import SupervisedTrainer

from shared_networks.bundle import AtomicCheckpointSaver, GradientClipping
from shared_networks.data import BRATS_REGIONS, brats_case_name_formatter, generate_brats_phantoms
from shared_networks.io import save_atomically
from shared_networks.nets import SegMamba

BUNDLE = Path(__file__).resolve().parents[3] / "bundles" / "segmamba_brats"
CONFIGS = BUNDLE / "configs"
REDUCED_NETWORK = {"feature_sizes": [8, 16, 32, 64], "hidden_size": 64}
# the reduced configuration of the README/demo, as command-line overrides (no copy of the configs)
REDUCED_CLI = [
    "--patch_size", "[32,32,32]",
    "--network_def#feature_sizes", "[8,16,32,64]",
    "--network_def#hidden_size", "64",
    "--batch_size", "1",
    "--num_workers", "0",
    "--sw_batch_size", "1",
]
REDUCED = {
    "patch_size": [32, 32, 32],
    "network_def#feature_sizes": REDUCED_NETWORK["feature_sizes"],
    "network_def#hidden_size": REDUCED_NETWORK["hidden_size"],
    "batch_size": 1,
    "num_workers": 0,
    "sw_batch_size": 1,
}
NUM_CASES = 6  # split 3 / 1 / 2 (training / validation / testing)


def _bundle_cli(run_id: str, config_files: list[str], overrides: list[str]) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run <run_id> --config_file ...`` with the bundle folder as working directory."""
    config = config_files[0] if len(config_files) == 1 else "[" + ",".join(f"'{c}'" for c in config_files) + "]"
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config, *overrides]
    return subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=600)


def _workflow(workflow_type: str, config_files: list[str], **overrides) -> ConfigWorkflow:
    """The Model Zoo ``check_workflow`` pattern: initialise, check the required/expected ids, run, finalise."""
    workflow = ConfigWorkflow(
        workflow_type=workflow_type,
        config_file=[str(CONFIGS / name) for name in config_files],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        **overrides,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    return workflow


def _reduced_segmamba() -> SegMamba:
    return SegMamba(spatial_dims=3, in_channels=4, out_channels=4, mode="release", **REDUCED_NETWORK)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats")
    generate_brats_phantoms(root, num_cases=NUM_CASES, shape=(32, 32, 32), seed=3)
    return root


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory, dataset_dir) -> Path:
    """A bundle_root after one epoch of training run through the bundle CLI (`run training`)."""
    root = tmp_path_factory.mktemp("trained")
    result = _bundle_cli(
        "training",
        ["configs/train.yaml"],
        ["--bundle_root", str(root), "--dataset_dir", str(dataset_dir), *REDUCED_CLI,
         "--epochs", "1", "--iterations_per_epoch", "2", "--val_interval", "1"],
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return root


def test_training_writes_strict_state_dict_and_resumable_checkpoint(trained_root):
    datalist = json.loads((trained_root / "datalist.json").read_text())
    assert [len(datalist[k]) for k in ("training", "validation", "testing")] == [3, 1, 2]

    state = torch.load(trained_root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    network = _reduced_segmamba()
    network.load_state_dict(state, strict=True)

    last = torch.load(trained_root / "models" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert {"network", "optimizer", "lr_scheduler", "trainer", "validator", "key_metric_saver"} <= set(last)
    assert last["trainer"]["iteration"] == 2 and last["trainer"]["epoch_length"] == 2
    # poly schedule stepped once per iteration: lr = 1e-2 * (1 - 2 / (1 * 2)) ** 0.9 = 0 after the last step
    assert last["lr_scheduler"]["last_epoch"] == 2
    assert last["lr_scheduler"]["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)
    # the saved best model is the network state at the (only) validation
    for key, value in state.items():
        torch.testing.assert_close(last["network"][key], value)
    assert 0.0 <= last["validator"]["best_metric"] <= 1.0 and last["validator"]["best_metric_epoch"] == 1
    assert list(trained_root.glob("eval/events.out.tfevents.*")), "TensorBoard events were not written"


def test_evaluate_writes_metrics_in_range(trained_root, dataset_dir, tmp_path):
    output_dir = tmp_path / "eval"
    _workflow(
        "train",
        ["train.yaml", "evaluate.yaml"],
        bundle_root=str(trained_root),
        dataset_dir=str(dataset_dir),
        output_dir=str(output_dir),
        **REDUCED,
    )
    summary = json.loads((output_dir / "metrics_summary.json").read_text())
    assert summary["num_cases"] == 2
    metrics = summary["metrics"]
    assert set(metrics["val_dice"]) == {"TC", "WT", "ET"}
    dice = [v for v in metrics["val_dice"].values() if v is not None]
    assert dice and all(0.0 <= v <= 1.0 for v in dice)
    assert 0.0 <= metrics["val_mean_dice"] <= 1.0
    assert all(v is None or v >= 0.0 for v in metrics["val_hd95"].values())

    with open(output_dir / "val_dice_raw.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    testing = json.loads((trained_root / "datalist.json").read_text())["testing"]
    assert sorted(row["filename"] for row in rows) == sorted(case["image"][0] for case in testing)
    for row in rows:
        values = [float(row[k]) for k in ("class0", "class1", "class2") if row[k] != "nan"]
        assert all(0.0 <= v <= 1.0 for v in values)
    # the summary mean is the mean of the per-case values
    wt = [float(row["class1"]) for row in rows if row["class1"] != "nan"]
    assert metrics["val_dice"]["WT"] == pytest.approx(np.mean(wt), abs=1e-5)


def test_region_absent_everywhere_is_nan_not_a_perfect_score(trained_root, dataset_dir, tmp_path):
    """No ET in any label and none predicted: Dice and HD95 of ET are undefined, so null / nan, where MONAI's mean
    over only NaN gives 0.0 (an HD95 of 0 mm reads as perfect)."""
    dataset = tmp_path / "no_et"
    shutil.copytree(dataset_dir, dataset)
    for label_file in dataset.glob("*/*-seg.nii.gz"):
        label = nib.load(label_file)
        values = np.asarray(label.dataobj).copy()
        values[values == 3] = 1
        nib.save(nib.Nifti1Image(values, label.affine, label.header), str(label_file))
    root = tmp_path / "root"
    (root / "models").mkdir(parents=True)
    state = torch.load(trained_root / "models" / "model.pt", map_location="cpu", weights_only=True)
    state["out.conv.conv.bias"][3] = -1e4  # the ET logit never wins the argmax
    torch.save(state, root / "models" / "model.pt")
    output_dir = tmp_path / "eval"
    _workflow("train", ["train.yaml", "evaluate.yaml"], bundle_root=str(root), dataset_dir=str(dataset),
              output_dir=str(output_dir), **REDUCED)
    metrics = json.loads((output_dir / "metrics_summary.json").read_text())["metrics"]
    assert metrics["val_dice"]["ET"] is None and metrics["val_hd95"]["ET"] is None
    assert metrics["val_hd95"]["WT"] is not None and metrics["val_hd95"]["WT"] >= 0.0
    rows = dict(line.split("\t") for line in (output_dir / "metrics.csv").read_text().splitlines())
    assert rows["val_hd95_ET"] == "nan" and rows["val_dice_ET"] == "nan"
    assert float(rows["val_dice_WT"]) == pytest.approx(metrics["val_dice"]["WT"], rel=1e-5)
    assert "tensor(" not in (output_dir / "metrics.csv").read_text()


def test_inference_writes_label_maps_on_the_input_grid(trained_root, dataset_dir, tmp_path):
    input_dir = tmp_path / "cases"
    cases = sorted(p.name for p in dataset_dir.iterdir())[:2]
    for case in cases:  # copy the four modalities only: inference needs no seg file
        (input_dir / case).mkdir(parents=True)
        for path in (dataset_dir / case).glob("*.nii.gz"):
            if not path.name.endswith("-seg.nii.gz"):
                shutil.copy(path, input_dir / case / path.name)
    output_dir = tmp_path / "predictions"
    _workflow(
        "infer",
        ["inference.yaml"],
        bundle_root=str(trained_root),
        dataset_dir=str(input_dir),
        output_dir=str(output_dir),
        patch_size=[32, 32, 32],
        sw_batch_size=1,
        num_workers=0,
        **{f"network_def#{k}": v for k, v in REDUCED_NETWORK.items()},
    )
    for case in cases:
        prediction = nib.load(output_dir / case / f"{case}_seg.nii.gz")
        reference = nib.load(input_dir / case / f"{case}-t2w.nii.gz")
        assert prediction.shape == reference.shape
        np.testing.assert_allclose(prediction.affine, reference.affine, atol=1e-5)
        assert prediction.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(prediction.dataobj)).tolist()) <= {0, 1, 2, 3}


def test_missing_modality_fails_before_training_naming_case_and_file(dataset_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(dataset_dir, broken)
    case = sorted(p.name for p in broken.iterdir())[1]
    (broken / case / f"{case}-t1c.nii.gz").unlink()
    root = tmp_path / "root"
    result = _bundle_cli(
        "run",
        ["configs/train.yaml"],
        ["--bundle_root", str(root), "--dataset_dir", str(broken), *REDUCED_CLI, "--epochs", "1"],
    )
    assert result.returncode != 0
    assert case in result.stderr and f"{case}-t1c.nii.gz" in result.stderr
    assert not (root / "models").exists() and not (root / "datalist.json").exists()


def test_finetune_from_model_pt(trained_root, dataset_dir, tmp_path, caplog):
    pretrained = trained_root / "models" / "model.pt"
    root = tmp_path / "finetune"
    with caplog.at_level("INFO"):
        _workflow(
            "train",
            ["train.yaml"],
            bundle_root=str(root),
            dataset_dir=str(dataset_dir),
            finetune=True,
            finetune_model_path=str(pretrained),
            epochs=1,
            iterations_per_epoch=1,
            val_interval=1,
            **REDUCED,
        )
    assert f"Restored all variables from {pretrained}" in caplog.text
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    _reduced_segmamba().load_state_dict(state, strict=True)
    # one SGD step from the pretrained weights: close to them, but not equal
    before = torch.load(pretrained, map_location="cpu", weights_only=True)
    changed = [k for k in state if not torch.equal(state[k], before[k])]
    assert changed, "fine-tuning did not update the weights"


def test_resume_continues_from_last_checkpoint(trained_root, dataset_dir, tmp_path, caplog):
    root = tmp_path / "resume"
    shutil.copytree(trained_root, root)
    with caplog.at_level("INFO"):
        _workflow(
            "train",
            ["train.yaml"],
            bundle_root=str(root),
            dataset_dir=str(dataset_dir),
            resume=True,
            epochs=2,
            iterations_per_epoch=2,
            val_interval=2,
            **REDUCED,
        )
    assert "Resumed training from" in caplog.text and "at epoch 1 (iteration 2)" in caplog.text
    last = torch.load(root / "models" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert last["trainer"]["iteration"] == 4 and last["trainer"]["epoch_length"] == 2
    # the schedule continued over 2 epochs of 2 iterations: 4 steps in total
    assert last["lr_scheduler"]["last_epoch"] == 4


def test_resume_without_checkpoint_is_a_clear_error(dataset_dir, tmp_path):
    with pytest.raises(Exception) as error:
        _workflow(
            "train",
            ["train.yaml"],
            bundle_root=str(tmp_path),
            dataset_dir=str(dataset_dir),
            resume=True,
            epochs=1,
            iterations_per_epoch=1,
            **REDUCED,
        )
    messages = []
    exc = error.value
    while exc is not None:
        messages.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert any("checkpoint_last.pt" in m and "resume" in m for m in messages)


# ---------------------------------------------------------------------------------------------------------------
# helpers of shared_networks.bundle


def test_gradient_clipping_matches_float64_reference():
    torch.manual_seed(0)
    network = torch.nn.Linear(3, 2).double()
    initial = {k: v.clone() for k, v in network.state_dict().items()}
    inputs = torch.randn(4, 3, dtype=torch.float64) * 10
    targets = torch.randn(4, 2, dtype=torch.float64) * 10
    optimizer = torch.optim.SGD(network.parameters(), lr=1.0)

    # reference: the gradient of the mean squared error, rescaled to norm max_norm when larger
    reference = torch.nn.Linear(3, 2).double()
    reference.load_state_dict(initial)
    torch.nn.functional.mse_loss(reference(inputs), targets).backward()
    grads = [reference.weight.grad, reference.bias.grad]
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    max_norm = 0.5
    assert norm > max_norm  # the case must actually clip
    expected = {k: initial[k] - g * (max_norm / norm) for k, g in zip(("weight", "bias"), grads)}

    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[{"image": inputs, "label": targets}],
        network=network,
        optimizer=optimizer,
        loss_function=torch.nn.MSELoss(),
        train_handlers=[GradientClipping(max_norm=max_norm)],
        amp=False,
    )
    trainer.run()
    for key, value in expected.items():
        torch.testing.assert_close(network.state_dict()[key], value)


def test_gradient_clipping_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_norm"):
        GradientClipping(max_norm=0)


def test_atomic_checkpoint_saver_replaces_best_model_in_place(tmp_path):
    from ignite.engine import Engine, Events

    network = torch.nn.Linear(2, 1)
    saver = AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict={"model": network}, save_key_metric=True,
        key_metric_name="score", key_metric_filename="model.pt",
    )
    scores = iter([0.5, 0.9, 0.7])
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _score(e):  # registered before the saver: the metric exists when it runs
        e.state.metrics["score"] = next(scores)
        with torch.no_grad():
            network.bias.fill_(e.state.metrics["score"])

    saver.attach(engine)
    engine.run([0], max_epochs=3)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(state) == {"weight", "bias"}  # flat state dict
    assert state["bias"].item() == pytest.approx(0.9)  # best, not last
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]  # no temporary files left
    assert [p for p, _ in saver.key_metric_state_dict()["_saved"]] == [pytest.approx(0.9)]


def test_save_atomically_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "state.pt"
    save_atomically({"a": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_atomically({"a": Unpicklable()}, path)
    torch.testing.assert_close(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert os.listdir(tmp_path) == ["state.pt"]


def test_per_region_metrics_read_their_region():
    """validate#postprocessing splits the [TC, WT, ET] regions into pred_tc/label_tc, ...; each val_dice_<region>
    of train.yaml must equal the Dice of that region computed by hand from the argmax and the BraTS labels."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    postprocessing = parser.get_parsed_content("validate#postprocessing")
    generator = torch.Generator().manual_seed(0)
    label = torch.randint(0, 4, (1, 12, 12, 12), generator=generator).float()
    logits = torch.randn(4, 12, 12, 12, generator=generator)
    item = postprocessing({"pred": logits, "label": label})
    predicted = logits.argmax(0)
    for region, values in BRATS_REGIONS.items():
        in_pred = torch.isin(predicted, torch.tensor(values))
        in_label = torch.isin(label[0].long(), torch.tensor(values))
        expected = 2.0 * (in_pred & in_label).sum() / (in_pred.sum() + in_label.sum())
        metric = parser.get_parsed_content(f"validate#additional_metrics#val_dice_{region.lower()}")
        metric.save_details = False  # no engine here to store per-case details in
        metric.reset()
        metric.update(metric._output_transform([item]))
        assert metric.compute() == pytest.approx(float(expected), abs=1e-6), region


def test_brats_case_name_formatter():
    meta = {"filename_or_obj": "/data/BraTS-GLI-00012-001/BraTS-GLI-00012-001-t2w.nii.gz"}
    assert brats_case_name_formatter(meta) == {"subject": "BraTS-GLI-00012-001", "idx": None}
    with pytest.raises(ValueError, match="filename_or_obj"):
        brats_case_name_formatter({})


def test_metrics_summary_saver_writes_strict_json(tmp_path):
    from ignite.engine import Engine, Events

    from shared_networks.bundle import MetricsSummarySaver

    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _metrics(e):
        e.state.metrics.update({"dice": torch.tensor([0.5, float("nan"), 0.25]), "mean": 0.375, "hd": float("inf")})

    path = tmp_path / "summary.json"
    MetricsSummarySaver(str(path), metric_names=["dice", "mean", "hd"], class_names=["TC", "WT", "ET"]).attach(engine)
    engine.run([0], max_epochs=1)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["metrics"] == {"dice": {"TC": 0.5, "WT": None, "ET": 0.25}, "mean": 0.375, "hd": None}

    failing = MetricsSummarySaver(str(path), metric_names=["missing"])
    with pytest.raises(ValueError, match="missing"):
        failing(engine)
