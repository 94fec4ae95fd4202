"""`python -m engine.generate --prompt TEXT`: one completion of a prompt (raw, or as a chat message through the
model's template) streamed to stdout, statistics on stderr."""
import argparse
import sys

from engine.cli.chat import run_cli
from engine.cli.common import add_model_arg, add_run_args, exit_status, load_from_args, loaded_line
from engine.runtime.sampler import SamplingParams


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.generate", description=__doc__)
    add_model_arg(p)
    p.add_argument("--prompt", default=None, help="the prompt (with --chat: the user message; --chat without "
                   "--prompt starts the interactive chat of python -m engine.chat)")
    p.add_argument("--system", default=None, help="system message (chat mode)")
    chat = p.add_mutually_exclusive_group()
    chat.add_argument("--chat", dest="chat", action="store_true", default=None,
                      help="render the prompt with the model's chat template (default when it has one)")
    chat.add_argument("--raw", dest="chat", action="store_false", help="use the prompt as it is")
    add_run_args(p)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.prompt is None:
        if not args.chat:
            parser.error("--prompt is required (or pass --chat without --prompt for an interactive chat)")
        return run_cli(args)
    return exit_status(lambda: _generate(args))


def _generate(args) -> None:
    """Load the model, stream the answer to stdout and the statistics to stderr."""
    llm = load_from_args(args)
    print(loaded_line(llm), file=sys.stderr)
    use_chat = args.chat if args.chat is not None else llm.template is not None
    if use_chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        messages.append({"role": "user", "content": args.prompt})
        ids = llm.encode_chat(llm.apply_chat_template(messages))
    else:
        ids = llm.encode_prompt(args.prompt)
    params = SamplingParams.from_args(args, llm.sampling_defaults)
    for piece in llm.stream(ids, llm.new_cache(), params):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    s = llm.last_stats
    print(f"prompt: {s.prompt_tokens} tokens, {s.prefill_tps:.1f} tok/s | generated: {s.completion_tokens} "
          f"tokens, {s.decode_tps:.1f} tok/s | finish: {s.finish_reason}", file=sys.stderr)
