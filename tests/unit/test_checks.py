"""The shared validators of attnkit._util.checks: what each accepts and what it says."""

from __future__ import annotations

import math

import pytest

from attnkit._util import checks


def test_accepted_values_come_back():
    assert checks.positive_int("n", 3) == 3
    assert checks.non_negative_int("n", 0) == 0
    assert checks.int_at_least("n", 300, 300) == 300
    assert checks.optional_positive_int("n", None) is None
    assert checks.probability("p", 0) == 0.0 and isinstance(checks.probability("p", 0), float)
    assert checks.in_range("p", 1.0, 0, 1, high_open=False) == 1.0
    assert checks.positive_float("lr", 1) == 1.0
    assert checks.non_negative_float("wd", 0.0) == 0.0
    assert checks.choice("metric", "loss", ("loss", "accuracy")) == "loss"
    assert checks.flag("f", False) is False


@pytest.mark.parametrize(
    "call, message, wrong_type",
    [
        (
            lambda: checks.positive_int("train.batch_size", 0),
            "train.batch_size must be a positive int, got 0",
            False,
        ),
        (lambda: checks.positive_int("n", True), "n must be a positive int, got True", True),
        (lambda: checks.positive_int("n", 2.5), "n must be a positive int, got 2.5", True),
        (lambda: checks.non_negative_int("seed", -1), "seed must be an int >= 0, got -1", False),
        (lambda: checks.int_at_least("v", 10, 300), "v must be an int >= 300, got 10", False),
        (
            lambda: checks.optional_positive_int("m", 0),
            "m must be a positive int or None, got 0",
            False,
        ),
        (
            lambda: checks.probability("dropout", 1.0),
            "dropout must be a float in [0, 1), got 1.0",
            False,
        ),
        (
            lambda: checks.probability("dropout", "0.1"),
            "dropout must be a float in [0, 1), got '0.1'",
            True,
        ),
        (
            lambda: checks.in_range("p", 0.0, 0, 1, low_open=True),
            "p must be a float in (0, 1), got 0.0",
            False,
        ),
        (
            lambda: checks.in_range("p", math.nan, 0, 1),
            "p must be a float in [0, 1), got nan",
            False,
        ),
        (lambda: checks.positive_float("lr", 0), "lr must be a finite number > 0, got 0", False),
        (
            lambda: checks.positive_float("lr", math.inf),
            "lr must be a finite number > 0, got inf",
            False,
        ),
        (
            lambda: checks.non_negative_float("wd", -0.1),
            "wd must be a finite number >= 0, got -0.1",
            False,
        ),
        (
            lambda: checks.choice("metric", "f1", ("loss", "accuracy")),
            "metric must be one of ['loss', 'accuracy'], got 'f1'",
            False,
        ),
        (
            lambda: checks.choice("metric", ["x"], {"loss"}),
            "metric must be one of ['loss'], got ['x']",
            False,
        ),
        (lambda: checks.flag("compile", 1), "compile must be a bool, got 1", True),
    ],
)
def test_rejections_name_the_field_the_value_and_what_was_expected(call, message, wrong_type):
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value) == message
    assert isinstance(info.value, TypeError) is wrong_type


def test_int_in_bounds_both_ends_and_numpy_reals_count_as_numbers():
    import numpy as np

    assert checks.int_in("length", 0, 0, 5) == 0 and checks.int_in("length", 5, 0, 5) == 5
    with pytest.raises(ValueError) as info:
        checks.int_in("length", 6, 0, 5)
    assert str(info.value) == "length must be an int in 0..5, got 6"
    assert not isinstance(info.value, TypeError)
    with pytest.raises(TypeError, match=r"max_entries must be an int in \[1, 255\], got 2.0"):
        checks.int_in("max_entries", 2.0, 1, 255, "an int in [1, 255]")
    assert checks.in_range("mass", np.float32(0.5), 0, 1, low_open=True, high_open=False) == 0.5
    with pytest.raises(TypeError):
        checks.positive_float("lr", np.bool_(True))
