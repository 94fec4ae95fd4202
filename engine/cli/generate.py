"""`python -m engine.generate --prompt TEXT`: one completion of a prompt (raw, or as a chat message through the
model's template) streamed to stdout, statistics on stderr."""
import argparse
import sys

from engine.cli.chat import run_cli
from engine.cli.common import (EXIT_STATUS, add_model_arg, add_run_args, exit_status, load_from_args, loaded_line,
                               new_parser, non_blank)
from engine.runtime.sampler import SamplingParams

DESCRIPTION = """Complete one prompt with a language model: the answer streams to stdout, load time and speed
go to stderr. When the model has a chat template the prompt is sent as a user message (--chat, the default);
--raw completes the text as it is. --chat without --prompt starts the interactive chat (engine.chat)."""
EXAMPLE = 'example: python -m engine.generate --prompt "The capital of France is" --raw --max-tokens 16'


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("python -m engine.generate", DESCRIPTION, f"{EXAMPLE}\n\n{EXIT_STATUS}")
    add_model_arg(p)
    p.add_argument("--prompt", type=non_blank, default=None, metavar="TEXT", help="the prompt (with --chat: the "
                   "user message); required unless --chat starts the interactive chat")
    p.add_argument("--system", default=None, metavar="TEXT", help="system message, in chat mode (default: none)")
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
