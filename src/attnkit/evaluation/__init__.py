"""Evaluating a trained model outside a training run.

    >>> from attnkit.evaluation import perplexity, evaluate_classifier, evaluate_sts
    >>> perplexity(attnkit.load("runs/char"), ids, block_size=64, stride=32)["perplexity"]
    >>> evaluate_classifier("runs/clf", "test.csv")["macro_f1"]
    >>> evaluate_sts(Encoder.load("minilm"), "sts-test.tsv")["spearman"]

One module per job: :mod:`~attnkit.evaluation.perplexity` (a GPT's perplexity over a token
stream, in the windows training uses, with an optional sliding stride),
:mod:`~attnkit.evaluation.classification` (accuracy, macro-F1 and the confusion matrix of a
classifier on a labelled file, from :mod:`attnkit.tasks.classification.metrics`) and
:mod:`~attnkit.evaluation.sts` (Spearman correlation of an encoder's cosine similarities with
the gold scores of sentence pairs).
"""

from attnkit.evaluation.classification import evaluate_classifier
from attnkit.evaluation.perplexity import eval_token_ids, perplexity, run_settings, window_spans
from attnkit.evaluation.sts import evaluate_sts, rank_average, read_pairs, spearman

__all__ = [
    "eval_token_ids",
    "evaluate_classifier",
    "evaluate_sts",
    "perplexity",
    "rank_average",
    "read_pairs",
    "run_settings",
    "spearman",
    "window_spans",
]
