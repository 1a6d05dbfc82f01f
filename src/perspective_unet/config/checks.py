"""The checks every config field goes through: type and range, with the field named in the message."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

Check = Callable[[str, Any], Any]
"""A field's check: called with the name to report and the value; returns the value (lists as tuples, paths as
strings) or raises ``ValueError`` with a message that starts with the name."""

_ENLSA_KERNELS = ("softmax", "relu")
_SCSI_ATTENTION = ("tokens", "released", "official")
SCSI_INITS = ("linear", "released")
CHECKPOINTABLE_PARTS = ("cnn", "enltb", "scsi")
PROTOCOLS = ("paper", "spacing")
OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("auto", "fp32", "bf16")
"""Numeric precisions of training and inference (``models/ops/precision.py`` says what each means where)."""
OPERATIONS = ("vflip", "hflip", "noise", "blur", "contrast", "scale", "rotate", "shear", "piecewise", "translate")
_IMAGE_MODES = ("nearest", "bilinear", "bicubic")

_TRUE_WORDS = frozenset({"true", "yes", "y", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "n", "off", "0"})


# The checks ----------------------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    """``value`` as a config file would hold it (tuples as lists, strings quoted)."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_show(k)}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, numbers.Integral):
        return "an integer"
    if isinstance(value, numbers.Real):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _got(value: Any) -> str:
    return f"got {_show(value)} ({_kind(value)})"


def _key(name: str) -> str:
    """The YAML key a reported name stands for (``model_options.use_scsi`` -> ``use_scsi``)."""
    return name.rsplit(".", 1)[-1]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _parse_number(text: str) -> int | float | None:
    for kind in (int, float):
        try:
            return kind(text.strip())
        except ValueError:
            pass
    return None


def _yaml_number(value: float) -> str:
    """``value`` written so that PyYAML reads it back as a number (e-notation needs a dot and a signed exponent)."""
    text = repr(value)
    if isinstance(value, float) and "e" in text:
        mantissa, exponent = text.split("e")
        mantissa = mantissa if "." in mantissa else mantissa + ".0"
        exponent = exponent if exponent[0] in "+-" else "+" + exponent
        text = f"{mantissa}e{exponent}"
    return text


def _text_number_hint(name: str, text: str, *, want_int: bool) -> str:
    """How to write a number given as text, or "" when the text holds no such number."""
    parsed = _parse_number(text)
    if parsed is None or not math.isfinite(parsed) or (want_int and not isinstance(parsed, int)):
        return ""
    hint = f"; write {_key(name)}: {_yaml_number(parsed)}"
    if "e" in text.lower():
        return hint + f" (YAML reads {text} as text: e-notation needs a dot and a signed exponent, as in 1.0e-4)"
    return hint + " without quotes"


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a boolean (YAML ``true``/``false``); a string such as ``"false"`` is refused."""
    if isinstance(value, bool):
        return value
    message = f"{name} must be true or false, {_got(value)}"
    if isinstance(value, str):
        word, key = value.strip().lower(), _key(name)
        if word in _TRUE_WORDS or word in _FALSE_WORDS:
            message += f"; write {key}: {'true' if word in _TRUE_WORDS else 'false'} without quotes"
        else:
            message += f"; write {key}: true or {key}: false, without quotes"
    raise ValueError(message + ".")


def _int_what(minimum: int | None) -> str:
    if minimum is None:
        return "an integer"
    return "a positive integer" if minimum == 1 else f"an integer >= {minimum}"


def check_int(name: str, value: Any, *, minimum: int | None = None, optional: bool = False, note: str = "") -> Any:
    """``value`` if it is an integer (not a boolean, not a float such as ``12.0``) of at least ``minimum``.

    ``optional`` lets None through; ``note`` follows the description of the expected value in the message.
    """
    if value is None and optional:
        return None
    what = _int_what(minimum) + (" or null" if optional else "") + note
    if _is_int(value):
        if minimum is not None and value < minimum:
            raise ValueError(f"{name} must be {what}, got {value}.")
        return value
    message = f"{name} must be {what}, {_got(value)}"
    if isinstance(value, str):
        message += _text_number_hint(name, value, want_int=True)
    elif _is_number(value) and math.isfinite(value) and float(value).is_integer():
        message += f"; write {_key(name)}: {int(value)} (integers take no decimal point)"
    raise ValueError(message + ".")


def _bounds(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"lie in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return "be positive" if low == 0 and low_open else f"be {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"be {'<' if high_open else '<='} {high}"
    return "be a number"


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> Any:
    """``value`` if it is a finite int or float (not a boolean, not a string) within the bounds.

    ``low``/``high`` bound the value, inclusive unless ``low_open``/``high_open``; ``optional`` lets None through.
    """
    if value is None and optional:
        return None
    if not _is_number(value):
        message = f"{name} must be a number{' or null' if optional else ''}, {_got(value)}"
        if isinstance(value, str):
            message += _text_number_hint(name, value, want_int=False)
        raise ValueError(message + ".")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}.")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ValueError(f"{name} must {_bounds(low, high, low_open, high_open)}, got {value}.")
    return value


def check_str(name: str, value: Any, *, optional: bool = False) -> Any:
    """``value`` if it is a string (or None when ``optional``)."""
    if isinstance(value, str) or (value is None and optional):
        return value
    raise ValueError(f"{name} must be a string{' or null' if optional else ''}, {_got(value)}.")


def check_choice(name: str, value: Any, choices: tuple[str, ...], *, optional: bool = False) -> Any:
    """``value`` if it is one of ``choices`` (or None when ``optional``)."""
    if (value is None and optional) or (isinstance(value, str) and value in choices):
        return value
    got = f"got {value!r}" if isinstance(value, str) else _got(value)
    raise ValueError(f"{name} must be one of {choices}{' or null' if optional else ''}, {got}.")


def check_path(name: str, value: Any) -> str:
    """``value`` as a string if it is a string or an ``os.PathLike``."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        return value
    raise ValueError(f"{name} must be a path (a string), {_got(value)}.")


