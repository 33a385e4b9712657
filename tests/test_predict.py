"""``medzoo predict`` on synthetic image files: torch and ONNX agree, inputs are checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medzoo.cli import main
from medzoo.export.predict import predict

CLASSIFIER = "t-pred-r18-tissue"
BACKBONE = "t-pred-r18"
CROPPING = "t-pred-r18-crop"  # crop_pct < 1 and bicubic: the rule is not a plain resize


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Path:
    """A 9-class crc classifier and a backbone at 32 px, registered once for the module."""
    import timm

    from medzoo.data.mimeta import load_split
    from medzoo.zoo.entry import ZooEntry
    from medzoo.zoo.index import save_entry

    home = tmp_path_factory.mktemp("predict-home")
    names = load_split(synth_root, "crc", "test").class_names
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDZOO_HOME", str(home))
        classifier = timm.create_model("resnet18", num_classes=len(names), zero_init_last=False)
        save_entry(
            ZooEntry(name=CLASSIFIER, method="linear-probe", datasets=("crc",), input_size=(3, 32, 32),
                     num_classes=len(names), label_names=names),
            classifier.state_dict(),
        )  # fmt: skip
        save_entry(
            ZooEntry(name=BACKBONE, input_size=(3, 32, 32)),
            timm.create_model("resnet18", num_classes=0).state_dict(),
        )
        save_entry(
            ZooEntry(name=CROPPING, method="linear-probe", input_size=(3, 32, 40), crop_pct=0.8,
                     interpolation="bicubic", num_classes=len(names), label_names=names),
            classifier.state_dict(),
        )  # fmt: skip
    return home


@pytest.fixture
def zoo(shared_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDZOO_HOME", str(shared_home))
    return shared_home


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> list[str]:
    """Synthetic test images as PNG (RGB and grayscale), JPEG and TIFF, some not at 32 px."""
    from PIL import Image

    from medzoo.data.mimeta import load_split

    folder = tmp_path_factory.mktemp("images")
    arrays = load_split(synth_root, "crc", "test").images[:6].permute(0, 2, 3, 1).numpy()
    paths = []
    for i, array in enumerate(arrays):
        image = Image.fromarray(array)
        if i == 1:
            image = image.convert("L")  # converted back to 3 channels by predict
        if i == 2:
            image = image.resize((48, 40))  # resized to the entry's 32 x 32
        suffix = {3: ".jpg", 4: ".tiff"}.get(i, ".png")
        path = folder / f"img{i}{suffix}"
        image.save(path)
        paths.append(str(path))
    return paths


def test_predict_torch_and_onnx_give_the_same_labels(
    zoo: Path, images: list[str], tmp_path: Path
) -> None:
    plain = predict(CLASSIFIER, images, top_k=3)
    exported = predict(CLASSIFIER, images, onnx=True, top_k=3, export_dir=tmp_path / "exp")
    assert (tmp_path / "exp" / "model.onnx").is_file()  # exported (and verified) on demand
    assert [r["path"] for r in plain] == images
    for a, b in zip(plain, exported):
        assert [p["label"] for p in a["top_k"]] == [p["label"] for p in b["top_k"]]
        np.testing.assert_allclose(
            [p["probability"] for p in a["top_k"]],
            [p["probability"] for p in b["top_k"]],
            atol=1e-5,
        )
        assert len(a["top_k"]) == 3
        probabilities = [p["probability"] for p in a["top_k"]]
        assert (
            probabilities == sorted(probabilities, reverse=True)
            and 0 < sum(probabilities) <= 1 + 1e-6
        )
    from medzoo.zoo.index import model_info

    assert {p["label"] for r in plain for p in r["top_k"]} <= set(
        model_info(CLASSIFIER).label_names
    )


def test_predict_cli_json_and_table(
    zoo: Path, images: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", CLASSIFIER, *images[:2], "--top-k", "2", "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert [len(r["top_k"]) for r in parsed] == [2, 2]
    assert main(["predict", BACKBONE, images[0]]) == 0
    assert "embedding[512]" in capsys.readouterr().out


def test_backbone_gives_embeddings(zoo: Path, images: list[str]) -> None:
    (result,) = predict(BACKBONE, images[:1])
    assert len(result["embedding"]) == 512 and all(np.isfinite(result["embedding"]))


def test_onnx_export_of_other_weights_is_refused(
    zoo: Path, images: list[str], tmp_path: Path
) -> None:
    from medzoo.errors import MedzooError
    from medzoo.export.onnx import export_model

    export_model(BACKBONE, tmp_path / "exp")
    with pytest.raises(MedzooError, match="not exported from the current weights"):
        predict(CLASSIFIER, images[:1], onnx=True, export_dir=tmp_path / "exp")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.png", "does not exist"),
        (
            lambda d: (d / "notes.png").write_text("not an image") and d / "notes.png",
            "is not an image",
        ),
    ],
)
def test_bad_image_files_give_one_line(
    zoo: Path, tmp_path: Path, make, message: str, capsys
) -> None:  # noqa: ANN001
    path = make(tmp_path)
    assert main(["predict", CLASSIFIER, str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_unknown_model_and_bad_top_k(
    zoo: Path, images: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", "no-such-model", images[0]]) == 2
    assert "unknown zoo model" in capsys.readouterr().err
    assert main(["predict", CLASSIFIER, images[0], "--top-k", "0"]) == 2
    assert "--top-k" in capsys.readouterr().err


@pytest.mark.parametrize("name", [CLASSIFIER, CROPPING])
def test_predict_gives_the_logits_of_timm_create_transform(
    zoo: Path, tmp_path: Path, name: str
) -> None:
    """A 100 x 80 image: predict == softmax(model(timm.data.create_transform(**data_config)(img)))."""
    import timm
    from PIL import Image

    import medzoo

    rng = np.random.default_rng(0)
    path = tmp_path / "wide.png"
    Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)).save(path)
    model = medzoo.load(name)
    transform = timm.data.create_transform(
        **timm.data.resolve_model_data_config(model, use_test_size=True)
    )
    with torch.inference_mode():
        logits = model(transform(Image.open(path).convert("RGB"))[None])
    expected = torch.softmax(logits, 1)[0].numpy()
    (result,) = predict(name, [path], top_k=9)
    got = np.zeros_like(expected)
    for item in result["top_k"]:
        got[item["index"]] = item["probability"]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # the library's transforms are the same transform
    ours = medzoo.transforms(name)(Image.open(path).convert("RGB"))
    torch.testing.assert_close(ours, transform(Image.open(path).convert("RGB")))
    # and the test can tell: squashing the image to the input size instead gives other numbers
    _, height, width = model.pretrained_cfg["input_size"]
    squashed = Image.open(path).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    with torch.inference_mode():
        other = torch.softmax(
            model(transform.transforms[-1](transform.transforms[-2](squashed))[None]), 1
        )
    assert np.abs(other[0].numpy() - expected).max() > 1e-4
