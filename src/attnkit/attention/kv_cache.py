"""Key/value cache for incremental decoding, one instance per attention layer.

Keys are stored after RoPE, so cached keys never need rotating again. Storage is
(B, Hkv, capacity, D); ``update`` writes the new tokens in place and returns views of the
filled prefix. With ``max_len`` the storage is allocated once at first use and overflowing it
is an error; without it the storage grows by doubling. Meant for inference (no_grad): the
storage is written in place.
"""

from __future__ import annotations

import torch

from attnkit._util.checks import int_in, optional_positive_int, positive_int


class KVCache:
    """Per-layer key/value cache.

    >>> cache = KVCache(max_len=64)
    >>> k_all, v_all = cache.update(k_new, v_new)   # k_new (B, Hkv, T_new, D)
    >>> cache.length                                 # tokens stored so far

    Batch size, head count, head dim, dtype and device are taken from the first update; later
    updates must match them. ``dtype`` stores keys and values in another dtype than the model's
    (e.g. float32 for a bfloat16 model on a CPU without bfloat16 arithmetic); ``update`` then
    returns that dtype and attention runs in it. ``reset()`` empties the cache and keeps the storage.
    """

    def __init__(self, max_len: int | None = None, dtype: torch.dtype | None = None):
        optional_positive_int("max_len", max_len)
        if dtype is not None and (
            not isinstance(dtype, torch.dtype) or not dtype.is_floating_point
        ):
            raise ValueError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
        self.max_len = max_len
        self.dtype = dtype  # storage dtype; None: the dtype of the first update
        self.length = 0
        self.k: torch.Tensor | None = None  # (B, Hkv, capacity, D)
        self.v: torch.Tensor | None = None  # (B, Hkv, capacity, D)

    @classmethod
    def for_layers(
        cls, n_layers: int, max_len: int | None = None, dtype: torch.dtype | None = None
    ) -> list[KVCache]:
        """One empty cache per layer.

        Examples:
            >>> caches = KVCache.for_layers(12, max_len=1024)
        """
        positive_int("n_layers", n_layers)
        return [cls(max_len, dtype) for _ in range(n_layers)]

    @property
    def capacity(self) -> int:
        """Tokens the allocated storage holds (0 before the first update).

        Examples:
            >>> KVCache(max_len=64).capacity  # 0 until the first update
        """
        return 0 if self.k is None else self.k.shape[2]

    def _check(self, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        if k_new.dim() != 4 or v_new.dim() != 4:
            raise ValueError(
                f"k and v must be (B, Hkv, T, D), got shapes {tuple(k_new.shape)} "
                f"and {tuple(v_new.shape)}"
            )
        if k_new.shape[:3] != v_new.shape[:3]:
            raise ValueError(
                f"k and v disagree on (B, Hkv, T): {tuple(k_new.shape)} vs {tuple(v_new.shape)}"
            )
        if k_new.dtype != v_new.dtype or k_new.device != v_new.device:
            raise ValueError(
                f"k and v must share dtype and device, got {k_new.dtype}/"
                f"{k_new.device} and {v_new.dtype}/{v_new.device}"
            )
        store = self.dtype or k_new.dtype
        if (
            self.k is not None
            and self.v is not None
            and self.length == 0
            and (
                self.k.shape[:2] != k_new.shape[:2]
                or self.k.shape[3] != k_new.shape[3]
                or self.v.shape[3] != v_new.shape[3]
                or self.k.dtype != store
                or self.k.device != k_new.device
            )
        ):
            self.k = self.v = None  # empty cache reused for other shapes: drop the storage
        if self.k is not None and self.v is not None:
            want = (self.k.shape[0], self.k.shape[1], self.k.shape[3], self.v.shape[3])
            got = (k_new.shape[0], k_new.shape[1], k_new.shape[3], v_new.shape[3])
            if want != got:
                raise ValueError(
                    f"cache holds (B, Hkv, Dk, Dv)={want}, update has {got}; "
                    f"call reset() before reusing the cache for other shapes"
                )
            if store != self.k.dtype or k_new.device != self.k.device:
                raise ValueError(
                    f"cache holds {self.k.dtype} on {self.k.device}, update has "
                    f"{k_new.dtype} on {k_new.device}"
                )

    def _allocate(self, like_k: torch.Tensor, like_v: torch.Tensor, capacity: int) -> None:
        b, h = like_k.shape[:2]
        dtype = self.dtype or like_k.dtype
        k = like_k.new_zeros(b, h, capacity, like_k.shape[3], dtype=dtype)  # (B, Hkv, capacity, D)
        v = like_v.new_zeros(b, h, capacity, like_v.shape[3], dtype=dtype)  # (B, Hkv, capacity, Dv)
        if self.k is not None and self.v is not None and self.length:
            k[:, :, : self.length] = self.k[:, :, : self.length]
            v[:, :, : self.length] = self.v[:, :, : self.length]
        self.k, self.v = k, v

    def update(self, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k_new, v_new (B, Hkv, T_new, D); return all keys and values so far,
        (B, Hkv, length, D) each.

        Examples:
            >>> k_all, v_all = cache.update(torch.randn(1, 4, 3, 16), torch.randn(1, 4, 3, 16))
        """
        self._check(k_new, v_new)
        t_new = k_new.shape[2]
        end = self.length + t_new
        if self.max_len is not None and end > self.max_len:
            raise ValueError(
                f"KVCache overflow: holds {self.length} tokens, adding {t_new} "
                f"would make {end} > max_len={self.max_len}"
            )
        if end > self.capacity or self.k is None:  # also a first update of 0 tokens
            if self.max_len is not None:
                cap = self.max_len
            else:
                cap = max(16, self.capacity)
                while cap < end:
                    cap *= 2
            self._allocate(k_new, v_new, cap)
        k, v = self.k, self.v
        if k is None or v is None:  # pragma: no cover - allocated above
            raise RuntimeError("KVCache storage is missing after allocation")
        k[:, :, self.length : end] = k_new
        v[:, :, self.length : end] = v_new
        self.length = end
        return k[:, :, :end], v[:, :, :end]

    def truncate(self, length: int) -> None:
        """Forget every token from ``length`` on (e.g. after rejected speculative tokens).

        Examples:
            >>> cache.truncate(cache.length - 2)
        """
        int_in("length", length, 0, self.length)
        self.length = length

    def reset(self) -> None:
        """Empty the cache; the storage is kept for reuse.

        Examples:
            >>> cache.reset(); cache.length
        """
        self.length = 0

    def __repr__(self) -> str:
        shape = None if self.k is None else tuple(self.k.shape)
        return f"KVCache(length={self.length}, max_len={self.max_len}, storage={shape})"
