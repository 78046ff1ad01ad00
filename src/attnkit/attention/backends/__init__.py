"""Attention backends, one module each. Each takes validated (B, H, T, D) tensors and a
`MaskSpec` and returns zeros (and zero gradients) for a query that may attend to nothing.

* `math`: the readable reference; the only backend that returns the weights.
* `sdpa`: `torch.nn.functional.scaled_dot_product_attention` (fused); the only caller of SDPA.
* `flex`: FlexAttention with a BlockMask from block-level bounds, compiled once per process.
* `windowed`: a blocked band kernel for sliding windows with its own backward.

`attnkit.attention.functional.attention` picks one (see `attnkit.attention.planner`).
"""
