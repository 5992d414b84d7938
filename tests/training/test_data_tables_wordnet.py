"""The COCO→synset table names real WordNet 3.0 synsets.

Needs the WordNet database of the Debian package ``wordnet-base`` (/usr/share/wordnet), which
``make system-deps`` (part of ``make test``) installs; skipped, saying so, where it is missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from training.class_tables import coco_classes

WORDNET = Path("/usr/share/wordnet")


@pytest.mark.skipif(
    not (WORDNET / "index.noun").is_file(),
    reason="wordnet-base not installed: run `make system-deps` (or apt-get install wordnet-base)",
)
def test_every_synset_exists_in_wordnet() -> None:
    senses: dict[str, int] = {}
    for line in (WORDNET / "index.noun").read_text(encoding="latin-1").splitlines():
        if line and not line.startswith(" "):
            parts = line.split()
            senses[parts[0]] = int(parts[2])
    missing = []
    for c in coco_classes():
        for synset in c.synsets:
            lemma, pos, sense = synset.rsplit(".", 2)
            if pos != "n" or senses.get(lemma.lower(), 0) < int(sense):
                missing.append(f"{c.name}: {synset}")
    assert not missing
