# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
``python -m monai.bundle ckpt_export`` of segmamba_brats from the command line, as the Model Zoo runs it (TorchScript
scripting, the default) and with ``--use_trace``: each exported model, loaded in a fresh process that only imports
``shared_networks`` (which registers the scan operator), gives the eager network's output.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from tests.conftest import (
    BUNDLES_DIR,
    bundle_checks,
    cli_overrides,
    copy_bundle,
    subprocess_env,
    write_initial_weights,
)

BUNDLE = BUNDLES_DIR / "segmamba_brats"
INPUT_SHAPE = (1, 4, 32, 32, 32)
LOAD_AND_RUN = """
import sys
import torch
import shared_networks  # noqa: F401  (registers torch.ops.shared_networks.*)

model = torch.jit.load(sys.argv[1])
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[2], weights_only=True)), sys.argv[3])
"""


@pytest.mark.skipif("cpp" not in __import__("shared_networks.ssm").ssm.available_backends("cpu"),
                    reason="an exported network scans with the C++ kernel")
def test_ckpt_export_script_and_trace_from_the_cli_equal_eager(tmp_path: Path):
    bundle = copy_bundle(BUNDLE, tmp_path)
    ckpt = write_initial_weights(bundle, "inference")
    network_def = {f"network_def#{k}": v for k, v in bundle_checks(bundle).network_def.items()}
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(bundle)
    for key, value in network_def.items():
        parser[key] = value
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(ckpt, weights_only=True), strict=True)
    x = torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = net.eval()(x)
    torch.save(x, tmp_path / "x.pt")
    env = subprocess_env()
    for name, extra in (("script", []), ("trace", ["--use_trace", "True", "--input_shape", str(list(INPUT_SHAPE))])):
        exported = bundle / "models" / f"model_{name}.ts"
        command = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(exported),
                   "--ckpt_file", str(ckpt), "--meta_file", "configs/metadata.json",
                   "--config_file", "configs/inference.yaml", *extra, *cli_overrides(network_def)]
        result = subprocess.run(command, cwd=bundle, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{name}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        out = tmp_path / f"out_{name}.pt"
        run = subprocess.run([sys.executable, "-c", LOAD_AND_RUN, str(exported), str(tmp_path / "x.pt"), str(out)],
                             env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"{name}: {run.stderr[-3000:]}"
        torch.testing.assert_close(torch.load(out, weights_only=True), expected, rtol=1e-5, atol=1e-5)
