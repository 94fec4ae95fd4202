"""`python -m engine.chat`: the interactive chat (REPL) over one `engine.chat.Chat`; also what
`python -m engine.generate --chat` runs without `--prompt`."""
import argparse
import signal
import sys
from collections.abc import Iterator
from dataclasses import asdict

from engine.chat import Chat, Piece
from engine.cli.common import (add_model_arg, add_run_args, exit_status, in_flag_terms, load_from_args, loaded_line,
                               new_parser)
from engine.errors import EngineError
from engine.runtime.sampler import SamplingParams

HELP = """commands:
  /undo         remove the last exchange          /regen        answer the last message again
  /reset        clear the conversation            /system TEXT  set the system prompt (empty: remove it)
  /save FILE    save the conversation as JSON     /load FILE    load a saved conversation
  /help         this text                         /quit         exit (so does Ctrl-D)
Ctrl-C stops an answer (the partial answer is kept; /regen redoes it). Start a message with // to send a '/'."""

DIM, RESET = "\x1b[2m", "\x1b[0m"
DESCRIPTION = """Chat with a language model in the terminal: type a message and the answer streams back. The
conversation is kept, and each turn reuses what the model already read. /help lists the commands (/undo,
/regen, /system, /save, ...). Ctrl-C stops an answer, Ctrl-D exits."""


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("python -m engine.chat", DESCRIPTION)
    add_model_arg(p)
    p.add_argument("--system", default=None, metavar="TEXT", help="system prompt (default: the template's, if any)")
    p.add_argument("--hide-thinking", action="store_true", help="do not print the model's reasoning")
    think = p.add_mutually_exclusive_group()
    think.add_argument("--thinking", dest="enable_thinking", action="store_true", default=None,
                       help="pass enable_thinking=True to the template (default: the template's choice)")
    think.add_argument("--no-thinking", dest="enable_thinking", action="store_false",
                       help="pass enable_thinking=False to the template (Qwen3: answer without reasoning)")
    add_run_args(p)
    return p


class _Repl:
    """The interactive loop over one Chat: input lines are messages or /commands."""

    def __init__(self, chat: Chat, sampling: dict, hide_thinking: bool, out=None, err=None):
        self.chat, self.sampling, self.hide_thinking = chat, sampling, hide_thinking
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.tty = self.out.isatty()

    def run(self) -> int:
        if sys.stdin.isatty():
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass
        while True:
            try:
                line = input("> ")
            except EOFError:
                self.out.write("\n")
                self.out.flush()
                return 0
            except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh prompt
                self.out.write("\n")
                continue
            line = line.strip()
            if not line:
                continue
            try:
                if line.startswith("/") and not line.startswith("//"):
                    if self.command(line) == "quit":
                        return 0
                else:
                    self.answer(self.chat.send(line[1:] if line.startswith("//") else line, **self.sampling))
            except EngineError as e:
                print(f"error: {in_flag_terms(e)}", file=self.err, flush=True)

    def command(self, line: str) -> str | None:
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            return "quit"
        if name == "/help":
            print(HELP, file=self.err, flush=True)
        elif name == "/undo":
            removed = self.chat.undo()
            self.note(f"removed {len(removed)} message(s)" if removed else "nothing to undo")
        elif name == "/regen":
            self.answer(self.chat.regenerate(**self.sampling))
        elif name == "/reset":
            self.chat.reset()
            self.note("conversation cleared")
        elif name == "/system":
            self.chat.system = arg or None
            self.note(f"system prompt {'set' if arg else 'removed'}")
        elif name == "/save":
            if not arg:
                return self.note("usage: /save FILE")
            self.chat.save(arg)
            self.note(f"saved {len(self.chat.messages)} message(s) to {arg}")
        elif name == "/load":
            if not arg:
                return self.note("usage: /load FILE")
            self.chat = Chat.load(arg, self.chat.llm)
            self.note(f"loaded {len(self.chat.messages)} message(s) from {arg}")
        else:
            self.note(f"unknown command {name}; /help lists them")
        return None

    def note(self, text: str) -> None:
        print(f"({text})", file=self.err, flush=True)

    def answer(self, pieces: Iterator[Piece]) -> None:
        """Stream an answer; Ctrl-C cancels it and nothing more is printed (a second Ctrl-C interrupts at once)."""
        presses = 0

        def on_sigint(signum, frame):
            nonlocal presses
            presses += 1
            if presses > 1:
                raise KeyboardInterrupt
            self.chat.cancel()

        previous = signal.signal(signal.SIGINT, on_sigint)
        kind, last = "content", ""
        try:
            for piece in pieces:
                if presses:  # the piece sampled while Ctrl-C came: the answer ends before it
                    break
                if piece.kind != kind:
                    self._switch(piece.kind, last)
                    kind = piece.kind
                if piece.kind == "reasoning":
                    if not self.hide_thinking:
                        self.out.write(f"{DIM}{piece.text}{RESET}" if self.tty else piece.text)
                        last = piece.text
                else:
                    self.out.write(piece.text)
                self.out.flush()
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGINT, previous)
            if hasattr(pieces, "close"):
                pieces.close()
        if kind == "reasoning":
            self._switch("content", last)
        self.out.write("\n")
        self.out.flush()
        u = self.chat.last_usage
        if u is not None:
            dropped = f" | dropped {u.dropped_messages} old message(s)" if u.dropped_messages else ""
            print(f"[prompt: {u.prompt_tokens} tokens ({u.cached_tokens} cached), {u.prefill_tps:.1f} tok/s | "
                  f"generated: {u.completion_tokens} tokens, {u.decode_tps:.1f} tok/s | {u.finish_reason}{dropped}]",
                  file=self.err, flush=True)

    def _switch(self, new: str, reasoning_so_far: str) -> None:
        """Mark where reasoning starts and ends: dim text then a blank line on a terminal, <think> tags otherwise."""
        if self.hide_thinking:
            return
        if new == "reasoning":
            self.out.write("" if self.tty else "<think>\n")
        else:
            newline = "" if reasoning_so_far.endswith("\n") else "\n"
            self.out.write(newline + ("\n" if self.tty else "</think>\n\n"))


def run_cli(args) -> int:
    """Load the model and run the REPL. args: the namespace of build_parser() (engine.generate's works too)."""
    return exit_status(lambda: _repl(args).run())


def _repl(args) -> _Repl:
    """The REPL over a Chat with the model and sampling flags of args (bad values fail here, before the prompt)."""
    llm = load_from_args(args)
    print(f"{loaded_line(llm)}; /help for commands, Ctrl-D to exit", file=sys.stderr, flush=True)
    chat = Chat(llm, system=args.system, enable_thinking=getattr(args, "enable_thinking", None))
    sampling = asdict(SamplingParams.from_args(args, llm.sampling_defaults))
    return _Repl(chat, sampling, getattr(args, "hide_thinking", False))


def main(argv=None) -> int:
    return run_cli(build_parser().parse_args(argv))
