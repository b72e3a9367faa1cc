# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""EndoVis 2017 data layer: the three layouts, the mask merging rule, validation errors naming the file, the
reproducible datalist and the synthetic frames."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared_networks.data import (
    ENDOVIS17_LABELS,
    check_png_file,
    find_endovis_cases,
    generate_endovis_phantoms,
    instrument_class,
    make_endovis_datalist,
    merge_instrument_masks,
    validate_endovis_cases,
)

SHAPE = (40, 48)  # (height, width)


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def _frame(seed: int = 0, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def challenge(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("endovis17")
    generate_endovis_phantoms(root, num_videos=3, frames_per_video=2, shape=SHAPE, seed=3)
    return root


def test_instrument_classes_from_the_challenge_folder_names():
    # the folder names of the 2017 challenge's training videos, and the instrument-type classes they stand for
    assert instrument_class("Maryland_Bipolar_Forceps_labels") == 1
    assert instrument_class("Left_Prograsp_Forceps_labels") == 2
    assert instrument_class("Right_Prograsp_Forceps_labels") == 2
    assert instrument_class("Left_Large_Needle_Driver_labels") == 3
    assert instrument_class("Vessel_Sealer_labels") == 4
    assert instrument_class("Grasping_Retractor_labels") == 5
    assert instrument_class("Monopolar_Curved_Scissors_labels") == 6
    assert instrument_class("Other_labels") == 7
    assert sorted(ENDOVIS17_LABELS.values()) == list(range(8))
    with pytest.raises(ValueError, match="Suction_labels"):
        instrument_class("Suction_labels")


def test_merge_rule_part_codes_overlap_and_atomic_output(tmp_path):
    a = np.zeros(SHAPE, np.uint8)
    a[5:15, 5:15] = 10  # shaft
    a[15:20, 5:15] = 30  # head: any non-zero part code is the instrument
    b = np.zeros(SHAPE, np.uint8)
    b[12:30, 10:20] = 40
    masks = {
        "Right_Large_Needle_Driver_labels": str(_png(tmp_path / "b.png", b)),
        "Left_Prograsp_Forceps_labels": str(_png(tmp_path / "a.png", a)),
    }
    out = tmp_path / "merged" / "frame.png"
    overlap = merge_instrument_masks(masks, out)
    merged = np.asarray(Image.open(out))
    expected = np.zeros(SHAPE, np.uint8)
    expected[a > 0] = 2
    expected[b > 0] = 3  # "Right_Large..." sorts after "Left_Prograsp...": it wins where they overlap
    np.testing.assert_array_equal(merged, expected)
    assert overlap == int(((a > 0) & (b > 0)).sum()) == 8 * 5
    assert Image.open(out).mode == "L"
    assert os.listdir(out.parent) == ["frame.png"]


def test_challenge_layout_found_and_merged(challenge, tmp_path):
    cases = find_endovis_cases(challenge)
    assert [c["case"] for c in cases] == [f"instrument_dataset_{v}/frame{i:03d}" for v in (1, 2, 3) for i in (0, 1)]
    assert all(len(c["masks"]) == 7 and c["video"] == c["case"].split("/")[0] for c in cases)
    datalist = make_endovis_datalist(challenge, tmp_path / "datalist.json")
    entries = [e for split in datalist.values() for e in split]
    assert len(entries) == 6
    # split by video: both frames of a video land in one split
    for split in datalist.values():
        videos = {e["case"].split("/")[0] for e in split}
        assert sum(e["case"].split("/")[0] in videos for e in entries) == len(split)
    for entry in entries:
        assert entry["label"] == str(tmp_path / "endovis_labels" / entry["case"]) + ".png"
        label = np.asarray(Image.open(entry["label"]))
        masks = next(c["masks"] for c in cases if c["case"] == entry["case"])
        expected = np.zeros(SHAPE, np.uint8)
        for folder in sorted(masks):
            expected[np.asarray(Image.open(masks[folder])) > 0] = instrument_class(folder)
        np.testing.assert_array_equal(label, expected)
        assert label.any()
    assert json.loads((tmp_path / "datalist.json").read_text()) == datalist


def test_nnunet_and_plain_layouts(tmp_path):
    nnunet = tmp_path / "Dataset704_Endovis17"
    _png(nnunet / "imagesTr" / "seq1_0000.png", _frame())
    _png(nnunet / "labelsTr" / "seq1.png", np.full(SHAPE, 2, np.uint8))
    assert find_endovis_cases(nnunet) == [{"case": "seq1", "image": str(nnunet / "imagesTr" / "seq1_0000.png"),
                                           "label": str(nnunet / "labelsTr" / "seq1.png")}]
    _png(nnunet / "imagesTr" / "seq2.png", _frame())
    with pytest.raises(ValueError, match=r"seq2\.png.*_0000\.png"):
        find_endovis_cases(nnunet)

    plain = tmp_path / "plain"
    generate_endovis_phantoms(plain, num_videos=2, frames_per_video=2, shape=SHAPE, layout="plain")
    cases = find_endovis_cases(plain)
    assert len(cases) == 4 and all(set(c) == {"case", "image", "label"} for c in cases)
    values = np.unique(np.concatenate([np.asarray(Image.open(c["label"])).ravel() for c in cases]))
    assert values[0] == 0 and set(values) <= set(range(8)) and len(values) > 1
    # inference on a folder of frames alone
    frames = tmp_path / "frames"
    _png(frames / "a.png", _frame())
    assert find_endovis_cases(frames, require_label=False) == [{"case": "a", "image": str(frames / "a.png")}]
    with pytest.raises(ValueError, match="no EndoVis frames found"):
        find_endovis_cases(frames)


def test_frame_without_its_mask_or_label_names_the_expected_file(challenge, tmp_path):
    video = tmp_path / "instrument_dataset_1"
    _png(video / "left_frames" / "f0.png", _frame())
    _png(video / "left_frames" / "f1.png", _frame(1))
    for frame in ("f0", "f1"):
        _png(video / "ground_truth" / "Vessel_Sealer_labels" / f"{frame}.png", np.zeros(SHAPE, np.uint8))
    _png(video / "ground_truth" / "Other_labels" / "f0.png", np.zeros(SHAPE, np.uint8))
    expected = video / "ground_truth" / "Other_labels" / "f1.png"
    with pytest.raises(FileNotFoundError, match=rf"left_frames/f1\.png.*Other_labels.*'{expected}'"):
        find_endovis_cases(tmp_path)

    plain = tmp_path / "plain"
    _png(plain / "images" / "x.png", _frame())
    with pytest.raises(FileNotFoundError, match=rf"'{plain / 'labels' / 'x.png'}'"):
        make_endovis_datalist(plain, tmp_path / "d.json")
    assert not (tmp_path / "d.json").exists()


@pytest.mark.parametrize(
    "kind, match",
    [
        ("rgba", r"RGBA.*expected an 8-bit RGB PNG"),
        ("grey", r"grey-scale.*expected an 8-bit RGB PNG"),
        ("label_size", r"is 47x40 pixels, but its frame .* is 48x40"),
        ("label_rgb", r"RGB .*expected a single-channel label PNG"),
        ("label_value", r"values \[9\] outside 0..7"),
        ("truncated", r"corrupt or truncated"),
        ("constant", r"constant"),
        ("jpeg", r"is a JPEG image"),
    ],
)
def test_bad_files_are_refused_naming_the_file(tmp_path, kind, match):
    image, label = tmp_path / "images" / "c.png", tmp_path / "labels" / "c.png"
    _png(image, _frame())
    _png(label, np.zeros(SHAPE, np.uint8))
    bad = image
    if kind == "rgba":
        _png(image, np.dstack([_frame(), np.full(SHAPE, 255, np.uint8)]))
    elif kind == "grey":
        _png(image, _frame()[..., 0])
    elif kind == "label_size":
        _png(label, np.zeros((SHAPE[0], SHAPE[1] - 1), np.uint8))
        bad = label
    elif kind == "label_rgb":
        _png(label, np.zeros((*SHAPE, 3), np.uint8))
        bad = label
    elif kind == "label_value":
        _png(label, np.full(SHAPE, 9, np.uint8))
        bad = label
    elif kind == "truncated":
        data = image.read_bytes()
        image.write_bytes(data[: len(data) // 2])
    elif kind == "constant":
        _png(image, np.full((*SHAPE, 3), 128, np.uint8))
    elif kind == "jpeg":
        Image.fromarray(_frame()).save(image, format="JPEG")
    with pytest.raises(ValueError, match=match) as info:
        make_endovis_datalist(tmp_path, tmp_path / "datalist.json")
    assert f"'{bad}'" in str(info.value) and "EndoVis frame 'c'" in str(info.value)
    assert not (tmp_path / "datalist.json").exists()


def test_flipped_bytes_in_a_png_are_found(tmp_path):
    path = _png(tmp_path / "f.png", _frame())
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same length; only the chunk CRC can tell
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"'{path}' is corrupt"):
        check_png_file(path)


def test_reused_datalist_is_checked_again(challenge, tmp_path):
    datalist_path = tmp_path / "datalist.json"
    datalist = make_endovis_datalist(challenge, datalist_path)
    assert make_endovis_datalist(challenge, datalist_path) == datalist
    label = Path(datalist["testing"][0]["label"])
    _png(label, np.full(SHAPE, 12, np.uint8))
    with pytest.raises(ValueError, match=rf"split 'testing'.*'{label}' holds values \[12\]"):
        make_endovis_datalist(challenge, datalist_path)
    label.unlink()
    with pytest.raises(FileNotFoundError, match=rf"'{label}' does not exist"):
        make_endovis_datalist(challenge, datalist_path)


def test_split_by_frame_with_fewer_than_three_videos(tmp_path):
    generate_endovis_phantoms(tmp_path / "data", num_videos=1, frames_per_video=10, shape=SHAPE)
    datalist = make_endovis_datalist(tmp_path / "data", tmp_path / "datalist.json")
    assert [len(datalist[k]) for k in ("training", "validation", "testing")] == [7, 1, 2]
    again = make_endovis_datalist(tmp_path / "data", tmp_path / "other.json", labels_dir=tmp_path / "labels2")
    assert [e["case"] for e in again["testing"]] == [e["case"] for e in datalist["testing"]]  # seeded


def test_validate_cases_for_inference_without_labels(tmp_path):
    frame = _png(tmp_path / "a.png", _frame())
    validate_endovis_cases([{"case": "a", "image": str(frame)}], check_labels=False)
    with pytest.raises(FileNotFoundError, match="no label"):
        validate_endovis_cases([{"case": "a", "image": str(frame)}])
    _png(frame, _frame()[..., :1].repeat(2, axis=-1)[..., 0])
    with pytest.raises(ValueError, match=rf"'{frame}' is a grey-scale"):
        validate_endovis_cases([{"case": "a", "image": str(frame)}], check_labels=False)


def test_phantoms_are_deterministic_and_show_all_classes(tmp_path):
    a = generate_endovis_phantoms(tmp_path / "a", num_videos=2, frames_per_video=8, shape=(64, 80), seed=5)
    b = generate_endovis_phantoms(tmp_path / "b", num_videos=2, frames_per_video=8, shape=(64, 80), seed=5)
    assert [Path(p).read_bytes() for p in a] == [Path(p).read_bytes() for p in b]
    frame = np.asarray(Image.open(a[0]))
    assert frame.shape == (64, 80, 3) and frame.dtype == np.uint8 and frame.std() > 10
    present = set()
    for case in find_endovis_cases(tmp_path / "a"):
        for folder, path in case["masks"].items():
            mask = np.asarray(Image.open(path))
            assert set(np.unique(mask)) <= {0, 10, 30}
            if mask.any():
                present.add(instrument_class(folder))
    assert present == set(range(1, 8))
    with pytest.raises(ValueError, match="at least 32"):
        generate_endovis_phantoms(tmp_path / "c", shape=(16, 64))


def test_overlay_and_label_png_round_trip_at_the_input_resolution(tmp_path):
    from monai.transforms import EnsureChannelFirstd, LoadImaged, SaveImaged

    from shared_networks.bundle import AtomicPILWriter
    from shared_networks.data import LABEL_PALETTE, LabelOverlayd

    rgb = _frame(7)
    source = _png(tmp_path / "in" / "f.png", rgb)
    data = EnsureChannelFirstd("image")(LoadImaged("image", image_only=True)({"image": str(source)}))
    assert tuple(data["image"].shape) == (3, SHAPE[1], SHAPE[0])  # MONAI's PIL reader: (width, height)
    label = np.zeros((1, SHAPE[1], SHAPE[0]), np.int64)
    label[0, 2:6, 3:9] = 1
    label[0, 10:12, 20:30] = 7
    data["pred"] = type(data["image"])(label, meta=dict(data["image"].meta))
    data = LabelOverlayd("pred", image_key="image", alpha=0.5)(data)
    for key, postfix in (("pred", "seg"), ("overlay", "overlay")):
        SaveImaged(key, output_dir=tmp_path / "out", output_postfix=postfix, output_ext=".png", writer=AtomicPILWriter,
                   output_dtype=np.uint8, scale=None, separate_folder=False, resample=False, print_log=False)(data)
    written = np.asarray(Image.open(tmp_path / "out" / "f_seg.png"))
    np.testing.assert_array_equal(written, label[0].T)  # the label at the frame's (height, width)
    overlay = np.asarray(Image.open(tmp_path / "out" / "f_overlay.png")).astype(float)
    assert overlay.shape == rgb.shape
    y, x = 3, 2  # (row, column) of a class-1 pixel: half the palette colour, half the frame
    np.testing.assert_allclose(overlay[y, x], np.round(0.5 * np.array(LABEL_PALETTE[0]) + 0.5 * rgb[y, x]), atol=0.5)
    np.testing.assert_allclose(overlay[25, 11], np.round(0.5 * np.array(LABEL_PALETTE[6]) + 0.5 * rgb[25, 11]),
                               atol=0.5)
    np.testing.assert_array_equal(overlay[0, 0], rgb[0, 0])  # background keeps the frame
    assert sorted(os.listdir(tmp_path / "out")) == ["f_overlay.png", "f_seg.png"]  # no temporary left


def test_phantoms_num_cases_spreads_frames_over_videos(tmp_path):
    frames = generate_endovis_phantoms(tmp_path, num_videos=3, num_cases=7, shape=(32, 32))
    per_video = [sum(f"instrument_dataset_{v}/" in f for f in frames) for v in (1, 2, 3)]
    assert per_video == [3, 2, 2]
