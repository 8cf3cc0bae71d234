"""The shapes world goes to the Hub with `datasets`' own push_to_hub and comes back whole with load_dataset."""

from datasets import load_dataset

from tests.hub.conftest import USER, assert_published
from vitlm.data.shapes import generate


def test_shapes_world_round_trips_through_the_hub(hub):
    repo = f"{USER}/shapes-world"
    train, test = generate(12, seed=0, split="train", image_size=32), generate(6, seed=1, split="test", image_size=32)
    train.push_to_hub(repo, private=True)
    test.push_to_hub(repo, split="test")

    files = {".gitattributes", "README.md", "data/train-00000-of-00001.parquet", "data/test-00000-of-00001.parquet"}
    assert_published(repo, files, repo_type="dataset")
    loaded = load_dataset(repo)
    assert set(loaded) == {"train", "test"}
    for split, original in (("train", train), ("test", test)):
        assert loaded[split].features == original.features
        assert loaded[split].to_dict() == original.to_dict()  # every column; images and masks as their PNG bytes
