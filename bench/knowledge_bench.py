"""The agent's knowledge folder: index size and time, and retrieval time per turn, for a few
hundred passages, as ratios against baselines measured in the same run.

    python3 bench/knowledge_bench.py [--documents 20] [--sections 20] [--queries 300]
                                     [--repeat 5] [--seed 7]

A synthetic business writes `documents` Markdown files of `sections` headed sections each
(pt-BR sentences around one distinctive term per section: a plan, an exam, a product), so
the folder holds documents x sections passages (400 by default). Measured:

- index: the whole rebuild the worker does when the folder changes (read, split, fold,
  BM25 index) against its floor, reading and splitting alone; size in memory (BM25 matrix,
  vocabulary, passages) against the passages' own text;
- per turn: what one agent turn adds (the folder's freshness check, a `stat` per file, and
  the ranking of the customer's words with the token budget) against a naive scan (every
  passage's folded text searched for every folded query word, best counts first);
- quality, as a sanity check of both: how often the section a question was written from
  comes first. Questions use a different inflection than the text (plural, accents dropped,
  another verb form) the way customers write.

The medians of `repeat` runs are reported (perf_counter); one core, no Redis, nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.agent.knowledge import (  # noqa: E402
    KnowledgeBase,
    Passage,
    build_index,
    read_documents,
    signature,
)
from shared.text import fold  # noqa: E402

TOPICS = ["convênio", "exame", "procedimento", "pagamento", "atendimento", "documento",
          "resultado", "retorno", "preparo", "unidade"]  # fmt: skip
FILLER = [
    "a recepção confirma o horário com antecedência e o paciente traga documento com foto",
    "o valor pode mudar conforme a avaliação do dentista",
    "chegue quinze minutos antes",
    "em caso de dúvida fale com a equipe pelo telefone ou pelo WhatsApp da clínica",
    "o atendimento acontece de segunda a sábado no horário comercial",
]
SYLLABLES = ["ra", "ma", "te", "lo", "xi", "vu", "ban", "cor", "del", "fin", "gal", "hul",
             "jor", "kel", "mon", "nar", "pol", "quin", "sel", "tor"]  # fmt: skip


def term(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(3))


def write_corpus(folder: Path, documents: int, sections: int, seed: int) -> list[tuple[str, str]]:
    """Writes the documents; returns (question, the section it was written from)."""
    rng = random.Random(seed)
    questions: list[tuple[str, str]] = []
    for d in range(documents):
        topic = TOPICS[d % len(TOPICS)]
        lines = [f"# {topic.capitalize()}s da clínica, parte {d}", ""]
        for _ in range(sections):
            key = term(rng)
            title = f"{topic.capitalize()} {key.capitalize()}"
            lines += [f"## {title}", ""]
            lines.append(
                f"O {topic} {key} é oferecido na unidade {rng.randint(1, 9)}. "
                f"Custa R$ {rng.randint(50, 900)} e leva {rng.randint(10, 90)} minutos."
            )
            lines.append(" ".join(rng.sample(FILLER, 2)) + ".")
            lines.append("")
            questions.append((f"quanto custam os {topic}s {key}?", title))
        (folder / f"{topic}-{d}.md").write_text("\n".join(lines), "utf-8")
    return questions


def naive_scan(passages: list[Passage], folded: list[str], query: str, limit: int) -> list[int]:
    """The baseline: count the query's folded words found in each passage's folded text."""
    words = [w for w in fold(query).replace("?", " ").split() if len(w) > 2]
    counts = [(sum(w in text for w in words), i) for i, text in enumerate(folded)]
    counts.sort(key=lambda c: (-c[0], c[1]))
    return [i for count, i in counts[:limit] if count]


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=20)
    parser.add_argument("--sections", type=int, default=20)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        questions = write_corpus(folder, args.documents, args.sections, args.seed)
        rng = random.Random(args.seed + 1)
        asked = [rng.choice(questions) for _ in range(args.queries)]

        floor = median_seconds(lambda: read_documents(folder), args.repeat)
        build = median_seconds(lambda: build_index(folder), args.repeat)
        index = build_index(folder)
        passages = list(index.passages)
        text_bytes = sum(len(p.doc) + len(p.section) + len(p.text) for p in passages)
        folded = [fold(f"{p.section} {p.text}") for p in passages]
        eager = KnowledgeBase(folder, check_seconds=0)  # worst case: a check every turn
        usual = KnowledgeBase(folder)  # the default: at most every 5 s

        def ranked() -> None:
            for question, _ in asked:
                index.search(question, limit=3, token_budget=800)

        def scanned() -> None:
            for question, _ in asked:
                naive_scan(passages, folded, question, 3)

        def checked() -> None:
            for _ in asked:
                signature(folder)

        async def turns(base: KnowledgeBase) -> None:
            for question, _ in asked:
                await base.for_message(question)

        n = len(asked)
        bm25_turn = median_seconds(ranked, args.repeat) / n
        scan_turn = median_seconds(scanned, args.repeat) / n
        check_turn = median_seconds(checked, args.repeat) / n
        eager_turn = median_seconds(lambda: asyncio.run(turns(eager)), args.repeat) / n
        usual_turn = median_seconds(lambda: asyncio.run(turns(usual)), args.repeat) / n

        bm25_right = sum(
            bool(hits) and hits[0].passage.section.endswith(title)
            for question, title in asked
            for hits in [index.rank(question, 3)]
        )
        scan_right = sum(
            bool(top) and passages[top[0]].section.endswith(title)
            for question, title in asked
            for top in [naive_scan(passages, folded, question, 3)]
        )

    print(f"documents {args.documents}, passages {len(passages)}, questions {n}")
    print("| measure | knowledge (bm25s) | baseline | ratio |")
    print("|---|---:|---:|---:|")
    print(
        f"| index build (read, split, index) vs read + split | {build * 1000:.1f} ms | "
        f"{floor * 1000:.1f} ms | {build / floor:.2f}x |"
    )
    print(
        f"| index in memory vs the passages' text | {index.nbytes / 1024:.0f} KiB | "
        f"{text_bytes / 1024:.0f} KiB | {index.nbytes / text_bytes:.2f}x |"
    )
    print(
        f"| ranking one turn's words vs naive substring scan | {bm25_turn * 1e6:.0f} µs | "
        f"{scan_turn * 1e6:.0f} µs | {bm25_turn / scan_turn:.2f}x |"
    )
    print(
        f"| whole turn, folder checked every 5 s (default) vs naive scan | "
        f"{usual_turn * 1e6:.0f} µs | {scan_turn * 1e6:.0f} µs | {usual_turn / scan_turn:.2f}x |"
    )
    print(
        f"| whole turn, folder checked every turn (stat off the loop) vs naive scan | "
        f"{eager_turn * 1e6:.0f} µs | {scan_turn * 1e6:.0f} µs | {eager_turn / scan_turn:.2f}x |"
    )
    print(f"| freshness check alone (stat per file) | {check_turn * 1e6:.0f} µs | - | - |")
    print(
        f"| right section first | {bm25_right / n:.0%} | {scan_right / n:.0%} | "
        f"{bm25_right / max(scan_right, 1):.2f}x |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
