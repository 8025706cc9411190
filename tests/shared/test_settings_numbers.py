"""A number setting is a finite number: "inf" and "nan" parse as Python floats but are no
setting's value, and are refused at start naming the setting (found by an audit:
WSM_REMINDER_LEAD_HOURS=inf passed `ge=0` and failed later, in int())."""

from __future__ import annotations

import types
from typing import Any, get_args

import pydantic
import pytest

from shared.settings import Settings


def _is_float(annotation: Any) -> bool:
    if annotation is float:
        return True
    return isinstance(annotation, types.UnionType) and float in get_args(annotation)


FLOAT_SETTINGS = sorted(
    str(field.alias) for field in Settings.model_fields.values() if _is_float(field.annotation)
)


def test_there_are_float_settings_to_check() -> None:
    assert "WSM_REMINDER_LEAD_HOURS" in FLOAT_SETTINGS and len(FLOAT_SETTINGS) > 10


@pytest.mark.parametrize("alias", FLOAT_SETTINGS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
def test_a_float_setting_refuses_what_is_not_a_finite_number(alias: str, value: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=alias):
        Settings(_env_file=None, **{alias: value})  # type: ignore[call-arg]


def test_a_finite_value_is_taken() -> None:
    settings = Settings(_env_file=None, WSM_REMINDER_LEAD_HOURS="1.5")  # type: ignore[call-arg]
    assert settings.reminder_lead_ms == 5_400_000
