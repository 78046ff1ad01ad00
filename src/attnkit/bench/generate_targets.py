"""The cases of ``attnkit bench generate`` and what they must reach: each case's batch,
length, weights and target speed-up over HF float32, the memory-bandwidth limit and each side's
fraction of it, the checks of those targets, and the tables that print them
(:mod:`attnkit.bench.generate` runs the cases).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attnkit.bench import bandwidth as bw
from attnkit.bench.report import Check, Table, fmt_bytes

CASES: dict[
    str, tuple[int, int, str, float]
] = {  # name: (batch, new tokens, attnkit weights, target speed-up over HF float32)
    "b1-fp32": (1, 256, "float32", 0.95),
    "b1-bf16": (1, 256, "bfloat16", 1.8),
    "b8-fp32": (8, 128, "float32", 2.0),
    "b1-int8": (1, 256, "int8", 3.0),
}
# the sides timed beyond attnkit and HF float32: the baselines in the case's own precision
EXTRA_SIDES: dict[str, tuple[str, ...]] = {
    "b1-bf16": ("hf-bf16",),
    "b1-int8": ("torchao-int8", "int8pack-mm"),
}
SIDES: dict[str, tuple[str, str]] = {  # side: (what runs, weights; "" = the case's)
    "attnkit": ("attnkit", ""),
    "hf-fp32": ("transformers", "float32"),
    "hf-bf16": ("transformers", "bfloat16"),
    "torchao-int8": ("torchao Int8WeightOnlyConfig in attnkit's GPT", "int8"),
    "int8pack-mm": ("torch._weight_int8pack_mm in attnkit's GPT", "int8"),
}
INT8_AGREEMENT = 0.99
LIMIT_FRACTION = 0.70  # of the bandwidth limit, for the cases in LIMIT_CASES
LIMIT_CASES = ("b1-fp32", "b1-bf16", "b1-int8")


def add_limits(rows: Sequence[dict[str, Any]], bytes_per_s: float) -> None:
    """Put the bandwidth limit and each measured side's fraction of it into ``rows`` (in
    place): per side ``limit_tokens_per_s`` and ``fraction_of_limit``; per case the attnkit
    side's, as ``limit_tokens_per_s``, ``fraction_of_limit`` and ``bytes_per_token``, and HF
    float32's ``hf_fp32_fraction_of_limit``.

    Examples:
        >>> add_limits(rows, 15e9)  # rows from run(); rows[0]["fraction_of_limit"] -> 0.8
    """
    for row in rows:
        for s in row["sides"]:
            if s.get("tokens_per_s") is None:
                continue
            step = s["weight_bytes_per_step"] + s["kv_bytes_per_step"]
            s["limit_tokens_per_s"] = bw.limit_tokens_per_s(bytes_per_s, step, row["batch"])
            s["fraction_of_limit"] = bw.fraction_of_limit(
                s["tokens_per_s"], s["limit_tokens_per_s"]
            )
        ours, hf = row["sides"][0], row["sides"][1]
        row["weight_bytes_per_step"] = ours["weight_bytes_per_step"]
        row["kv_bytes_per_step"] = ours["kv_bytes_per_step"]
        row["bytes_per_token"] = ours["bytes_per_token"]
        row["limit_tokens_per_s"] = ours["limit_tokens_per_s"]
        row["fraction_of_limit"] = ours["fraction_of_limit"]
        row["hf_fp32_fraction_of_limit"] = hf["fraction_of_limit"]


def evaluate_checks(rows: Sequence[dict[str, Any]]) -> list[Check]:
    """The targets of the module docstring against case rows (as in generate.json): per case
    the speed-up over HF float32, greedy agreement (float32) or top-1 agreement (int8), and
    for :data:`LIMIT_CASES` attnkit's fraction of the bandwidth limit. A case not in
    ``rows`` gives checks that are not measured (``passed`` None).

    Examples:
        >>> [c.mark for c in evaluate_checks(rows)]  # e.g. ['PASS', 'PASS', ..., 'FAIL']
    """
    by_case = {r["case"]: r for r in rows}
    checks: list[Check] = []
    for case, (_batch, _n, weights, target) in CASES.items():
        row = by_case.get(case)
        keys = [(f"{case}-speed", f"{case}: attnkit >= {target}x HF float32 tokens/s")]
        if weights == "float32":
            keys.append((f"{case}-greedy", f"{case}: every greedy token = HF's"))
        if weights == "int8":
            keys.append(
                (f"{case}-top1", f"{case}: top-1 = float32's on >= {INT8_AGREEMENT:.0%} of steps")
            )
        if case in LIMIT_CASES:
            keys.append(
                (f"{case}-limit", f"{case}: attnkit >= {LIMIT_FRACTION:.0%} of the bandwidth limit")
            )
        if row is None:
            checks += [Check(k, t, "-", None, note="case not run") for k, t in keys]
            continue
        ours, ref = row["attnkit_tokens_per_s"], row["hf_fp32_tokens_per_s"]
        for key, text in keys:
            if key.endswith("-speed"):
                checks.append(
                    Check(
                        key,
                        text,
                        f"{row['ratio']:.2f}x",
                        row["ratio"] >= target,
                        attnkit=f"{ours:.1f} tokens/s",
                        reference=f"{ref:.1f} tokens/s",
                    )
                )
            elif key.endswith("-greedy"):
                a = row["greedy_agreement"]
                checks.append(Check(key, text, f"{100 * a:.1f}%", a == 1.0))
            elif key.endswith("-top1"):
                a = row.get("top1_vs_fp32")
                if a is None:
                    checks.append(Check(key, text, "-", None, note="not measured"))
                else:
                    checks.append(Check(key, text, f"{100 * a:.1f}%", a >= INT8_AGREEMENT))
            else:
                f, limit = row.get("fraction_of_limit"), row.get("limit_tokens_per_s")
                if f is None or limit is None:
                    checks.append(Check(key, text, "-", None, note="no bandwidth limit"))
                else:
                    checks.append(
                        Check(
                            key,
                            text,
                            f"{100 * f:.1f}%",
                            f >= LIMIT_FRACTION,
                            attnkit=f"{ours:.1f} tokens/s",
                            reference=f"limit {limit:.1f} tokens/s",
                        )
                    )
    return checks


def render_cases(rows: Sequence[dict[str, Any]], title: str) -> str:
    """The per-case table: attnkit against HF float32, and attnkit's share of the limit.

    Examples:
        >>> print(render_cases(rows, "greedy decoding"))
    """
    table = Table(
        [
            "case",
            "batch",
            "new",
            "attnkit weights",
            "attnkit tokens/s",
            "HF fp32 tokens/s",
            "ratio",
            "target",
            "greedy = HF",
            "top-1 = fp32",
            "of limit",
            "met",
        ],
        title=title,
    )
    for row in rows:
        f = row.get("fraction_of_limit")
        table.add_row(
            row["case"],
            row["batch"],
            row["new_tokens"],
            row["dtype"],
            f"{row['attnkit_tokens_per_s']:.1f}",
            f"{row['hf_fp32_tokens_per_s']:.1f}",
            f"{row['ratio']:.2f}x",
            f">= {row['target']}x",
            f"{100 * row['greedy_agreement']:.1f}%",
            f"{100 * row['top1_vs_fp32']:.1f}%" if "top1_vs_fp32" in row else "-",
            "-" if f is None else f"{100 * f:.1f}%",
            "yes" if row["met"] else "NO",
        )
    return table.render()


def render_limits(
    rows: Sequence[dict[str, Any]],
    measured: bw.ReadBandwidth,
    before: bw.ReadBandwidth,
    after: bw.ReadBandwidth,
) -> str:
    """The table of every side against the bandwidth limit, under a title saying how the
    bandwidth was measured and the limit counted.

    Examples:
        >>> print(render_limits(rows, bw_after, bw_before, bw_after))
    """
    title = (
        f"against the memory read bandwidth: {measured.gb_per_s:.1f} GB/s "
        f"(torch.{measured.kernel} over {fmt_bytes(measured.buffer_bytes)}, median of "
        f"{measured.passes} passes, {measured.threads} thread{'' if measured.threads == 1 else 's'}; "
        f"{before.gb_per_s:.1f} GB/s "
        f"before the cases, {after.gb_per_s:.1f} after, the higher counts)\n"
        "limit = batch x bandwidth / bytes a step reads (weights in their storage dtype, "
        "the KV cache at the mean context prompt + (new - 1) / 2)"
    )
    table = Table(
        [
            "case",
            "side",
            "weights",
            "tokens/s",
            "weights/step",
            "KV/step",
            "limit tokens/s",
            "of limit",
            "attnkit x",
            "top-1 = fp32",
            "greedy = HF fp32",
        ],
        title=title,
        align="llllrrrrrrr",
    )
    for row in rows:
        for s in row["sides"]:
            if s.get("tokens_per_s") is None:
                table.add_row(
                    row["case"], s["side"], s["weights"], f"skipped: {s['skipped']}",
                    *["-"] * 7,
                )  # fmt: skip
                continue
            top1 = s.get("top1_vs_fp32")
            table.add_row(
                row["case"],
                s["side"],
                s["weights"],
                f"{s['tokens_per_s']:.1f}",
                fmt_bytes(s["weight_bytes_per_step"]),
                fmt_bytes(s["kv_bytes_per_step"]),
                f"{s['limit_tokens_per_s']:.1f}",
                f"{100 * s['fraction_of_limit']:.1f}%",
                "-" if s["side"] == "attnkit" else f"{s['attnkit_vs_this']:.2f}x",
                "-" if top1 is None else f"{100 * top1:.1f}%",
                f"{100 * s['greedy_vs_hf_fp32']:.1f}%",
            )
    return table.render()
