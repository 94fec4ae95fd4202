"""`python -m engine.chat`: the interactive chat REPL; the command line is engine/cli/chat.py."""
import sys

if __name__ == "__main__":
    from engine.cli.chat import main
    sys.exit(main())
