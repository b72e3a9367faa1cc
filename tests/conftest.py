# Copyright (c) the shared_networks authors. Licensed under the Apache License, Version 2.0.
"""Shared fixtures: the list of bundles in ``bundles/``, the CI scripts as modules, a tiny throwaway bundle, ports."""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib.util
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"
CI_DIR = REPO_ROOT / "ci"
SCHEMA_FILE = Path(os.environ.get("MONAI_BUNDLE_SCHEMA_DIR") or REPO_ROOT.parent / "shared" / "schemas") \
    / "meta_schema_20240725.json"
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
BRATS_MODALITY_SUFFIXES = ("t2w", "t2f", "t1n", "t1c")


@functools.lru_cache(maxsize=None)
def metadata_schema_available() -> bool:
    """The metadata schema is at hand: the offline copy CI has beside the repository, or a reachable download."""
    if SCHEMA_FILE.is_file():
        return True
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(SCHEMA_URL, method="HEAD"), timeout=10):
            return True
    except OSError:
        return False


def bundle_dirs() -> list[Path]:
    """Every bundle folder (holding ``configs/``) in ``bundles/``: tests parametrised over it cover new bundles too."""
    if not BUNDLES_DIR.is_dir():
        return []
    return sorted(p for p in BUNDLES_DIR.iterdir() if p.is_dir() and (p / "configs").is_dir())


def bundle_params() -> list:
    """``pytest.param`` per bundle folder, with the folder name as test id."""
    return [pytest.param(p, id=p.name) for p in bundle_dirs()]


def import_ci_script(name: str) -> ModuleType:
    """Import ``ci/<name>.py`` as a module (the CI scripts are not part of the installed package)."""
    path = CI_DIR / f"{name}.py"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1 (a free port) in a thread; yields the base URL."""

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler,
                                                                                directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def reduced_settings(bundle: Path) -> dict:
    """``ci/bundle_checks/<bundle>.yaml``: reduced network / train / inference overrides and phantom size for CPU CI."""
    return import_ci_script("verify_bundles").reduced_settings(bundle.name)


def cli_overrides(overrides: dict) -> list[str]:
    """``--id value`` arguments for ``python -m monai.bundle run`` (values as JSON, which Fire parses)."""
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return args


def reduced_train_overrides(bundle: Path) -> dict:
    """The bundle's reduced training overrides plus its reduced ``network_def`` (``network_def#<key>`` ids)."""
    settings = reduced_settings(bundle)
    overrides = dict(settings.get("train", {}))
    overrides.update({f"network_def#{k}": v for k, v in settings.get("network_def", {}).items()})
    return overrides


def make_phantoms(bundle: Path, output_dir: Path, num_cases: int | None = None) -> Path:
    """BraTS-layout phantom cases (``shared_networks.data.brats.generate_brats_phantoms``) sized for the bundle."""
    from shared_networks.data.brats import generate_brats_phantoms

    phantoms = reduced_settings(bundle).get("phantoms", {})
    num_cases = int(phantoms.get("num_cases", 5)) if num_cases is None else num_cases
    generate_brats_phantoms(str(output_dir), num_cases=num_cases,
                            shape=tuple(phantoms.get("shape", (32, 32, 32))), seed=0)
    return output_dir


def copy_bundle(bundle: Path, dest_dir: Path) -> Path:
    """Copy of a bundle folder without run outputs or local data (what a release contains)."""
    import shutil

    ignore = shutil.ignore_patterns("eval", "runs", "mlruns", "data", "datalist*.json", "__pycache__", "models")
    return Path(shutil.copytree(bundle, dest_dir / bundle.name, ignore=ignore))


