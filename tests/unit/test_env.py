"""attnkit._util.env: CPU flags and model read from the system, and ATTNKIT_DEBUG read once
(again only on request)."""

from __future__ import annotations

from attnkit._util import env


def test_cpu_facts_are_read_once_and_consistent():
    flags = env.cpu_flags()
    assert isinstance(flags, frozenset) and env.cpu_flags() is flags
    assert env.cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})
    assert isinstance(env.cpu_model(), str) and env.cpu_model()


def test_without_cpuinfo_nothing_is_claimed(monkeypatch, tmp_path):
    monkeypatch.setattr(env, "_CPUINFO", str(tmp_path / "missing"))
    env.cpu_flags.cache_clear()
    env.cpu_model.cache_clear()
    try:
        assert env.cpu_flags() == frozenset() and not env.cpu_has_native_bf16()
        assert env.cpu_model()  # platform.processor() or "unknown"
    finally:
        env.cpu_flags.cache_clear()
        env.cpu_model.cache_clear()


def test_debug_is_read_once_and_refreshed_on_request(monkeypatch):
    before = env.debug()
    try:
        monkeypatch.setenv("ATTNKIT_DEBUG", "1")
        assert env.debug() is before  # not read again by itself
        assert env.refresh_debug() is True and env.debug() is True
        monkeypatch.setenv("ATTNKIT_DEBUG", "0")
        assert env.debug() is True  # still the value read last
        assert env.refresh_debug() is False and env.debug() is False
        monkeypatch.delenv("ATTNKIT_DEBUG")
        assert env.refresh_debug() is False
    finally:
        monkeypatch.undo()
        env.refresh_debug()
