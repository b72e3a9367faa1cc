# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""shared_networks.io: the temporary names of atomic_path keep the extension a writer needs, a failed write leaves the
destination untouched, and remove_stale_temporaries finds the leftovers of both kinds, recursively on request."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from shared_networks.io import atomic_path, remove_stale_temporaries, write_bytes_atomically


def test_atomic_path_keeps_the_extension_for_format_picking_writers(tmp_path):
    target = tmp_path / "case" / "case_seg.nii.gz"
    with atomic_path(target, keep_extension=True) as temporary:
        assert os.path.dirname(temporary) == str(target.parent) and temporary.endswith(".tmp.nii.gz")
        nib.save(nib.Nifti1Image(np.ones((2, 3, 4), np.uint8), np.eye(4)), temporary)
        assert not target.exists()
    assert nib.load(target).shape == (2, 3, 4) and oct(target.stat().st_mode & 0o777) == "0o644"
    assert os.listdir(target.parent) == ["case_seg.nii.gz"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.json"
    write_bytes_atomically(b"old", target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            open(temporary, "wb").write(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.json"]


def test_stale_temporaries_of_both_kinds_recursively(tmp_path):
    (tmp_path / "case").mkdir()
    stale = [tmp_path / ".model.pt.ab12cd_9.tmp", tmp_path / "case" / ".case_seg.nii.gz.x1y2z3w4.tmp.nii.gz"]
    keep = [tmp_path / "case" / "case_seg.nii.gz", tmp_path / ".hidden", tmp_path / "tmpabcdefgh", tmp_path / "a.tmp"]
    for path in stale + keep:
        path.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [str(stale[0])]  # not recursive by default
    assert remove_stale_temporaries(tmp_path, recursive=True) == [str(stale[1])]
    assert all(path.exists() for path in keep)
