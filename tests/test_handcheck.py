"""The hand-caption check read from label files: agreement, teacher digest, records and the model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drivecap.captions.facts import Facts
from drivecap.training import handcheck as H


def _facts(*keys: str) -> dict[str, object]:
    return Facts.from_keys(keys).to_json()


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture()
def labelled(tmp_path: Path) -> tuple[Path, Path]:
    """Three hand frames; label files hold two of them (one mirrored record with other facts beside each)."""
    hand = tmp_path / "hand.jsonl"
    _write_jsonl(
        hand,
        [
            {"clip": "a", "frame": 3, "facts": _facts("vehicle:left", "vehicle:ahead")},
            {"clip": "a", "frame": 7, "facts": _facts("person:right")},
            {"clip": "b", "frame": 1, "facts": _facts("vehicle:right")},
        ],
    )
    labels = tmp_path / "labels"
    labels.mkdir()
    _write_jsonl(
        labels / "a.jsonl",
        [
            {"clip": "a", "frame": 3, "mirrored": False, "facts": _facts("vehicle:left", "person:left")},
            {"clip": "a", "frame": 3, "mirrored": True, "facts": _facts("vehicle:ahead", "vehicle:right")},
            {"clip": "a", "frame": 7, "mirrored": False, "facts": _facts("person:right")},
            {"clip": "a", "frame": 8, "mirrored": False, "facts": _facts("vehicle:right")},
        ],
    )
    (labels / "stats.json").write_text(json.dumps({"a": {"teacher": "abc123"}, "b": {"teacher": "abc123"}}))
    return hand, labels


def test_label_files_are_scored_against_the_hand_frames(labelled: tuple[Path, Path]) -> None:
    hand, labels = labelled
    res = H.label_agreement(labels, hand)
    # Frame b:1 has no label file: missing, not a miss. a:3 has 1 right, 1 wrong, 1 missed; a:7 exact.
    assert res["frames"] == 2 and res["missing"] == 1 and res["hand"] == "hand.jsonl"
    assert res["keys"]["hand_keys"] == 3
    assert res["keys"]["precision"] == pytest.approx(2 / 3, abs=1e-3)
    assert res["keys"]["recall"] == pytest.approx(2 / 3, abs=1e-3)
    assert res["ahead"]["recall"] == 0.0 and res["exact"] == 0.5
    assert H.labels_digest(labels) == "abc123"
    (labels / "stats.json").write_text(json.dumps({"a": {"teacher": "abc123"}, "b": {"teacher": "def456"}}))
    assert H.labels_digest(labels) == "mixed"
    assert H.labels_digest(labels / "nowhere") == "unknown"


def test_a_record_replaces_the_same_teacher_and_hand_file(
    labelled: tuple[Path, Path], tmp_path: Path
) -> None:
    hand, labels = labelled
    book = tmp_path / "checks.jsonl"
    res = H.label_agreement(labels, hand)
    H.record_check(res, "mine", "abc123", "labels", book)
    H.record_check(res, "other", "fff000", "labels", book)
    H.record_check(res | {"exact": 0.25}, "mine again", "abc123", "labels", book)
    rows = H.recorded_checks(book)
    assert [(r["name"], r["exact"]) for r in rows] == [("other", 0.5), ("mine again", 0.25)]
    assert H.recorded_checks(tmp_path / "none.jsonl") == []


def test_the_shipped_records_name_both_teachers_by_their_digests() -> None:
    from drivecap.training.teacher_settings import TeacherSettings

    names = {r["digest"]: r["name"] for r in H.recorded_checks()}
    assert names[TeacherSettings.first().digest()] == "first"
    assert names[TeacherSettings().digest()] == "default"


def test_the_model_card_says_which_teacher_and_how_it_agrees(labelled: tuple[Path, Path]) -> None:
    from drivecap.training.card import _teacher_section
    from drivecap.training.teacher_settings import TeacherSettings

    hand, labels = labelled
    res = H.label_agreement(labels, hand)
    report = {"teacher": {"digest": TeacherSettings().digest(), "check": res, "tuning": res}}
    text = "\n".join(_teacher_section(report))
    assert f"`default` teacher (settings digest `{TeacherSettings().digest()}`" in text
    assert "key F1 0.667 (P 0.667 / R 0.667, 3 hand keys)" in text
    assert "| default (these labels) |" in text and "| first |" in text
    assert _teacher_section({}) == []


def test_a_cards_teacher_section_is_written_from_the_labels_it_was_trained_on(
    labelled: tuple[Path, Path], tmp_path: Path
) -> None:
    from drivecap.assets import sha256_file
    from drivecap.errors import DrivecapError
    from drivecap.training.card import update_teacher_section

    _, labels = labelled
    card = tmp_path / "MODEL_CARD.md"
    listed = f"- Label files read (sha256, first 12): a.jsonl {sha256_file(labels / 'a.jsonl')[:12]}.\n"
    card.write_text(f"# card\n\n## Data\n\n{listed}\n## Training and model choice\n\n- trained\n")
    update_teacher_section(card, labels)
    once = card.read_text()
    assert "\n## Teacher\n" in once and "settings digest `abc123`" in once
    assert once.index("## Data") < once.index("## Teacher") < once.index("## Training and model choice")
    assert "\n\n## Training and model choice\n" in once  # a blank line before the next section
    update_teacher_section(card, labels)
    assert card.read_text() == once  # replaced, not added again
    last = f"# card\n\n{listed}\n## Teacher\n\nold words\n"  # a Teacher section that ends the card
    card.write_text(last)
    update_teacher_section(card, labels)
    assert card.read_text().count("## Teacher") == 1 and "old words" not in card.read_text()
    card.write_text(once)
    # Labels other than the ones the card lists: refused, the card unchanged.
    _write_jsonl(labels / "a.jsonl", [{"clip": "a", "frame": 3, "mirrored": False, "facts": _facts()}])
    with pytest.raises(DrivecapError, match=r"a\.jsonl: sha256 .* was trained on"):
        update_teacher_section(card, labels)
    assert card.read_text() == once
    card.write_text("# card without a label list\n")
    with pytest.raises(DrivecapError, match="does not list the label files"):
        update_teacher_section(card, labels)
