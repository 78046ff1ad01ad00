"""Fine-tune a sentence classifier (all-MiniLM-L6-v2 with a classification head) on a small
labelled CSV file (columns text,label), then classify new sentences with the saved model.

    python examples/finetune_classifier.py train.csv eval.csv --epochs 3
    python examples/finetune_classifier.py --epochs 1   # a small built-in sports/animals set
"""

import argparse
import csv
import tempfile
from pathlib import Path

from attnkit.tasks.classification import finetune, predict

SPORTS = [
    "he swung the bat hard",
    "the striker scored a goal",
    "she served an ace",
    "the batter hit a home run",
    "the team won the match",
    "he kicked the ball wide",
]
ANIMALS = [
    "a bat flew out of the cave",
    "the owl hunts at night",
    "the cat chased a mouse",
    "bats sleep hanging upside down",
    "the dog wagged its tail",
    "a fox crossed the field",
]

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("train", nargs="?", help="CSV with text,label columns")
parser.add_argument("eval", nargs="?", help="CSV with text,label columns (default: train)")
parser.add_argument("--model", default="minilm")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--out", default="", help="where the classifier is saved (default: temp)")
args = parser.parse_args()

work = Path(tempfile.mkdtemp(prefix="attnkit-finetune-"))
train = args.train
if train is None:  # write the built-in set as a CSV, as your own file would be
    train = work / "train.csv"
    with open(train, "w", newline="", encoding="utf-8") as f:
        rows = [(t, "sports") for t in SPORTS] + [(t, "animals") for t in ANIMALS]
        csv.writer(f).writerows([("text", "label"), *rows])
out = args.out or work / "classifier"
result = finetune(
    args.model,
    train,
    args.eval or train,
    out=out,
    epochs=args.epochs,
    batch_size=8,
    lr=1e-4,
    max_length=32,
    patience=args.epochs,
)
print(
    f"best eval macro-F1 {result.best['macro_f1']:.3f} "
    f"(majority-class baseline {result.baseline['macro_f1']:.3f}); saved to {out}"
)
new = ["the pitcher threw a fast ball", "a bat hung from the cave roof"]
for text, p in zip(new, predict(out, new)):
    print(f"{p.label}\t{text}")
