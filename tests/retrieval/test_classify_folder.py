"""`classify_folder` and `vitlm classify-folder`: one CSV row per image, the cached classifier's answer."""

import csv

import pytest

from vitlm.cli import main
from vitlm.models import VitlmDualEncoderForImageClassification
from vitlm.retrieval import classify_folder
from vitlm.retrieval.sources import FolderSource, decode

LABELS = ["red circle", "blue star", "green square", "yellow triangle"]


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_classify_folder_csv(collection, model, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    assert main(["classify-folder", str(collection), "--labels", ", ".join(LABELS), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    rows = read_csv(out)
    assert [row["path"] for row in rows] == FolderSource(collection).ids
    errors = {row["path"]: row["error"] for row in rows if row["error"]}
    assert sorted(errors) == ["broken.png", "nested/truncated.png"]
    dual_encoder, processor = model
    classifier = VitlmDualEncoderForImageClassification.from_dual_encoder(dual_encoder, processor.tokenizer, LABELS)
    for row in rows:
        if row["error"]:
            assert row["label"] == row["probability"] == ""
            continue
        pixels = processor.image_processor(decode(str(collection / row["path"])), return_tensors="pt")["pixel_values"]
        probabilities = classifier(pixels).logits.softmax(-1)[0]
        assert row["label"] == LABELS[probabilities.argmax()]
        assert float(row["probability"]) == pytest.approx(probabilities.max().item(), abs=1e-5)


def test_existing_output_is_kept_unless_overwrite(collection, tmp_path):
    out = tmp_path / "preds.csv"
    out.write_text("mine")
    with pytest.raises(ValueError, match="exists; pass overwrite=True"):
        classify_folder(collection, LABELS, out)
    assert out.read_text() == "mine"
    classify_folder(collection, LABELS[:2], out, overwrite=True, num_workers=0, templates=["a picture of a {}"])
    assert {row["label"] for row in read_csv(out)} <= {"", *LABELS[:2]}


@pytest.mark.parametrize(
    ("labels", "message"),
    [(" , ", "--labels names no class"), ("red,red", "`class_names` has duplicates"), ("a\x07", "control characters")],
)
def test_classify_folder_cli_errors(collection, tmp_path, capsys, labels, message):
    assert main(["classify-folder", str(collection), "--labels", labels, "--out", str(tmp_path / "p.csv")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()
