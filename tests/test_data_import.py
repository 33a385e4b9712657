"""medzoo data import: class-per-folder trees of PNG/TIFF, DICOM series and NIfTI volumes become
MIMeta datasets whose pixels are exactly the declared window of the source values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from medzoo.cli import main
from medzoo.data.importer import WINDOW_PRESETS, Window, import_folder
from medzoo.data.mimeta import load_split
from medzoo.errors import MedzooError


def _gray_pngs(src: Path, per_class: int = 10, size: int = 32) -> dict[str, np.ndarray]:
    """Two classes of 8-bit PNGs (bright square top-left vs bottom-right); returns path -> pixels."""
    rng = np.random.default_rng(0)
    written = {}
    for label, name in enumerate(["benign", "malignant"]):
        (src / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size), dtype=np.uint8)
            corner = slice(0, size // 2) if label == 0 else slice(size // 2, size)
            pixels[corner, corner] += 150
            path = src / name / f"img{i:02d}.png"
            Image.fromarray(pixels).save(path)
            written[f"{name}/img{i:02d}.png"] = pixels
    return written


def _imported(root: Path, dataset_id: str, split=("train", "val", "test")):
    data = load_split(root, dataset_id, list(split))
    csv = (root / dataset_id / "annotations.csv").read_text().splitlines()[1:]
    sources = [line.split(",")[3].strip('"') for line in csv]
    return data, [sources[i] for i in data.indices.tolist()]


def test_png_folder_round_trips_pixels_and_splits(tmp_path: Path) -> None:
    written = _gray_pngs(tmp_path / "src")
    folder = import_folder(
        tmp_path / "src", tmp_path / "root", "mine", size=32, domain="Ultrasound"
    )
    data, sources = _imported(tmp_path / "root", "mine")
    assert data.images.shape == (20, 1, 32, 32) and data.class_names == ("benign", "malignant")
    for image, label, source in zip(data.images, data.labels, sources):
        assert np.array_equal(image[0].numpy(), written[source])  # 8-bit: exactly as stored
        assert data.class_names[label] == source.split("/")[0]
    info = yaml.safe_load((folder / "info.yaml").read_text())
    assert info["splits_num_samples"] == {"train": 14, "val": 2, "test": 4}  # 7/1/2 per class
    assert info["import"]["window"] is None and info["domain"] == "Ultrasound"
    test = load_split(tmp_path / "root", "mine", "test")
    assert np.bincount(test.labels.numpy()).tolist() == [2, 2]  # stratified
    # the same seed gives the same splits
    import_folder(tmp_path / "src", tmp_path / "root", "again", size=32)
    assert (folder / "splits" / "test.txt").read_text() == (
        tmp_path / "root" / "again" / "splits" / "test.txt"
    ).read_text()
    # and the mimeta package reads the result as medzoo does
    import mimeta

    theirs = mimeta.MIMeta(
        str(tmp_path / "root"), "mine", "class", split="test", transform=np.asarray
    )
    assert len(theirs) == len(test) and tuple(theirs.classes.values()) == ("benign", "malignant")
    image, label = theirs[0]
    assert np.array_equal(image, test.images[0, 0].numpy()) and int(label) == int(test.labels[0])


def test_16_bit_tiff_goes_through_the_declared_window_only(tmp_path: Path) -> None:
    src = tmp_path / "src"
    rng = np.random.default_rng(1)
    values = {}
    for name in ("a", "b"):
        (src / name).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 4096, (16, 16), dtype=np.uint16)
            Image.fromarray(pixels).save(src / name / f"{i}.tif")
            values[f"{name}/{i}.tif"] = pixels
    with pytest.raises(MedzooError, match="--window"):
        import_folder(src, tmp_path / "root", "ct16", size=16)
    assert not (tmp_path / "root" / "ct16").exists()  # refused before anything was written
    import_folder(src, tmp_path / "root", "ct16", size=16, window="2000,1000")
    data, sources = _imported(tmp_path / "root", "ct16")
    for image, source in zip(data.images, sources):
        expected = np.clip(np.floor((values[source] - 1500.0) / 1000.0 * 255 + 0.5), 0, 255)
        assert np.array_equal(image[0].numpy(), expected.astype(np.uint8))
    info = yaml.safe_load((tmp_path / "root" / "ct16" / "info.yaml").read_text())
    assert info["import"]["window"] == {"center": 2000.0, "width": 1000.0, "name": "custom"}


def test_bad_files_fail_or_are_skipped_and_listed(tmp_path: Path, caplog) -> None:
    _gray_pngs(tmp_path / "src", per_class=5)
    bad = tmp_path / "src" / "benign" / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(MedzooError, match="broken.png.*--on-error skip"):
        import_folder(tmp_path / "src", tmp_path / "root", "x", size=32)
    assert not (tmp_path / "root" / "x").exists()
    folder = import_folder(tmp_path / "src", tmp_path / "root", "x", size=32, on_error="skip")
    info = yaml.safe_load((folder / "info.yaml").read_text())
    assert [s["path"] for s in info["import"]["skipped"]] == ["benign/broken.png"]
    assert info["total_num_samples"] == 10 and "broken.png" in caplog.text


def test_cli_import_and_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    _gray_pngs(tmp_path / "src", per_class=4)
    root = str(tmp_path / "root")
    argv = ["data", "import", str(tmp_path / "src"), "--data-root", root, "--size", "32"]
    assert main([*argv, "--id", "../evil"]) == 2
    assert main([*argv, "--id", "ok", "--split-ratios", "0.5,0.6,0.1"]) == 2
    assert main([*argv, "--id", "ok", "--window", "lung,7"]) == 2
    assert "--window" in capsys.readouterr().err
    assert not (tmp_path / "root").exists()
    assert main([*argv, "--id", "ok", "--channels", "3", "--split-ratios", "0.5,0.25,0.25"]) == 0
    assert load_split(root, "ok", "train").images.shape[1] == 3  # gray replicated to RGB
    assert main([*argv, "--id", "ok"]) == 2 and "exists" in capsys.readouterr().err


def test_splits_from_official_files(tmp_path: Path) -> None:
    written = _gray_pngs(tmp_path / "src", per_class=3)
    names = sorted(written)
    official = tmp_path / "official"
    official.mkdir()
    (official / "train.txt").write_text("\n".join(names[:4]))
    (official / "test.txt").write_text("\n".join(names[4:]))
    import_folder(tmp_path / "src", tmp_path / "root", "off", size=32, splits_from=official)
    _, sources = _imported(tmp_path / "root", "off", ["test"])
    assert sorted(sources) == names[4:]
    (official / "test.txt").write_text("\n".join(names[4:-1]))
    with pytest.raises(MedzooError, match="in no split file"):
        import_folder(tmp_path / "src", tmp_path / "root", "off2", size=32, splits_from=official)


def _write_dicom(path: Path, stored: np.ndarray, intercept: float) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_series_round_trips_hounsfield_units_through_the_window(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    rng = np.random.default_rng(2)
    stored = {}
    for name in ("liver", "spleen"):
        for series in range(3):
            folder = tmp_path / "src" / name / f"patient{series}"
            folder.mkdir(parents=True)
            for k in range(4):
                pixels = rng.integers(0, 2048, (16, 16)).astype(np.uint16)
                _write_dicom(folder / f"slice{k}.dcm", pixels, intercept=-1024)
                stored[f"{name}/patient{series}/slice{k}.dcm"] = pixels
    with pytest.raises(MedzooError, match="--window"):
        import_folder(tmp_path / "src", tmp_path / "root", "dcm", size=16)
    import_folder(
        tmp_path / "src", tmp_path / "root", "dcm", size=16, window="abdomen",
        split_ratios=(0.34, 0.33, 0.33), domain="Abdominal CT",
    )  # fmt: skip
    center, width = WINDOW_PRESETS["abdomen"]
    for split in ("train", "val", "test"):
        data, sources = _imported(tmp_path / "root", "dcm", [split])
        for image, source in zip(data.images, sources):
            hounsfield = stored[source].astype(np.float64) - 1024
            expected = Window(center, width).apply(hounsfield)
            assert np.array_equal(image[0].numpy(), expected)
        # a series (patient) never straddles two splits: 4 slices of one patient per class
        patients = {s.rsplit("/", 1)[0] for s in sources}
        assert len(sources) == 4 * len(patients) == 8


def test_nifti_volume_becomes_windowed_axial_slices(tmp_path: Path) -> None:
    nibabel = pytest.importorskip("nibabel")
    rng = np.random.default_rng(3)
    volumes = {}
    for name in ("tumour", "healthy"):
        (tmp_path / "src" / name).mkdir(parents=True)
        for v in range(3):
            data = rng.normal(0, 300, (16, 16, 5)).astype(np.float32)
            nibabel.save(
                nibabel.Nifti1Image(data, np.eye(4)), tmp_path / "src" / name / f"v{v}.nii.gz"
            )
            volumes[f"{name}/v{v}.nii.gz"] = data
    import_folder(tmp_path / "src", tmp_path / "root", "nii", size=16, window="lung")
    data, sources = _imported(tmp_path / "root", "nii")
    assert len(sources) == 2 * 3 * 5
    center, width = WINDOW_PRESETS["lung"]
    for source in sorted(set(sources)):
        rows = [i for i, s in enumerate(sources) if s == source]
        for k, row in enumerate(rows):
            expected = Window(center, width).apply(np.rot90(volumes[source][:, :, k]))
            assert np.array_equal(data.images[row, 0].numpy(), expected), (source, k)
    info = yaml.safe_load((tmp_path / "root" / "nii" / "info.yaml").read_text())
    assert info["import"]["window"]["name"] == "lung"


def test_pretrain_and_evaluate_an_imported_folder(tmp_path: Path) -> None:
    from medzoo.config import from_dict, load_pretrain_config
    from medzoo.evaluate import EvalConfig, evaluate
    from medzoo.pretrain import pretrain

    _gray_pngs(tmp_path / "src", per_class=16)
    root = tmp_path / "root"
    import_folder(tmp_path / "src", root, "mine", size=32, domain="Breast ultrasound")
    cfg = load_pretrain_config(
        Path(__file__).resolve().parents[1] / "recipes" / "pretrain-crc.toml",
        [
            'name="bt-mine-tiny"', 'data.domain="mine"', 'augment.preset="auto"',
            "data.channels=1", "model.in_chans=1", "data.image_size=32",
            "model.projector_dims=[64, 64]", "training.batch_size=8", "training.max_steps=3",
            "training.checkpoint_every_steps=3",
        ],
    )  # fmt: skip
    pretrain(cfg, data_root=root, out=tmp_path / "run", progress=False)
    raw = {
        "name": "eval-mine", "datasets": ["mine"], "inits": ["bt-mine-tiny"],
        "strategies": ["probe"], "fractions": [1.0], "seeds": [0], "device": "cpu",
        "probe": {"weight_decays": [1e-3], "max_iter": 20},
    }  # fmt: skip
    out = evaluate(from_dict(EvalConfig, raw), data_root=root, out=tmp_path / "eval")
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 1 and rows[0]["dataset"] == "mine" and rows[0]["n_test"] == 6
