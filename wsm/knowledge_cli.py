"""`wsm knowledge check`: what the agent's knowledge folders hold, and what a question gets.

    wsm knowledge check                                  every business of the settings
    wsm knowledge check --question "aceitam Amil?"       ... and the passages it would get
    wsm knowledge check --business-file config/business.example.yaml [--dir FOLDER]

Without --business-file: the businesses the worker runs (WSM_CALENDAR_FILE, WSM_BUSINESS_FILES,
WSM_KNOWLEDGE_DIR), each with its folder, its documents and their passages (a document left
out says why). With it: that file's business alone, its folder found as the worker finds it
(`knowledge/<id>/` beside the file when it exists, else `knowledge/`), or --dir.

A question shows the passages one agent turn would carry, ranked, within
WSM_KNOWLEDGE_PASSAGES and WSM_KNOWLEDGE_TOKEN_BUDGET, exactly as the model would read them.
Exit status: 0 when some document gave the agent passages, 1 when none did (no document, or
only empty ones), 2 on a bad business file.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from engine.agent.calendar import CalendarFileError, load_calendar
from engine.agent.knowledge import BusinessFile, KnowledgeBase, knowledge_folders, own_folder
from engine.businesses import business_id, businesses_from
from engine.parts import knowledge_bases
from shared.settings import Settings
from shared.startup import load_settings


@dataclass(frozen=True, slots=True)
class Checked:
    label: str  # how the business is named in the report
    base: KnowledgeBase | None  # None: the business has no knowledge folder
    # A session business's own folder (knowledge/<id>/), named when it is not the one read:
    # the id is made from the file's name, and an operator must know which folder it means.
    own: Path | None = None


def _from_settings(settings: Settings) -> list[Checked]:
    businesses = businesses_from(settings)
    bases = knowledge_bases(settings, businesses)
    sessions: dict[str, list[str]] = {}
    for session, business in businesses.by_session.items():
        sessions.setdefault(business.id, []).append(session)
    out = []
    for business in businesses.all():
        where = "default" if not business.id else "sessions " + ", ".join(sessions[business.id])
        own = own_folder(BusinessFile(business.id, business.file))
        label = f"{business.calendar.business_name} ({where})"
        out.append(Checked(label, bases.get(business.id), own))
    return out


def _from_file(path: Path, folder: Path | None, settings: Settings) -> list[Checked]:
    calendar = load_calendar(path)
    if folder is None:
        folder = knowledge_folders([BusinessFile(business_id(path), path)], None)[business_id(path)]
    base = KnowledgeBase(
        folder,
        limit=settings.knowledge_passages,
        token_budget=settings.knowledge_token_budget,
    )
    own = own_folder(BusinessFile(business_id(path), path))
    return [Checked(f"{calendar.business_name} ({path})", base, own)]


def _report(checked: Checked, question: str | None) -> int:
    """Prints one business; returns how many documents gave the agent passages."""
    print(f"business: {checked.label}")
    base = checked.base
    own = checked.own
    if own is not None and (base is None or base.folder != own):
        print(f"  own folder: {own}  (does not exist)")
    if base is None:
        print('  no knowledge folder (docs/agent.md, "Knowledge")\n')
        return 0
    index = base.index
    print(f"  folder: {base.folder}" + ("" if base.folder.is_dir() else "  (does not exist)"))
    indexed = [d for d in index.documents if not d.skipped]
    print(
        f"  indexed: {len(indexed)} documents, {len(index.passages)} passages, "
        f"{index.nbytes / 1024:.1f} KiB in memory, {index.built_seconds * 1000:.1f} ms"
    )
    for document in index.documents:
        if document.skipped:
            print(f"    {document.name:<32} left out: {document.skipped}")
        else:
            print(
                f"    {document.name:<32} {document.passages:>3} passages {document.chars:>7} chars"
            )
    if question is not None:
        print(f"  question: {question!r}")
        hits = index.rank(question, base.limit)
        chosen = index.search(question, limit=base.limit, token_budget=base.token_budget)
        if not chosen:
            print("    no passage matches: the agent says it does not know and offers a person")
        for n, hit in enumerate(hits, 1):
            passage = hit.passage
            kept = "" if passage in chosen else "  (over the token budget: not sent)"
            where = " › ".join(x for x in (passage.doc, passage.section) if x)
            print(f"    {n}. {where}  score {hit.score:.2f}, ~{passage.tokens} tokens{kept}")
            for line in passage.text.splitlines():
                print(f"       | {line}")
        used = sum(p.tokens for p in chosen)
        print(f"    sent: {len(chosen)} passages, ~{used} of {base.token_budget} tokens")
    print()
    # A document with no passage (empty, or headings only) gives the agent nothing.
    return sum(1 for d in indexed if d.passages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="wsm knowledge",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="list what was indexed; show a question's passages")
    check.add_argument("--question", "-q", help="a customer's question, to see its passages")
    check.add_argument("--business-file", type=Path, help="check this business file only")
    check.add_argument("--dir", type=Path, help="with --business-file: its knowledge folder")
    args = parser.parse_args(argv)
    if args.dir is not None and args.business_file is None:
        parser.error("--dir needs --business-file (WSM_KNOWLEDGE_DIR sets the default's)")
    settings = load_settings("wsm knowledge")
    if settings is None:
        return 2
    try:
        if args.business_file is not None:
            checked = _from_file(args.business_file, args.dir, settings)
        else:
            checked = _from_settings(settings)
    except CalendarFileError as exc:
        print(f"wsm knowledge: {exc}", file=sys.stderr)
        return 2
    documents = sum(_report(c, args.question) for c in checked)
    return 0 if documents else 1


if __name__ == "__main__":
    raise SystemExit(main())
