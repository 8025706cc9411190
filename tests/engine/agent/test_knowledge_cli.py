"""`wsm knowledge check` as an operator runs it (a subprocess): what each business's folder
holds, the passages a sample question gets, and its exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.engine.agent.conftest import CALENDAR

ROOT = Path(__file__).resolve().parents[3]

CONVENIOS = """# Convênios aceitos

Atendemos Amil Dental e OdontoPrev. Traga a carteirinha.

## Particular

Sem convênio, a consulta custa R$ 150.
"""


def wsm(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m wsm` with none of this machine's WSM_/GROQ_ settings and no .env (cwd)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WSM_", "GROQ_"))}
    clean["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "wsm", *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def business(folder: Path, name: str, title: str) -> Path:
    path = folder / name
    path.write_text(
        yaml.safe_dump({**CALENDAR, "business": {"name": title}}, allow_unicode=True), "utf-8"
    )
    return path


def test_check_lists_documents_and_shows_a_questions_passages(tmp_path: Path) -> None:
    clinic = business(tmp_path, "clinica.yaml", "Clínica Sorriso")
    (tmp_path / "knowledge").mkdir()
    (tmp_path / "knowledge" / "convenios.md").write_text(CONVENIOS, "utf-8")
    (tmp_path / "knowledge" / "antigo.txt").write_bytes("preço antigo".encode("latin-1"))
    done = wsm(
        tmp_path,
        "knowledge",
        "check",
        "--business-file",
        str(clinic),
        "--question",
        "aceitam amil?",
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "business: Clínica Sorriso" in out and str(tmp_path / "knowledge") in out
    assert "indexed: 1 documents, 2 passages" in out
    assert "convenios.md" in out and "2 passages" in out
    assert "antigo.txt" in out and "left out: not UTF-8 text" in out
    assert "1. convenios.md › Convênios aceitos  score" in out
    assert "| Atendemos Amil Dental e OdontoPrev. Traga a carteirinha." in out
    assert "R$ 150" not in out.split("question:")[1]  # not a passage this question gets

    nothing = wsm(tmp_path, "knowledge", "check", "--business-file", str(clinic), "-q", "cabelo")
    assert nothing.returncode == 0
    assert "no passage matches: the agent says it does not know and offers a person" in (
        nothing.stdout
    )


def test_check_reads_the_settings_businesses(tmp_path: Path) -> None:
    clinic = business(tmp_path, "clinica.yaml", "Clínica Sorriso")
    shop = business(tmp_path, "petshop.yaml", "Pet Shop Au Au")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "convenios.md").write_text(CONVENIOS, "utf-8")
    (tmp_path / "knowledge" / "petshop").mkdir(parents=True)
    (tmp_path / "knowledge" / "petshop" / "banho.md").write_text("Banho: R$ 60.", "utf-8")
    done = wsm(
        tmp_path, "knowledge", "check", "-q", "banho",
        WSM_CALENDAR_FILE=str(clinic),
        WSM_KNOWLEDGE_DIR=str(tmp_path / "docs"),
        WSM_BUSINESS_FILES=f"pets={shop}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    clinic_part, shop_part = done.stdout.split("business: Pet Shop Au Au (sessions pets)")
    assert "business: Clínica Sorriso (default)" in clinic_part
    assert str(tmp_path / "docs") in clinic_part and "no passage matches" in clinic_part
    assert str(tmp_path / "knowledge" / "petshop") in shop_part
    assert "| Banho: R$ 60." in shop_part


def test_check_fails_without_documents_and_on_a_bad_business_file(tmp_path: Path) -> None:
    clinic = business(tmp_path, "clinica.yaml", "Clínica Sorriso")
    empty = wsm(tmp_path, "knowledge", "check", "--business-file", str(clinic))
    assert empty.returncode == 1 and "(does not exist)" in empty.stdout
    bad = tmp_path / "ruim.yaml"
    bad.write_text("timezone: Marte/Olimpo\n", "utf-8")
    refused = wsm(tmp_path, "knowledge", "check", "--business-file", str(bad))
    assert refused.returncode == 2 and "wsm knowledge:" in refused.stderr
    usage = wsm(tmp_path, "knowledge", "check", "--dir", str(tmp_path))
    assert usage.returncode == 2 and "--dir needs --business-file" in usage.stderr


def test_check_fails_when_the_documents_give_the_agent_nothing(tmp_path: Path) -> None:
    clinic = business(tmp_path, "clinica.yaml", "Clínica Sorriso")
    (tmp_path / "knowledge").mkdir()
    (tmp_path / "knowledge" / "vazio.md").write_text("  \n\n", "utf-8")
    done = wsm(tmp_path, "knowledge", "check", "--business-file", str(clinic))
    assert "indexed: 1 documents, 0 passages" in done.stdout
    assert done.returncode == 1, done.stdout


def test_check_names_a_session_business_own_folder_when_it_is_missing(tmp_path: Path) -> None:
    """The id comes from the file's name: an operator is told which folder it means."""
    clinic = business(tmp_path, "clinica.yaml", "Clínica Sorriso")
    branch = business(tmp_path, "Clínica São José.yaml", "Clínica São José")
    (tmp_path / "knowledge").mkdir()
    (tmp_path / "knowledge" / "convenios.md").write_text(CONVENIOS, "utf-8")
    done = wsm(
        tmp_path, "knowledge", "check",
        WSM_CALENDAR_FILE=str(clinic), WSM_BUSINESS_FILES=f"sj={branch}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    _, branch_part = done.stdout.split("business: Clínica São José (sessions sj)")
    own = tmp_path / "knowledge" / "cl-nica-s-o-jos"
    assert f"own folder: {own}  (does not exist)" in branch_part
    # With the folder there, it is what is read, and no longer named as missing.
    own.mkdir()
    (own / "unidade.md").write_text("Fica na Rua das Flores, 10.", "utf-8")
    done = wsm(
        tmp_path, "knowledge", "check",
        WSM_CALENDAR_FILE=str(clinic), WSM_BUSINESS_FILES=f"sj={branch}",
    )  # fmt: skip
    _, branch_part = done.stdout.split("business: Clínica São José (sessions sj)")
    assert "own folder:" not in branch_part and f"folder: {own}" in branch_part
