"""`python -m engine.serve`: the OpenAI-compatible server and web UI (engine/server/) under uvicorn. The command
line is engine/cli/serve.py."""
import sys

if __name__ == "__main__":
    from engine.cli.serve import main
    sys.exit(main())
