"""`python -m engine.generate --prompt TEXT`: complete one prompt, streamed to stdout (`--chat` without `--prompt`:
the chat REPL). The command line is engine/cli/generate.py; the generate loop is engine/runtime/generate.py."""
import sys

if __name__ == "__main__":
    from engine.cli.generate import main
    sys.exit(main())