def write_initial_weights(bundle_copy: Path, config: str = "train") -> Path:
    """Save the (reduced) ``network_def`` initial weights as ``models/model.pt`` of a bundle copy, and point its
    ``large_files.yml`` entry (if any) at the new file's sha256, as a release maintainer would."""
    import hashlib

    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(next((bundle_copy / "configs").glob(f"{config}.*"))))
    parser["bundle_root"] = str(bundle_copy)
    for key, value in reduced_settings(bundle_copy).get("network_def", {}).items():
        parser[f"network_def#{key}"] = value
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    ckpt = bundle_copy / "models" / "model.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), ckpt)
    large_files = bundle_copy / "large_files.yml"
    if large_files.is_file():
        content = yaml.safe_load(large_files.read_text())
        for entry in content.get("large_files", []):
            if os.path.normpath(entry["path"]) == "models/model.pt":
                entry.update(hash_val=hashlib.sha256(ckpt.read_bytes()).hexdigest(), hash_type="sha256")
        large_files.write_text(yaml.safe_dump(content, sort_keys=False))
    return ckpt


def subprocess_env(**extra: str) -> dict:
    """Environment for bundle subprocesses: quiet thread counts on a 2-core machine, no GPU, repo importable."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"})
    env.update(extra)
    return env


def write_tiny_brats_dataset(root: Path, num_cases: int = 3, side: int = 16, seed: int = 0) -> Path:
    """BraTS 2023 GLI layout ``<root>/<case>/<case>-{t2w,t2f,t1n,t1c,seg}.nii.gz`` with random volumes (for the tiny
    bundle only; real bundle tests use ``shared_networks.data.brats.generate_brats_phantoms``)."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    for i in range(num_cases):
        case = f"BraTS-GLI-{i:05d}-000"
        case_dir = root / case
        case_dir.mkdir(parents=True, exist_ok=True)
        for m in BRATS_MODALITY_SUFFIXES:
            data = rng.random((side, side, side), dtype=np.float32)
            nib.save(nib.Nifti1Image(data, np.eye(4)), str(case_dir / f"{case}-{m}.nii.gz"))
        label = rng.integers(0, 4, (side, side, side)).astype(np.uint8)
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(case_dir / f"{case}-seg.nii.gz"))
    return root


TINY_METADATA = {
    "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
    "version": "0.1.0",
    "changelog": {"0.1.0": "tiny test bundle"},
    "monai_version": "1.6.1",
    "pytorch_version": "2.13.0",
    "numpy_version": "2.3.5",
    "required_packages_version": {"nibabel": "5.3.2", "pytorch-ignite": "0.5.5"},
    "name": "Tiny UNet BraTS segmentation",
    "task": "Brain tumour segmentation (test fixture)",
    "description": "A tiny 3D UNet used to test the bundle tooling.",
    "authors": "shared_networks tests",
    "copyright": "Copyright (c) the shared_networks authors",
    "data_source": "synthetic",
    "data_type": "nibabel",
    "image_classes": "4 channel MRI (t2w, t2f, t1n, t1c)",
    "label_classes": "0 background, 1 NCR, 2 SNFH, 3 ET",
    "pred_classes": "0 background, 1 NCR, 2 SNFH, 3 ET",
    "eval_metrics": {"mean_dice": 0.0},
    "intended_use": "Testing only",
    "references": ["Ronneberger et al., U-Net, MICCAI 2015"],
    "network_data_format": {
        "inputs": {
            "image": {
                "type": "image",
                "format": "magnitude",
                "modality": "MR",
                "num_channels": 4,
                "spatial_shape": ["16*n", "16*n", "16*n"],
                "dtype": "float32",
                "value_range": [0, 1],
                "is_patch_data": True,
                "channel_def": {"0": "t2w", "1": "t2f", "2": "t1n", "3": "t1c"},
            }
        },
        "outputs": {
            "pred": {
                "type": "image",
                "format": "segmentation",
                "modality": "MR",
                "num_channels": 4,
                "spatial_shape": ["16*n", "16*n", "16*n"],
                "dtype": "float32",
                "value_range": [],
                "is_patch_data": True,
                "channel_def": {"0": "background", "1": "ncr", "2": "snfh", "3": "et"},
            }
        },
    },
}

