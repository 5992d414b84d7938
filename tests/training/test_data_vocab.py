"""Class vocabulary and mask splits (the A/B flags)."""

from __future__ import annotations

import json

import pytest

from training.class_tables import coco_classes, synset_to_coco_name, voc_class_names
from training.datasets.vocab import ClassVocabulary, mask_split

PAIRS = [("person", 1), ("dog", 18), ("cup", 47), ("chair", 62), ("teddy bear", 88)]


def test_from_categories_orders_by_id_and_maps_labels() -> None:
    cats = [{"id": i, "name": n} for n, i in reversed(PAIRS)]
    vocab = ClassVocabulary.from_categories(cats, "voc")
    assert vocab.names == ("person", "dog", "cup", "chair", "teddy bear")
    assert vocab.source_ids == (1, 18, 47, 62, 88)
    assert vocab.mask_classes == (True, True, False, True, False)
    assert vocab.num_classes == 5
    assert vocab.label("cup") == 3 and vocab.label(47) == 3 and vocab.index(88) == 4
    assert vocab.a_indices == [0, 1, 3] and vocab.b_indices == [2, 4]
    assert "dog" in vocab and 18 in vocab and "cat" not in vocab and 2 not in vocab
    with pytest.raises(KeyError, match="'cat'"):
        vocab.label("cat")


def test_dict_round_trip_is_json_and_contract_shaped() -> None:
    vocab = ClassVocabulary(("a", "b"), (True, False), (3, 7))
    d = json.loads(json.dumps(vocab.to_dict()))
    assert d == {"names": ["a", "b"], "mask_classes": [True, False], "source_ids": [3, 7]}
    assert ClassVocabulary.from_dict(d) == vocab


@pytest.mark.parametrize(
    ("names", "flags", "ids", "match"),
    [
        (("a", "a"), (True, True), (1, 2), "duplicate class name"),
        (("a", "b"), (True, True), (1, 1), "duplicate class source id"),
        (("a", "b"), (True,), (1, 2), "2 names but 1 mask_classes"),
    ],
)
def test_invalid_vocabulary_is_rejected(names, flags, ids, match) -> None:
    with pytest.raises(ValueError, match=match):
        ClassVocabulary(names, flags, ids)


def test_named_splits() -> None:
    assert mask_split(PAIRS, "all") == [True] * 5
    assert mask_split(PAIRS, "none") == [False] * 5
    assert mask_split(PAIRS, "voc") == [True, True, False, True, False]
    assert mask_split(PAIRS, "nonvoc") == [False, False, True, False, True]


def test_voc_split_on_full_coco_is_the_papers_20_60() -> None:
    pairs = [(c.name, c.coco_id) for c in coco_classes()]
    voc = mask_split(pairs, "voc")
    assert sum(voc) == 20 and sum(mask_split(pairs, "nonvoc")) == 60
    assert {n for (n, _), f in zip(pairs, voc, strict=True) if f} == set(voc_class_names())


def test_voc_split_needs_coco_names() -> None:
    with pytest.raises(ValueError, match="none of the vocabulary's names is a COCO class"):
        mask_split([("circle-red", 1), ("square-blue", 2)], "voc")


def test_split_file_of_names_and_ids(tmp_path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("# mask classes\nperson\n\n47  # cup by id\n")
    assert mask_split(PAIRS, f) == [True, False, True, False, False]
    vocab = ClassVocabulary.from_categories([{"id": i, "name": n} for n, i in PAIRS], str(f))
    assert vocab.a_indices == [0, 2]


def test_split_file_unknown_entry_names_file_and_line(tmp_path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("person\nunicorn\n")
    with pytest.raises(ValueError, match=r"a\.txt:2: mask class 'unicorn'"):
        mask_split(PAIRS, f)


def test_unknown_split_spec() -> None:
    with pytest.raises(ValueError, match="neither one of all, voc, nonvoc, none"):
        mask_split(PAIRS, "vocc")


def test_coco_synset_table() -> None:
    classes = coco_classes()
    assert len(classes) == 80
    assert [c.coco_id for c in classes] == sorted(c.coco_id for c in classes)
    assert classes[0].name == "person" and classes[-1].name == "toothbrush"
    by_name = {c.name: c for c in classes}
    # The reference's mappings for classes whose Visual Genome synset is not "<name>.n.01".
    assert by_name["dining table"].synset == "dinner_table.n.01"
    assert by_name["couch"].synset == "sofa.n.01"
    assert by_name["tv"].synset == "television.n.01"
    assert "television_receiver.n.01" in by_name["tv"].aliases
    all_synsets = [s for c in classes for s in c.synsets]
    assert len(all_synsets) == len(set(all_synsets)), "a synset labels two COCO classes"
    assert synset_to_coco_name()["mouse.n.01"] == "mouse"
    assert set(voc_class_names()) <= set(by_name)
