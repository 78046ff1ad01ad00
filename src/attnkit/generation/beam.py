"""Beam search for encoder-decoder models, and the score rules shared with greedy decoding.

The search follows Hugging Face's ``generate(num_beams=K)`` step for step, so that on the same
weights the outputs are the same tokens. Per source, K running hypotheses (only the first is
live at the start) and K finished ones are kept, each with a score:

1. every running hypothesis is extended by every token: its score plus the token's log
   probability (log-softmax of the step's float32 logits, then :func:`ban_repeated_ngrams` and
   :func:`ban_eos_before`); the best 2K extensions (more with several eos ids) are taken
   (found as the 2K best of the K beams' own 2K best tokens, the same set);
2. an extension that ends in an eos id, or reaches ``max_length``, is a candidate for the
   finished set if it is among the K best: its score there is its summed log probability over
   ``generated_tokens ** length_penalty``; the K best of the finished set and the candidates
   are kept;
3. the K best extensions that did not finish run on; their self-attention caches are reordered
   into a second storage that then swaps with the first (the cross-attention keys and values
   of a source are held once for all its beams, :attr:`DecoderCache.group`, and are not
   touched);
4. a source is finished when ``early_stopping`` is True and it has K finished hypotheses, or
   when no running hypothesis can beat its worst finished one: with ``early_stopping`` False
   or True the best running score is judged at the current length, with "never" (and a
   positive length penalty) at ``max_length``. HF goes on running a finished source's beams
   (without letting them into its finished set) until every source is finished; here a
   finished source leaves the batch (:meth:`DecoderCache.select`), so a batch of sources of
   different lengths runs each step on the sources still searched, with the same result. The
   search ends when every source is finished, or at ``max_length``.

One host sync per step reads how many sources finished.

The returned rows are the best ``num_return_sequences`` finished hypotheses of each source,
best first, padded with ``pad_token_id`` to the longest.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnkit.models.encdec import DecoderCache, EncoderDecoder

__all__ = ["ban_eos_before", "ban_repeated_ngrams", "beam_search"]

_NEG = -1.0e9  # the score of an impossible hypothesis


def ban_repeated_ngrams(ids: Tensor, scores: Tensor, n: int) -> Tensor:
    """Set to -inf the score (R, V) of every token that would repeat an n-gram already in the
    row's ids (R, T) (the decoder start token included); n = 0 bans nothing.

    Args:
        ids: (R, T) token ids of each row so far.
        scores: (R, V) scores of the next token of each row.
        n: the n-gram size (HF's ``no_repeat_ngram_size``); 0 bans nothing.

    Returns:
        (R, V), a new tensor (``scores`` itself when nothing can be banned).

    Examples:
        >>> ban_repeated_ngrams(torch.tensor([[0, 5, 6, 5]]), torch.zeros(1, 8), 2)[0, 6]
        tensor(-inf)
    """
    T = ids.shape[1]
    if n == 0 or T < n:
        return scores
    tail = ids[:, T - n + 1 :]  # (R, n - 1): the n-gram the next token would complete
    grams = ids.unfold(1, n, 1)  # (R, T - n + 1, n)
    hit = (grams[..., :-1] == tail[:, None]).all(dim=-1)  # (R, T - n + 1)
    V = scores.shape[-1]
    banned = torch.zeros(scores.shape[0], V + 1, dtype=torch.bool, device=scores.device)
    banned.scatter_(1, torch.where(hit, grams[..., -1], V), True)  # misses go to column V
    return scores.masked_fill(banned[:, :V], float("-inf"))


def ban_eos_before(ids: Tensor, scores: Tensor, min_length: int, eos: Tensor) -> Tensor:
    """Set the eos ids' scores (R, V) to -inf while the rows (R, T) (start token included) are
    shorter than ``min_length``.

    Args:
        ids: (R, T) token ids of each row so far; only T is read.
        scores: (R, V) scores of the next token of each row.
        min_length: the shortest row (in ids, start token included) that may end.
        eos: (E,) int64 eos ids, on the device of ``scores``.

    Returns:
        (R, V), a new tensor (``scores`` itself when nothing is banned).

    Examples:
        >>> ban_eos_before(torch.tensor([[0, 5]]), torch.zeros(1, 4), 3, torch.tensor([2]))
        tensor([[0., 0., -inf, 0.]])
    """
    if ids.shape[1] >= min_length or eos.numel() == 0:
        return scores
    return scores.index_fill(1, eos, float("-inf"))


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """x (B, N, ...) -> x[b, index[b, j], ...] (B, J, ...)."""
    while index.dim() < x.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(x, index, dim=1)


def beam_search(
    model: EncoderDecoder,
    cache: DecoderCache,
    *,
    num_beams: int,
    max_length: int,
    min_length: int,
    length_penalty: float,
    early_stopping: bool | str,
    no_repeat_ngram_size: int,
    num_return_sequences: int,
    eos: Tensor,
    pad_token_id: int,
    decoder_start_token_id: int,
) -> Tensor:
    """Beam search (module docstring) from a cache of B sources repeated ``num_beams`` times
    each (rows b * K .. b * K + K - 1 are source b).

    The arguments are not checked here: :func:`~attnkit.generation.seq2seq.generate_seq2seq`
    checks them and calls this with ``num_beams > 1``.

    Args:
        model: the encoder-decoder whose ``decode_step`` runs each step.
        cache: the decoder cache of the B * K rows; reordered and narrowed in place.
        num_beams: K, the hypotheses kept per source.
        max_length: the longest output row, start token included.
        min_length: the shortest output row before an eos may end it.
        length_penalty: a finished hypothesis scores its summed log probability over
            ``generated_tokens ** length_penalty``.
        early_stopping: True, False or "never", as in Hugging Face's ``generate``.
        no_repeat_ngram_size: ban a token that repeats an n-gram of this size (0: none).
        num_return_sequences: the best hypotheses returned per source (at most K).
        eos: (E,) int64 eos ids on the model's device.
        pad_token_id: fills the rows after their end.
        decoder_start_token_id: the first id of every row.

    Returns:
        (B * num_return_sequences, L) decoder ids, best first per source, each row starting
        with the decoder start token; L is the longest row returned.

    Examples:
        >>> beam_search(model, cache, num_beams=4, max_length=64, min_length=0,
        ...     length_penalty=1.0, early_stopping=True, no_repeat_ngram_size=0,
        ...     num_return_sequences=1, eos=torch.tensor([2]), pad_token_id=0,
        ...     decoder_start_token_id=0)  # (B, L)
    """
    K = num_beams
    B = cache.batch_size // K
    device = eos.device
    wide = max(2, 1 + eos.numel()) * K  # extensions kept per source and step
    top_k_mask = torch.arange(wide, device=device) < K  # (2K,): the K best may finish
    early = early_stopping is True

    # the finished sets of the sources that are done, by source
    out_seqs = torch.full((B, K, max_length), pad_token_id, dtype=torch.long, device=device)
    out_lens = torch.zeros(B, K, dtype=torch.long, device=device)
    alive = torch.arange(B, device=device)  # (A,): the source of each source still searched

    running = torch.full((B, K, max_length), pad_token_id, dtype=torch.long, device=device)
    running[:, :, 0] = decoder_start_token_id
    running_scores = torch.zeros(B, K, device=device)
    running_scores[:, 1:] = _NEG  # all beams start equal: only the first is live
    done_seqs = running.clone()  # (A, K, max_length)
    done_scores = torch.full((B, K), _NEG, device=device)
    done_lens = torch.zeros(B, K, dtype=torch.long, device=device)
    is_done = torch.zeros(B, K, dtype=torch.bool, device=device)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    lp_never = early_stopping == "never" and length_penalty > 0.0

    cur = 1  # tokens in every running hypothesis
    while True:
        A = running.shape[0]
        flat = running.view(A * K, max_length)
        logits = model.decode_step(flat[:, cur - 1 : cur], cache)[:, -1].float()  # (AK, V)
        V = logits.shape[-1]
        logp = torch.log_softmax(logits, dim=-1)
        logp = ban_eos_before(flat[:, :cur], logp, min_length, eos)
        logp = ban_repeated_ngrams(flat[:, :cur], logp, no_repeat_ngram_size)
        # the best 2K of the K * V extensions of a source are among the best 2K of each
        # beam's V: those first (no pass over (A, K * V) sums), then the 2K best of the K * 2K
        per_beam = min(wide, V)
        beam_logp, beam_token = torch.topk(logp, per_beam)  # (AK, 2K)
        total = (beam_logp.view(A, K, per_beam) + running_scores[:, :, None]).view(A, -1)
        top_scores, top_index = torch.topk(total, wide)  # (A, 2K)
        parent = top_index // per_beam  # (A, 2K): the beam each extension continues
        token = _gather(beam_token.view(A, K * per_beam), top_index)
        cand = _gather(running, parent)  # (A, 2K, max_length)
        cand[:, :, cur] = token
        ends = torch.isin(token, eos) | (cur + 1 >= max_length)  # (A, 2K)

        # the K best extensions that go on
        go_on = top_scores + ends.to(torch.float32) * _NEG
        keep = torch.topk(go_on, K)[1]  # (A, K)
        running = _gather(cand, keep)
        running_scores = _gather(go_on, keep)
        beam_parent = _gather(parent, keep)

        # the finished set: the K best of the old one and the extensions that just ended
        # (a source whose set can no longer change has been dropped: see below)
        finishing = ends & top_k_mask[None, :]
        scored = top_scores / (cur**length_penalty) + (~finishing) * _NEG
        merged_scores = torch.cat((done_scores, scored), dim=1)  # (A, 3K)
        best = torch.topk(merged_scores, K)[1]  # (A, K)
        done_seqs = _gather(torch.cat((done_seqs, cand), dim=1), best)
        done_scores = _gather(merged_scores, best)
        lens = torch.full_like(top_scores, cur, dtype=torch.long)  # generated tokens of each
        done_lens = _gather(torch.cat((done_lens, lens), dim=1), best)
        is_done = _gather(torch.cat((is_done, finishing), dim=1), best)
        cur += 1

        # a source is finished when no running hypothesis can beat its worst finished one
        # (judged at the current length, or with "never" at max_length), or, with
        # early_stopping True, when it has K finished ones
        best_len = max_length - 1 if lp_never else cur - 1
        best_running = running_scores[:, :1] / (best_len**length_penalty)
        worst_done = torch.where(is_done, done_scores.min(dim=1, keepdim=True)[0], _NEG)
        improvable = improvable & (best_running > worst_done).any(dim=-1, keepdim=True)
        finished = ~improvable[:, 0]  # (A,)
        if early:
            finished |= is_done.all(dim=-1)
        n_finished, last = torch.stack((finished.sum(), ends.all())).tolist()  # one host sync
        if last or n_finished == A:
            out_seqs[alive] = done_seqs
            out_lens[alive] = done_lens
            break
        index = (beam_parent + (torch.arange(A, device=device) * K)[:, None]).view(-1)  # (AK,)
        if not n_finished:
            cache.reorder(index, memory=False)  # into the caches' second storages
            continue
        # drop the finished sources: their sets are final, no more steps are run for them
        gone = finished.nonzero()[:, 0]
        out_seqs[alive[gone]] = done_seqs[gone]
        out_lens[alive[gone]] = done_lens[gone]
        kept = (~finished).nonzero()[:, 0]  # (A',)
        cache.select(kept, index.view(A, K)[kept].view(-1))
        alive = alive[kept]
        running, running_scores = running[kept], running_scores[kept]
        done_seqs, done_scores, done_lens = done_seqs[kept], done_scores[kept], done_lens[kept]
        is_done, improvable = is_done[kept], improvable[kept]

    n = num_return_sequences
    out = out_seqs[:, :n].reshape(B * n, max_length)
    length = 1 + int(out_lens[:, :n].max())
    return out[:, :length]