_TINY_LOAD = [
    {"_target_": "LoadImaged", "keys": ["image", "label"], "image_only": False},
    {"_target_": "EnsureChannelFirstd", "keys": ["image", "label"]},
    {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
    {"_target_": "EnsureTyped", "keys": ["image", "label"]},
]
_TINY_DATA = (
    "$[{'image': [c + '/' + os.path.basename(c) + '-' + m + '.nii.gz' for m in ('t2w', 't2f', 't1n', 't1c')],"
    " 'label': c + '/' + os.path.basename(c) + '-seg.nii.gz'} for c in sorted(glob.glob(@dataset_dir + '/*'))]"
)

TINY_TRAIN = {
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "ckpt_dir": "$@bundle_root + '/models'",
    "output_dir": "$@bundle_root + '/eval'",
    "dataset_dir": "$@bundle_root + '/data'",
    "datalist": _TINY_DATA,
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "epochs": 1,
    "val_interval": 1,
    "finetune": False,
    "finetune_model_path": "$@ckpt_dir + '/model.pt'",
    "network_def": {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 4,
        "out_channels": 4,
        "channels": [4, 8],
        "strides": [2],
        "num_res_units": 0,
    },
    "network": "$@network_def.to(@device)",
    "loss": {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True},
    "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": 0.001},
    "train": {
        "preprocessing": {"_target_": "Compose", "transforms": _TINY_LOAD},
        "dataset": {"_target_": "Dataset", "data": "$@datalist[:-1]", "transform": "@train#preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": 1, "num_workers": 0},
        "inferer": {"_target_": "SimpleInferer"},
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "_disabled_": "$not @finetune",
                "load_path": "@finetune_model_path",
                "load_dict": {"model": "@network"},
                "strict": True,
            },
            {
                "_target_": "ValidationHandler",
                "validator": "@validate#evaluator",
                "epoch_level": True,
                "interval": "@val_interval",
            },
            {
                "_target_": "StatsHandler",
                "tag_name": "train_loss",
                "output_transform": "$monai.handlers.from_engine(['loss'], first=True)",
            },
        ],
        "trainer": {
            "_target_": "SupervisedTrainer",
            "max_epochs": "@epochs",
            "device": "@device",
            "train_data_loader": "@train#dataloader",
            "network": "@network",
            "loss_function": "@loss",
            "optimizer": "@optimizer",
            "inferer": "@train#inferer",
            "train_handlers": "@train#handlers",
        },
    },
    "validate": {
        "preprocessing": "%train#preprocessing",
        "dataset": {"_target_": "Dataset", "data": "$@datalist[-1:]", "transform": "@validate#preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@validate#dataset", "batch_size": 1, "num_workers": 0},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False], "to_onehot": 4}
            ],
        },
        "handlers": [
            {
                "_target_": "CheckpointSaver",
                "save_dir": "@ckpt_dir",
                "save_dict": {"model": "@network"},
                "save_key_metric": True,
                "key_metric_filename": "model.pt",
            }
        ],
        "key_metric": {
            "val_mean_dice": {
                "_target_": "MeanDice",
                "include_background": False,
                "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
            }
        },
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@validate#dataloader",
            "network": "@network",
            "inferer": "@validate#inferer",
            "postprocessing": "@validate#postprocessing",
            "key_val_metric": "@validate#key_metric",
            "val_handlers": "@validate#handlers",
        },
    },
    "initialize": ["$monai.utils.set_determinism(seed=0)"],
    "run": ["$@train#trainer.run()"],
}

TINY_EVALUATE = {
    "validate#handlers": [
        {"_target_": "CheckpointLoader", "load_path": "$@ckpt_dir + '/model.pt'", "load_dict": {"model": "@network"}},
        {"_target_": "StatsHandler", "iteration_log": False},
    ],
    "run": ["$@validate#evaluator.run()"],
}

