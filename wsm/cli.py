"""`wsm <subcommand>`: a thin dispatcher. Each subcommand's module owns its own arguments and
is imported only when used, so `wsm gateway` never loads worker code and the reverse."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module with `main(argv) -> int`, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "gateway": ("gateway.cli", "the webhook gateway (WAHA -> Redis)"),
    "worker": ("worker.cli", "the worker fleet (Redis -> conversation engine -> WAHA)"),
    "dlq": ("worker.dlq_cli", "list, replay or drop dead letters"),
    "api": ("api.cli", "the operator API (conversations, waiting line, agents)"),
    "agent": ("api.console.cli", "the console's accounts: add, passwd, remove, list"),
    "knowledge": ("wsm.knowledge_cli", "the agent's documents: indexed, and a question's"),
    "waha-sim": ("wsm.waha_sim.cli", "a WAHA stand-in for development and tests"),
    "chat": ("wsm.chat", "be a WhatsApp customer in the terminal (through the simulator)"),
    "config": ("wsm.config_doc", "show the settings (effective values, or as docs)"),
    "dev": ("wsm.dev", "the whole product on embedded defaults (what `make run` runs)"),
    "loadtest": ("wsm.loadtest", "end-to-end load and chaos test on a private stack"),
}


def usage() -> str:
    lines = ["usage: wsm <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"wsm: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    result: int = module.main(rest)
    return result
