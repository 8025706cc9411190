"""Every setting is documented: README's configuration table and .env.example are generated
from the Settings class (`wsm config --markdown`, `wsm config --env`) and must be current, so
an operator never has to read the code to configure wsm."""

from __future__ import annotations

import re
from pathlib import Path

from shared.settings import Settings
from wsm.config_doc import DEPLOYMENT_VARIABLES, env_example, markdown_table

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "regenerate with `wsm config --markdown` / `wsm config --env > .env.example`"


def test_readme_configuration_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    assert markdown_table() in readme, f"README's configuration table is stale: {REGENERATE}"


def test_env_example_is_current() -> None:
    assert (ROOT / ".env.example").read_text("utf-8") == env_example(), REGENERATE


def test_every_setting_has_an_alias_and_a_description() -> None:
    incomplete = [n for n, f in Settings.model_fields.items() if not (f.alias and f.description)]
    assert incomplete == [], f"settings without an env name or a description: {incomplete}"


def test_secrets_have_no_default() -> None:
    secrets = {n: f for n, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)}
    assert "webhook_hmac_key" in secrets
    with_default = [n for n, f in secrets.items() if f.default is not None]
    assert with_default == [], f"secrets with a default: {with_default}"


def test_every_variable_compose_reads_is_documented() -> None:
    lines = (ROOT / "compose.yaml").read_text("utf-8").splitlines()
    compose = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)[:}?-]", compose))
    documented = {f.alias for f in Settings.model_fields.values()} | {
        name for name, _, _ in DEPLOYMENT_VARIABLES
    }
    assert used - documented == set(), "add them to DEPLOYMENT_VARIABLES in wsm/config_doc.py"


def test_every_compose_variable_offered_is_read_by_compose() -> None:
    """.env.example offers DEPLOYMENT_VARIABLES for compose; one compose does not read would be
    set and silently do nothing (found by an audit: REDIS_APPENDFSYNC, while compose runs
    `appendfsync always` unconditionally)."""
    lines = (ROOT / "compose.yaml").read_text("utf-8").splitlines()
    compose = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)[:}?-]", compose))
    offered = {name for name, _, _ in DEPLOYMENT_VARIABLES}
    assert offered - used == set(), "compose reads none of these: drop them from config_doc"