def check_mapping(name: str, value: Any) -> Any:
    """``value`` if it is a mapping with string keys."""
    if not isinstance(value, Mapping):
        message = f"{name} must be a mapping of settings, {_got(value)}"
        if value is None:
            message += f"; leave {_key(name)} out or write {_key(name)}: {{}}"
        raise ValueError(message + ".")
    for key in value:
        if not isinstance(key, str):
            raise ValueError(f"{name} keys must be setting names (strings), got {_show(key)} ({_kind(key)}).")
    return value


def _ints_what(minimum: int | None) -> str:
    if minimum is None:
        return "integers"
    return "positive integers" if minimum == 1 else f"integers >= {minimum}"


def check_int_list(
    name: str,
    value: Any,
    *,
    length: int | None = None,
    min_length: int | None = None,
    minimum: int | None = 1,
    what: str | None = None,
) -> tuple[int, ...]:
    """``value`` as a tuple of ints if it is a list (or tuple) of integers of at least ``minimum``.

    ``length`` fixes the number of entries, ``min_length`` bounds it; ``what`` replaces the description of the
    expected value in the message (e.g. ``"[height, width], two positive integers"``).
    """
    if what is None:
        count = f"{length} " if length else f"at least {min_length} " if min_length else ""
        what = f"a list of {count}{_ints_what(minimum)}"
    if not isinstance(value, (list, tuple)):
        message = f"{name} must be {what}, {_got(value)}"
        if length and _is_int(value):
            message += f"; write {_key(name)}: [{', '.join([str(value)] * length)}]"
        raise ValueError(message + ".")
    if (length and len(value) != length) or (min_length and len(value) < min_length):
        entries = "1 entry" if len(value) == 1 else f"{len(value)} entries"
        raise ValueError(f"{name} must be {what}, got {_show(value)} ({entries}).")
    for index, item in enumerate(value):
        if not _is_int(item) or (minimum is not None and item < minimum):
            raise ValueError(
                f"{name} must be {what}, got {_show(value)}: entry {index} is {_show(item)} ({_kind(item)})."
            )
    return tuple(int(v) for v in value)


def check_number_pair(
    name: str, value: Any, *, low: float | None = None, low_open: bool = False, high: float | None = None
) -> tuple[float, float]:
    """``value`` as a tuple of two floats if it is a list ``[low, high]`` of finite numbers with low <= high.

    ``low`` bounds the first entry (exclusive with ``low_open``), ``high`` the second (inclusive).
    """
    what = "a list [low, high] of two numbers"
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{name} must be {what}, {_got(value)}.")
    for index, item in enumerate(value):
        if not _is_number(item) or not math.isfinite(item):
            raise ValueError(
                f"{name} must be a list [low, high] of two finite numbers, got {_show(value)}: entry "
                f"{index} is {_show(item)} ({_kind(item)})."
            )
    first, second = float(value[0]), float(value[1])
    fine = first <= second
    fine = fine and (low is None or (first > low if low_open else first >= low))
    fine = fine and (high is None or second <= high)
    if not fine:
        left = "" if low is None else f"{low} {'<' if low_open else '<='} "
        right = "" if high is None else f" <= {high}"
        raise ValueError(f"{name} must be [low, high] with {left}low <= high{right}, got {_show(value)}.")
    return (first, second)


def _int(minimum: int | None = None, *, optional: bool = False, note: str = "") -> Check:
    return lambda name, value: check_int(name, value, minimum=minimum, optional=optional, note=note)


def _number(**bounds: Any) -> Check:
    return lambda name, value: check_number(name, value, **bounds)


def _choice(choices: tuple[str, ...], *, optional: bool = False) -> Check:
    return lambda name, value: check_choice(name, value, choices, optional=optional)


def _pair(**bounds: Any) -> Check:
    return lambda name, value: check_number_pair(name, value, **bounds)


_PROBABILITY = _number(low=0, high=1)
_RATE = _number(low=0, high=1, high_open=True)


def _check_fields(config: Any, checks: Mapping[str, Check], *, normalize: bool) -> None:
    """Run every field's check, in field order; ``normalize`` stores what the checks return (tuples for lists)."""
    for item in dataclasses.fields(config):
        value = checks[item.name](item.name, getattr(config, item.name))
        if normalize:
            setattr(config, item.name, value)


def dataclass_from_dict(cls: type[T], data: Mapping[str, Any], what: str = "keys") -> T:
    """``cls(**data)``, with unknown keys named in one ``ValueError`` beside the known ones."""
    if not isinstance(data, Mapping):
        raise ValueError(f"expected a mapping of {what}, {_got(data)}.")
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known, key=str)
    if unknown:
        raise ValueError(f"Unknown {what} {unknown}; known keys are {sorted(known)}.")
    return cls(**data)
