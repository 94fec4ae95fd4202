"""`python -m engine COMMAND [ARGS]` (or the `engine` script): run one of the command lines of engine/cli."""
import sys

from engine.cli import chat, generate, quantize, serve
from engine.cli.common import version_line

COMMANDS = {  # name → (main, one line for the help)
    "generate": (generate.main, "complete one prompt, streamed to stdout (= python -m engine.generate)"),
    "chat": (chat.main, "interactive chat with a model (= python -m engine.chat)"),
    "serve": (serve.main, "OpenAI-compatible server and web UI (= python -m engine.serve)"),
    "quantize": (quantize.main, "write a quantized GGUF file (= python -m engine.quantize)"),
}
USAGE = ("usage: python -m engine COMMAND [ARGS] | --version   (python -m engine COMMAND --help: its flags)\n\n"
         "commands:\n" + "\n".join(f"  {name:<9} {line}" for name, (_, line) in COMMANDS.items()))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]][0](argv[1:])
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if argv[:1] == ["--version"]:
        print(version_line())
        return 0
    print(USAGE + (f"\nerror: unknown command {argv[0]!r}" if argv else ""), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