TINY_MULTI_GPU = {
    "device": "$torch.device(f\"cuda:{os.environ['LOCAL_RANK']}\" if torch.cuda.is_available() else 'cpu')",
    "network": {
        "_target_": "torch.nn.parallel.DistributedDataParallel",
        "module": "$@network_def.to(@device)",
        "device_ids": "$[@device] if torch.cuda.is_available() else None",
    },
    "train#sampler": {"_target_": "DistributedSampler", "dataset": "@train#dataset", "even_divisible": True,
                      "shuffle": True},
    "train#dataloader#sampler": "@train#sampler",
    "initialize": [
        "$import torch.distributed as dist",
        "$dist.init_process_group(backend='nccl' if torch.cuda.is_available() else 'gloo')",
        "$monai.utils.set_determinism(seed=0)",
    ],
    "run": ["$@train#trainer.run()"],
    "finalize": ["$dist.is_initialized() and dist.destroy_process_group()"],
}

TINY_INFERENCE = {
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "dataset_dir": "$@bundle_root + '/data'",
    "datalist": _TINY_DATA,
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "network_def": TINY_TRAIN["network_def"],
    "network": "$@network_def.to(@device)",
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
            {"_target_": "EnsureTyped", "keys": "image"},
        ],
    },
    "dataset": {"_target_": "Dataset", "data": "$[{'image': d['image']} for d in @datalist]",
                "transform": "@preprocessing"},
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "num_workers": 0},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 1},
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [{"_target_": "AsDiscreted", "keys": "pred", "argmax": True}],
    },
    "handlers": [
        {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
         "load_dict": {"model": "@network"}},
        {"_target_": "StatsHandler", "iteration_log": False},
    ],
    "evaluator": {
        "_target_": "SupervisedEvaluator",
        "device": "@device",
        "val_data_loader": "@dataloader",
        "network": "@network",
        "inferer": "@inferer",
        "postprocessing": "@postprocessing",
        "val_handlers": "@handlers",
    },
    "initialize": ["$monai.utils.set_determinism(seed=0)"],
    "run": ["$@evaluator.run()"],
}

TINY_LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""

TINY_README = """# Model Overview
A tiny 3D UNet (test fixture).
## Data
Synthetic BraTS-layout volumes.
## Training configuration
1 epoch, Adam.
### Input
4 channels: t2w, t2f, t1n, t1c.
### Output
4 channels: background, NCR, SNFH, ET.
## Performance
Not meaningful.
## MONAI Bundle Commands
python -m monai.bundle run --config_file configs/train.yaml
# References
[1] Ronneberger et al.
# License
Apache-2.0
"""


def write_tiny_bundle(dest: Path, name: str = "tiny_unet_segmentation") -> Path:
    """A small but complete bundle (tiny UNet on 4-channel BraTS-layout data, YAML configs like ours) under
    ``dest/<name>``; ``models/model.pt`` is not written (the tools must cope with weights listed in large_files.yml)."""
    root = dest / name
    (root / "configs").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "LICENSE").write_text("Apache License\nVersion 2.0, January 2004\n")
    (root / "docs" / "README.md").write_text(TINY_README)
    (root / "configs" / "metadata.json").write_text(json.dumps(TINY_METADATA, indent=4) + "\n")
    (root / "configs" / "logging.conf").write_text(TINY_LOGGING_CONF)
    for stem, content in (("train", TINY_TRAIN), ("evaluate", TINY_EVALUATE), ("inference", TINY_INFERENCE),
                          ("multi_gpu_train", TINY_MULTI_GPU)):
        (root / "configs" / f"{stem}.yaml").write_text(yaml.safe_dump(content, sort_keys=False, width=200))
    large_files = {"large_files": [{"path": "models/model.pt", "url": "https://example.invalid/model.pt",
                                    "hash_val": "0" * 64, "hash_type": "sha256"}]}
    (root / "large_files.yml").write_text(yaml.safe_dump(large_files, sort_keys=False))
    return root


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    """A fresh tiny bundle folder (see ``write_tiny_bundle``)."""
    return write_tiny_bundle(tmp_path / "bundles")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three random 16^3 cases in the BraTS layout, for the tiny bundle."""
    return write_tiny_brats_dataset(tmp_path_factory.mktemp("tiny_brats"))


@pytest.fixture(scope="session")
def verify_bundles() -> ModuleType:
    """``ci/verify_bundles.py`` as a module."""
    return import_ci_script("verify_bundles")
