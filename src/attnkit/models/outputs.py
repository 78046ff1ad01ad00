"""ModelOutput: what a model's forward pass returns.

    >>> out = model(ids, labels=ids)        # a GPT: next-token loss
    >>> out.loss.backward()
    >>> out.logits.shape                    # (B, T, V)

``loss`` is None unless ``labels`` were given. ``logits`` are the head's scores: next-token
(B, T, V) for a GPT, masked-token (B, T, V) for BERT's MLM head, classes (B, num_labels) for
a classifier; None for a model without a head (``head="none"``). ``hidden_states`` are the
final hidden states (B, T, C), after the final norm: what ``model.hidden_states(...)``
returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["IGNORE_INDEX", "ModelOutput", "classification_loss", "lm_loss", "mlm_loss"]

# a label that takes no part in a loss (PyTorch's and HF's convention)
IGNORE_INDEX = -100


@dataclass
class ModelOutput:
    """The loss (with labels), the logits (with a head) and the final hidden states.

    Args:
        loss: the scalar loss, None without labels.
        logits: (B, T, V) token scores, or (B, num_labels) class scores; None without a head.
        hidden_states: (B, T, C) final hidden states, after the final norm.

    Examples:
        >>> ModelOutput(hidden_states=torch.zeros(2, 16, 64)).loss is None
        True
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None


def _check_labels(labels: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point:
        got = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor ({what}), got {got}")
    if tuple(labels.shape) != shape:
        raise ValueError(f"labels must have shape {shape} ({what}), got {tuple(labels.shape)}")


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts ``labels[:, t + 1]`` (labels are the input
    ids, shifted here as in HF and nanoGPT); labels of IGNORE_INDEX take no part.

    Args:
        logits: (B, T, V) next-token scores.
        labels: (B, T) integer ids (the input ids), -100 where ignored.

    Returns:
        The mean over the counted positions, a float32 scalar.

    Raises:
        ValueError: ``labels`` is not an integer tensor of shape (B, T).

    Examples:
        >>> lm_loss(torch.randn(2, 16, 256), torch.randint(0, 256, (2, 16)))  # scalar
    """
    B, T, V = logits.shape
    _check_labels(labels, (B, T), "(B, T), the input ids; -100 ignored")
    shifted = logits[:, :-1].reshape(-1, V).float()  # (B * (T-1), V)
    target = labels[:, 1:].reshape(-1)  # (B * (T-1),)
    return F.cross_entropy(shifted, target, ignore_index=IGNORE_INDEX)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masked-token cross-entropy over the positions whose label is not IGNORE_INDEX.

    Args:
        logits: (B, T, V) token scores.
        labels: (B, T) integer ids: the original id where a token was masked, -100 elsewhere.

    Returns:
        The mean over the counted positions, a float32 scalar.

    Raises:
        ValueError: ``labels`` is not an integer tensor of shape (B, T).

    Examples:
        >>> labels = torch.full((2, 16), -100); labels[:, 3] = 7  # only position 3 counts
        >>> mlm_loss(torch.randn(2, 16, 512), labels)  # scalar
    """
    B, T, V = logits.shape
    _check_labels(labels, (B, T), "(B, T), the original ids where masked, -100 elsewhere")
    return F.cross_entropy(
        logits.reshape(-1, V).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over classes (mean over the batch, float32).

    Args:
        logits: (B, num_labels) class scores.
        labels: (B,) integer class ids.

    Raises:
        ValueError: ``labels`` is not an integer tensor of shape (B,).

    Examples:
        >>> classification_loss(torch.randn(4, 2), torch.tensor([0, 1, 1, 0]))  # scalar
    """
    _check_labels(labels, (logits.shape[0],), "(B,), class ids")
    return F.cross_entropy(logits.float(), labels)
