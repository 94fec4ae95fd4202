"""Tokenizers: from a GGUF file's metadata (llama.cpp's rules) or from a Hugging Face tokenizer.json.

Both kinds end up as a `tokenizers.Tokenizer` (Rust) that does the encoding; decoding is ours, from a table of
the exact bytes each token stands for, so that `decode` and the incremental `StreamDecoder` agree byte for byte.

GGUF (`Tokenizer.from_gguf(metadata)`) follows llama.cpp's `llama-vocab.cpp`:

* `tokenizer.ggml.model == "gpt2"`: byte-level BPE with the GGUF merges. The pre-tokenizer is the list of
  regexes llama.cpp picks for `tokenizer.ggml.pre` (see `_PRE_TOKENIZERS`), each applied as an "isolated" split
  to the pieces of the previous one, then the GPT-2 byte-to-unicode mapping. `llama-bpe` & co. match a whole
  pre-token against the vocabulary before merging (llama.cpp's `ignore_merges`).
* `tokenizer.ggml.model == "llama"`: SentencePiece BPE. llama.cpp repeatedly merges the adjacent pair whose
  concatenation is the vocabulary entry with the highest score; that is BPE with every (left, right) split of
  every token as a merge, ranked by the token's score. Characters not in the vocabulary become `<0xXX>` byte
  tokens. Spaces become "▁", and a "▁" is put in front of every run of text that starts the input or follows a
  special token when `tokenizer.ggml.add_space_prefix` is true (the default for this model type).
* Token types 3 (CONTROL) and 2 (UNKNOWN) are special tokens: written in the text they become their ids only with
  `parse_special=True`; type 4 (USER_DEFINED) tokens are always matched, as llama.cpp does. When decoding, control
  and unknown tokens give their text unless `skip_special`; user-defined tokens always give their text; unused
  tokens give nothing.
* BOS/EOS come from `tokenizer.ggml.{bos,eos}_token_id`; `tokenizer.ggml.add_{bos,eos}_token` say whether
  `encode(add_special=True)` adds them (defaults as llama.cpp's). `eos_ids` is llama.cpp's end-of-generation set:
  EOS, EOT, EOM and the tokens llama.cpp recognises by their text ("<|im_end|>", "<|eot_id|>", ...).

Decoding follows llama.cpp's `llama_detokenize` without its `clean_spaces` pass (so decode(encode(t)) == t): when
the vocabulary adds a space prefix, one leading space of the first token is dropped.
"""
from __future__ import annotations

import codecs
import json
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from engine.errors import TokenizerError
from engine.formats import jsonfile

__all__ = ["Tokenizer", "StreamDecoder", "SUPPORTED_PRE_TOKENIZERS"]

# GGUF token types (gguf.TokenType / llama.cpp's llama_token_type)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# ----------------------------------------------------------------------------------------------------------------
# Pre-tokenizer regexes, copied from llama.cpp's llm_tokenizer_bpe (llama-vocab.cpp). Each list is applied in
# order: every regex splits each piece left by the previous one, matches and the text between them both kept.
# ----------------------------------------------------------------------------------------------------------------
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DEFAULT = [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"]

# name -> (regexes, ignore_merges, add_bos default)
_PRE_TOKENIZERS: dict[str, tuple[list[str], bool, bool]] = {}
for _names, _spec in [
    (("default",), (_DEFAULT, False, False)),
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"),
     ([_LLAMA3], True, True)),
    (("dbrx", "smaug-bpe"), ([_LLAMA3], False, False)),
    (("qwen2", "deepseek-r1-qwen", "stablelm2", "hunyuan", "solar-open", "kormo", "f2llmv2"), ([_QWEN2], False, False)),
    # llama.cpp's SMOLLM / STARCODER / REFACT / COMMAND_R group: single digits, then the GPT-2 regex
    (("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"),
     ([r"\p{N}", _GPT2], False, False)),
    (("gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais", "trillion", "granite-docling"), ([_GPT2], False, False)),
    (("falcon",), ([r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"], False, False)),
]:
    for _n in _names:
        _PRE_TOKENIZERS[_n] = _spec

SUPPORTED_PRE_TOKENIZERS = tuple(sorted(_PRE_TOKENIZERS))

# Tokens llama.cpp treats as end of generation by their text (llama_vocab::impl::load, special_eog_ids).
_EOG_TEXTS = frozenset([
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
])
# Tokens llama.cpp takes for EOT (when tokenizer.ggml.eot_token_id is absent) and for the FIM kinds, by text;
# FIM pad / repo / file-separator tokens are end-of-generation too.
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
              "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_FIM_KINDS = (
    ("pre", ["tokenizer.ggml.prefix_token_id"],
     ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>",
      "<|prefix|>")),
    ("suf", ["tokenizer.ggml.suffix_token_id"],
     ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>",
      "<|suffix|>")),
    ("mid", ["tokenizer.ggml.middle_token_id"],
     ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>",
      "<|middle|>")),
    ("pad", [], ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]")),
    ("rep", [], ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>")),
    ("sep", [], ("<|file_sep|>",)),
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (the one byte-level BPE vocabularies are written in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


_BYTE_ENCODER = _bytes_to_unicode()
_BYTE_DECODER = {c: b for b, c in _BYTE_ENCODER.items()}
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


_BYTE_LEVEL_TABLE = str.maketrans({c: chr(b) for c, b in _BYTE_DECODER.items()})


def _byte_level_bytes(text: str) -> bytes:
    """Bytes of a byte-level BPE token (characters outside the map are kept as UTF-8, as a fallback)."""
    try:
        return text.translate(_BYTE_LEVEL_TABLE).encode("latin-1")
    except UnicodeEncodeError:
        return b"".join(bytes([_BYTE_DECODER[c]]) if c in _BYTE_DECODER else c.encode("utf-8") for c in text)


def _spm_bytes(text: str) -> bytes:
    m = _BYTE_TOKEN.match(text)
    if m:
        return bytes([int(m.group(1), 16)])
    return text.replace("\u2581", " ").encode("utf-8")


class Tokenizer:
    """Text <-> token ids. Build with `from_gguf(metadata)` or `from_file(tokenizer.json)`."""

    def __init__(self, *, hf: HFTokenizer, tokens: Sequence[str],
                 pieces: Sequence[bytes], special_ids: Iterable[int], bos_id: int | None, eos_id: int | None,
                 eos_ids: Iterable[int], add_bos: bool, add_eos: bool, strip_first_space: bool,
                 use_post_processor: bool = False, kind: str = "",
                 rstrip_patterns: dict[bool, re.Pattern] | None = None):
        self._hf = hf
        # encode_special_tokens is a setting of the tokenizers object: flip it under a lock for parse_special=False
        self._lock = threading.Lock()
        self._tokens = list(tokens)
        self._token_to_id = {t: i for i, t in enumerate(self._tokens)}
        self._pieces = list(pieces)
        self._special_ids = frozenset(special_ids)
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.eos_ids = frozenset(i for i in eos_ids if i is not None)
        self.add_bos = bool(add_bos)
        self.add_eos = bool(add_eos)
        self._strip_first_space = strip_first_space
        self._use_post_processor = use_post_processor
        self.kind = kind
        self._rstrip = rstrip_patterns or {}
        self.vocab_size = len(self._tokens)

    # -- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, metadata: dict[str, Any]) -> "Tokenizer":
        """Build the tokenizer a GGUF file describes (its `tokenizer.ggml.*` metadata)."""
        model, pre, tokens, types = _gguf_vocabulary(metadata)
        vocab = {t: i for i, t in enumerate(tokens)}
        base = _gguf_bpe(metadata, pre, vocab) if model == "gpt2" else _gguf_spm(metadata, tokens, vocab)
        n = len(tokens)
        bos_id = _gguf_id(metadata, "tokenizer.ggml.bos_token_id", n, base.bos_id)
        eos_id = _gguf_id(metadata, "tokenizer.ggml.eos_token_id", n, base.eos_id)
        add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", base.add_bos))
        add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", base.add_eos))
        eog = _gguf_end_of_generation(metadata, tokens, types, vocab, eos_id)
        rstrip = _rstrip_patterns(tokens, types, _phi3_rstrip_ids(metadata, types, vocab))
        _add_special_tokens(base.hf, tokens, types)
        pieces = [base.piece(t, ty) if ty in _TEXT_TYPES else b"" for t, ty in zip(tokens, types)]
        special_ids = {i for i, ty in enumerate(types) if ty in (_CONTROL, _UNKNOWN)}
        return cls(hf=base.hf, tokens=tokens, pieces=pieces, special_ids=special_ids,
                   bos_id=bos_id, eos_id=eos_id, eos_ids=eog, add_bos=add_bos, add_eos=add_eos,
                   strip_first_space=base.add_space_prefix, kind=base.kind, rstrip_patterns=rstrip)

    @classmethod
    def from_file(cls, tokenizer_json: str | Path, config_dir: Path | None = None) -> "Tokenizer":
        """A Hugging Face tokenizer.json; BOS/EOS and add_bos from tokenizer_config.json, generation_config.json
        and config.json in `config_dir` (default: the tokenizer.json's folder) where present.

        The files are untrusted: every id must fit the vocabulary (ids index lists built here), and malformed
        files raise TokenizerError (ModelFileError for JSON that does not parse) naming the file."""
        path = Path(tokenizer_json)
        cdir = Path(config_dir) if config_dir is not None else path.parent
        tok_cfg, gen_cfg, model_cfg = (_config_file(cdir / name) for name in
                                       ("tokenizer_config.json", "generation_config.json", "config.json"))
        try:
            hf = HFTokenizer.from_file(str(path))
        except FileNotFoundError:
            raise TokenizerError(f"{path}: no such tokenizer file.") from None
        except Exception as e:  # tokenizers raises plain Exception on bad JSON / unknown components
            raise TokenizerError(f"{path}: not a usable tokenizer.json ({e}).") from e
        try:
            return cls._from_hf(hf, path, tok_cfg, gen_cfg, model_cfg)
        except TokenizerError:
            raise
        except Exception as e:  # noqa: BLE001 — the tokenizers library failing on what it accepted at load
            raise TokenizerError(f"{path}: not a usable tokenizer.json ({type(e).__name__}: {e}).") from e

    @classmethod
    def _from_hf(cls, hf: HFTokenizer, path: Path, tok_cfg: dict, gen_cfg: dict, model_cfg: dict) -> "Tokenizer":
        """from_file's tokenizer around a loaded `tokenizers.Tokenizer` and its (parsed) config files."""
        hf.no_padding()  # prompts are encoded whole: a file's padding (to any length) or truncation would change them
        hf.no_truncation()
        full_vocab = hf.get_vocab(with_added_tokens=True)
        n = _vocab_bound(path, full_vocab, hf.get_vocab_size(with_added_tokens=True), model_cfg)
        id_to_tok = {i: t for t, i in full_vocab.items()}
        tokens = [id_to_tok.get(i, f"[MISSING_{i}]") for i in range(n)]
        added = hf.get_added_tokens_decoder()
        bos_id, eos_id, eos_ids = _hf_special_ids(hf, path, n, tok_cfg, gen_cfg, model_cfg)
        # add_bos/add_eos: tokenizer_config.json's flags if given, else whatever the post-processor does (and the
        # token it puts first / last is the BOS / EOS if the configs name none).
        use_post = "add_bos_token" not in tok_cfg and "add_eos_token" not in tok_cfg
        if use_post:
            add_bos, add_eos, ids = _post_processor_rule(hf, path, n)
            if add_bos and bos_id is None:
                bos_id = ids[0]
            if add_eos and eos_id is None:
                eos_id = ids[-1]
                eos_ids.add(eos_id)
        else:
            add_bos, add_eos = (_flag(tok_cfg, key) for key in ("add_bos_token", "add_eos_token"))
        pieces, strip_first = _hf_pieces(hf, tokens, id_to_tok, added)
        special_ids = {i for i, t in added.items() if t.special}
        return cls(hf=hf, tokens=tokens, pieces=pieces, special_ids=special_ids,
                   bos_id=bos_id, eos_id=eos_id, eos_ids=eos_ids, add_bos=add_bos, add_eos=add_eos,
                   strip_first_space=strip_first, use_post_processor=use_post, kind="tokenizer.json")

    # -- encode / decode ----------------------------------------------------------------------------------------

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text`. add_special: add BOS/EOS as the model's settings say. parse_special: special
        tokens written in the text (e.g. "<|im_start|>") become their ids; otherwise they are tokenized as text."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode() takes a str, not {type(text).__name__}.")
        pat = self._rstrip.get(bool(parse_special))
        if pat is not None:
            text = pat.sub(r"\1", text)
        with self._lock:
            hf = self._hf
            hf.encode_special_tokens = not parse_special
            try:
                if self._use_post_processor:
                    return list(hf.encode(text, add_special_tokens=add_special).ids)
                ids = list(hf.encode(text, add_special_tokens=False).ids) if text else []
            finally:
                hf.encode_special_tokens = False
        if add_special:
            if self.add_bos and self.bos_id is not None:
                ids.insert(0, self.bos_id)
            if self.add_eos and self.eos_id is not None:
                ids.append(self.eos_id)
        return ids

    def token_bytes(self, token_id: int, skip_special: bool = False) -> bytes:
        """The bytes a token stands for (its text for special tokens, b"" for them when skip_special)."""
        if not 0 <= token_id < len(self._pieces):
            raise TokenizerError(f"token id {token_id} is outside the vocabulary (size {len(self._pieces)}).")
        if skip_special and token_id in self._special_ids:
            return b""
        return self._pieces[token_id]

    def decode_bytes(self, ids: Iterable[int], skip_special: bool = False) -> bytes:
        out = []
        first = True
        for i in ids:
            b = self.token_bytes(int(i), skip_special)
            if first:
                if self._strip_first_space and b.startswith(b" "):
                    b = b[1:]
                first = False
            out.append(b)
        return b"".join(out)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of `ids` (invalid UTF-8 becomes U+FFFD). skip_special drops control tokens (BOS, <|im_end|>...)."""
        return self.decode_bytes(ids, skip_special).decode("utf-8", errors="replace")

    def id_to_piece(self, token_id: int, skip_special: bool = False) -> str:
        """Text of one token on its own (llama.cpp's token_to_piece); a partial UTF-8 sequence shows as U+FFFD."""
        return self.token_bytes(token_id, skip_special).decode("utf-8", errors="replace")

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary entry of a token, as stored ("Ġhello", "▁Hello", "<|im_start|>", "<0x0A>")."""
        if not 0 <= token_id < len(self._tokens):
            raise TokenizerError(f"token id {token_id} is outside the vocabulary (size {len(self._tokens)}).")
        return self._tokens[token_id]

    def token_to_id(self, text: str) -> int | None:
        """Id of a vocabulary entry ("<|im_start|>", "Ġhello"), or None."""
        return self._token_to_id.get(text)

    def is_special(self, token_id: int) -> bool:
        """Control/unknown token (BOS, EOS, <|im_start|>...): dropped by decode(skip_special=True)."""
        return token_id in self._special_ids

    def is_eos(self, token_id: int) -> bool:
        return token_id in self.eos_ids

    @property
    def bos_token(self) -> str | None:
        return self._tokens[self.bos_id] if self.bos_id is not None else None

    @property
    def eos_token(self) -> str | None:
        return self._tokens[self.eos_id] if self.eos_id is not None else None

    @property
    def hf_tokenizer(self) -> HFTokenizer:
        """The underlying `tokenizers.Tokenizer` (without the BOS/EOS rule; special tokens in the text parsed)."""
        return self._hf

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"Tokenizer({self.kind}, vocab_size={self.vocab_size}, bos={self.bos_token!r}, "
                f"eos={self.eos_token!r}, add_bos={self.add_bos})")


# -- GGUF construction (llama.cpp's llama_vocab::impl::load) ------------------------------------------------------

# Token types whose bytes are decoded; UNUSED and unknown types decode to nothing.
_TEXT_TYPES = (_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE)


@dataclass(frozen=True)
class _GgufModel:
    """What the vocabulary kind decides: the encoder, how a token's text becomes bytes, llama.cpp's defaults."""
    hf: HFTokenizer
    kind: str
    piece: Callable[[str, int], bytes]  # (token text, token type) -> bytes
    add_space_prefix: bool
    bos_id: int | None
    eos_id: int | None
    add_bos: bool
    add_eos: bool


def _gguf_vocabulary(metadata: dict) -> tuple[str, str | None, list[str], list[int]]:
    """(tokenizer.ggml.model, .pre, tokens, token types), checked: a supported model, one type per token and no
    duplicate tokens. Empty tokens get a placeholder name, as in llama.cpp."""
    tokens = _gguf_value(metadata, "tokenizer.ggml.tokens", list, str)
    model = _gguf_value(metadata, "tokenizer.ggml.model", str)
    if not tokens or model in (None, "none", "no_vocab"):
        raise TokenizerError(
            "the GGUF file has no tokenizer (no 'tokenizer.ggml.tokens' / 'tokenizer.ggml.model' metadata); "
            "pass a tokenizer.json (from the model's Hugging Face repository) instead.")
    if model not in ("gpt2", "llama"):
        raise TokenizerError(
            f"unsupported GGUF tokenizer model {model!r:.40} (tokenizer.ggml.model); supported: 'gpt2' "
            "(byte-level BPE) and 'llama' (SentencePiece). Pass a tokenizer.json for this model instead.")
    n = len(tokens)
    tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    types = _gguf_value(metadata, "tokenizer.ggml.token_type", list, int)
    if types is None:
        types = [_NORMAL] * n
    if len(types) < n:
        raise TokenizerError(f"GGUF metadata: tokenizer.ggml.token_type has {len(types)} entries for {n} tokens.")
    if len(set(tokens)) != n:
        raise TokenizerError("GGUF metadata: tokenizer.ggml.tokens holds duplicate tokens; the file is corrupt.")
    return model, _gguf_value(metadata, "tokenizer.ggml.pre", str), tokens, list(types[:n])


def _gguf_bpe(metadata: dict, pre: str | None, vocab: dict[str, int]) -> _GgufModel:
    """Byte-level BPE ('gpt2'): the GGUF merges, the pre-tokenizer regexes llama.cpp uses for `pre`."""
    pre_name = pre or "default"  # llama.cpp: a missing pre-tokenizer type means 'default'
    if pre_name not in _PRE_TOKENIZERS:
        raise TokenizerError(
            f"unsupported GGUF pre-tokenizer {pre_name!r} (tokenizer.ggml.pre); supported: "
            f"{', '.join(SUPPORTED_PRE_TOKENIZERS)}. Pass a tokenizer.json for this model instead.")
    regexes, ignore_merges, add_bos = _PRE_TOKENIZERS[pre_name]
    merges = _gguf_value(metadata, "tokenizer.ggml.merges", list, str)
    if not merges:
        raise TokenizerError("GGUF metadata: a 'gpt2' (BPE) tokenizer without 'tokenizer.ggml.merges'; "
                             "pass a tokenizer.json instead.")
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=_bpe_merges(merges, vocab), ignore_merges=ignore_merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    return _GgufModel(hf=hf, kind=f"gguf-bpe:{pre_name}", piece=_bpe_piece,
                      add_space_prefix=bool(metadata.get("tokenizer.ggml.add_space_prefix", False)),
                      bos_id=None, eos_id=None, add_bos=add_bos, add_eos=False)


def _bpe_merges(merges: list[str], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """The "left right" merge lines whose halves and result are all in the vocabulary, as (left, right)."""
    out = []
    for m in merges:
        k = m.find(" ", 1)
        if k < 0:
            continue
        a, b = m[:k], m[k + 1:]
        if a in vocab and b in vocab and a + b in vocab:
            out.append((a, b))
    return out


def _bpe_piece(token: str, token_type: int) -> bytes:
    if token_type in (_CONTROL, _UNKNOWN, _USER_DEFINED):  # stored as plain text, not byte-level encoded
        return token.encode("utf-8")
    if token_type == _BYTE and _BYTE_TOKEN.match(token):
        return _spm_bytes(token)
    return _byte_level_bytes(token)


def _gguf_spm(metadata: dict, tokens: list[str], vocab: dict[str, int]) -> _GgufModel:
    """SentencePiece ('llama') as BPE: merges ranked by score, byte fallback, "▁" for spaces (and in front)."""
    n = len(tokens)
    scores = _gguf_value(metadata, "tokenizer.ggml.scores", list, (int, float))
    if scores is None:
        scores = [0.0] * n
    if len(scores) < n:
        raise TokenizerError(f"GGUF metadata: tokenizer.ggml.scores has {len(scores)} entries for {n} tokens.")
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id", 0)
    unk = tokens[unk_id] if isinstance(unk_id, int) and 0 <= unk_id < n else None
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=_spm_merges(tokens, scores, vocab), unk_token=unk,
                                byte_fallback=True, fuse_unk=False))
    add_space_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    steps = [normalizers.Prepend("\u2581")] if add_space_prefix else []
    hf.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "\u2581")])
    hf.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
                                   + ([decoders.Strip(" ", 1, 0)] if add_space_prefix else []))
    return _GgufModel(hf=hf, kind="gguf-spm", piece=_spm_piece, add_space_prefix=add_space_prefix,
                      bos_id=1, eos_id=2, add_bos=True, add_eos=False)


def _spm_merges(tokens: list[str], scores: Sequence[float], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Every (left, right) split of every token whose halves are tokens, best-scored token first: BPE on these
    merges is llama.cpp's SentencePiece rule (merge the adjacent pair forming the highest-scored token)."""
    ranked = []
    for i, t in enumerate(tokens):
        for k in range(1, len(t)):
            a, b = t[:k], t[k:]
            if a in vocab and b in vocab:
                ranked.append((-float(scores[i]), i, k, a, b))
    ranked.sort()
    return [(a, b) for _, _, _, a, b in ranked]


def _spm_piece(token: str, token_type: int) -> bytes:
    if token_type == _BYTE:
        return _spm_bytes(token)
    if token_type in (_CONTROL, _UNKNOWN, _USER_DEFINED):
        return token.encode("utf-8")
    return token.replace("\u2581", " ").encode("utf-8")


def _gguf_id(metadata: dict, key: str, n: int, default: int | None = None) -> int | None:
    """The token id metadata[key] if it is one of the n ids, else `default` if it is, else None."""
    v = metadata.get(key)
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n:
        return v
    return default if default is not None and 0 <= default < n else None


def _gguf_end_of_generation(metadata: dict, tokens: list[str], types: list[int], vocab: dict[str, int],
                            eos_id: int | None) -> set[int]:
    """llama.cpp's end-of-generation ids: EOS, EOT, EOM, the FIM pad / repo / file-separator tokens and the
    tokens of _EOG_TEXTS. Like llama.cpp it re-types in `types`: tokens recognised by their text become CONTROL,
    and a few model-family exceptions apply (_retype_exceptions)."""
    n = len(tokens)
    eot_id = _gguf_id(metadata, "tokenizer.ggml.eot_token_id", n)
    eom_id = _gguf_id(metadata, "tokenizer.ggml.eom_token_id", n)
    fim = {kind: _find_token(metadata, [f"tokenizer.ggml.fim_{kind}_token_id", *extra], names, vocab, types)
           for kind, extra, names in _FIM_KINDS}
    if eot_id is None:
        eot_id = _find_token(metadata, [], _EOT_TEXTS, vocab, types)
    if eom_id is None:
        eom_id = _find_token(metadata, [], ("<|eom_id|>",), vocab, types)
    eog = {fim[k] for k in ("pad", "rep", "sep") if fim[k] is not None}
    for name in _EOG_TEXTS:
        if name in vocab:
            eog.add(vocab[name])
            types[vocab[name]] = _CONTROL
    eog.update(i for i in (eos_id, eot_id, eom_id) if i is not None)
    _retype_exceptions(tokens, types, vocab, eog)
    return eog


def _find_token(metadata: dict, keys: Sequence[str], names: Sequence[str], vocab: dict[str, int],
                types: list[int]) -> int | None:
    """The first valid id under one of `keys`, else the first of `names` in the vocabulary (made CONTROL)."""
    for key in keys:
        i = _gguf_id(metadata, key, len(types))
        if i is not None:
            return i
    for name in names:
        if name in vocab:
            types[vocab[name]] = _CONTROL
            return vocab[name]
    return None


def _retype_exceptions(tokens: list[str], types: list[int], vocab: dict[str, int], eog: set[int]) -> None:
    """llama.cpp's per-vocabulary exceptions: <|end|> beside gpt-oss's <|return|> and <|call|> (or <|calls|> and
    <|flush|>) and </s> beside <|tool_response> or <|plamo:eos|> do not end generation; gpt-oss's channel tokens
    are always rendered (user-defined)."""
    texts = {tokens[i] for i in eog}
    if "<|end|>" in texts and (("<|return|>" in texts and "<|call|>" in texts)
                               or {"<|calls|>", "<|flush|>"} <= texts):
        eog.discard(vocab["<|end|>"])
        types[vocab["<|end|>"]] = _USER_DEFINED
    if "</s>" in texts and {"<|tool_response>", "<|plamo:eos|>"} & texts:
        eog.discard(vocab["</s>"])
        types[vocab["</s>"]] = _NORMAL
    for name in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):
        if name in vocab:
            types[vocab[name]] = _USER_DEFINED


def _phi3_rstrip_ids(metadata: dict, types: list[int], vocab: dict[str, int]) -> set[int]:
    """Tokens after which llama.cpp strips whitespace: Phi-3's special tokens (recognised by the model name)."""
    model_name = str(metadata.get("general.name", "")).lower()
    if "phi-3" not in model_name and "phi3" not in model_name:
        return set()
    ids = {i for i, ty in enumerate(types) if ty in (_CONTROL, _USER_DEFINED, _UNKNOWN)}
    if "</s>" in vocab:
        ids.add(vocab["</s>"])
    ids -= {vocab[t] for t in ("<unk>", "<s>", "<|endoftext|>") if t in vocab}
    return ids


def _rstrip_patterns(tokens: list[str], types: list[int], rstrip_ids: set[int]) -> dict[bool, re.Pattern]:
    """{parse_special: regex} matching a strip token and the ASCII whitespace after it (llama.cpp strips isspace;
    the tokenizers rstrip option would also strip Unicode spaces such as U+00A0, U+3000). Without parse_special
    only user-defined tokens are tokens."""
    patterns = {}
    for parse in (True, False):
        names = sorted((tokens[i] for i in rstrip_ids if parse or types[i] == _USER_DEFINED), key=len, reverse=True)
        if names:
            patterns[parse] = re.compile("(" + "|".join(map(re.escape, names)) + ")[ \t\n\v\f\r]+")
    return patterns


def _add_special_tokens(hf: HFTokenizer, tokens: list[str], types: list[int]) -> None:
    """Register control / unknown (special) and user-defined (always matched) tokens with the encoder."""
    added = [AddedToken(tokens[i], special=(ty in (_CONTROL, _UNKNOWN)), normalized=False,
                        rstrip=False, lstrip=False, single_word=False)
             for i, ty in enumerate(types) if ty in (_CONTROL, _UNKNOWN, _USER_DEFINED)]
    if added:
        hf.add_tokens(added)


# -- tokenizer.json construction -------------------------------------------------------------------------------

def _hf_special_ids(hf: HFTokenizer, path: Path, n: int, tok_cfg: dict, gen_cfg: dict,
                    model_cfg: dict) -> tuple[int | None, int | None, set[int]]:
    """(BOS, EOS, end-of-generation ids): tokenizer_config.json's bos_token / eos_token, else the first id of
    generation_config.json's then config.json's bos_token_id / eos_token_id; the EOG set adds every listed EOS."""
    gen_bos = _config_ids(gen_cfg, "generation_config.json", "bos_token_id")
    model_bos = _config_ids(model_cfg, "config.json", "bos_token_id")
    eos_list = (_config_ids(gen_cfg, "generation_config.json", "eos_token_id")
                + _config_ids(model_cfg, "config.json", "eos_token_id"))
    bos_id = _config_token_id(hf, tok_cfg, "bos_token")
    if bos_id is None:
        bos_id = next(iter(gen_bos + model_bos), None)
    eos_id = _config_token_id(hf, tok_cfg, "eos_token")
    if eos_id is None:
        eos_id = next(iter(eos_list), None)
    bos_id, eos_id = _in_vocab(path, n, bos_id, "BOS"), _in_vocab(path, n, eos_id, "EOS")
    return bos_id, eos_id, {i for i in [eos_id, *eos_list] if i is not None and 0 <= i < n}


def _config_token_id(hf: HFTokenizer, tok_cfg: dict, key: str) -> int | None:
    """Id of tokenizer_config.json's `key` token (a string or {"content": string}), None when absent."""
    v = tok_cfg.get(key)
    text = v.get("content") if isinstance(v, dict) else v
    if not isinstance(text, (str, type(None))):
        raise TokenizerError(f"tokenizer_config.json {key} is {type(v).__name__} {v!r:.40}, expected a "
                             "token string; the file is corrupt.")
    return hf.token_to_id(text) if text is not None else None


def _config_ids(cfg: dict, name: str, key: str) -> list[int]:
    """cfg[key] as a list of token ids (it may be one id, a list or absent)."""
    v = cfg.get(key)
    ids = [] if v is None else v if isinstance(v, list) else [v]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise TokenizerError(f"{name} {key} is {v!r:.60}, expected a token id or a list of them; the file "
                             "is corrupt.")
    return ids


def _in_vocab(path: Path, n: int, i: int | None, what: str) -> int | None:
    """i, unless it is an id outside the n-token vocabulary (TokenizerError)."""
    if i is not None and not 0 <= i < n:
        raise TokenizerError(f"{path}: the {what} token id {i} is outside the vocabulary ({n} ids); the "
                             "tokenizer and config files do not belong together.")
    return i


def _post_processor_rule(hf: HFTokenizer, path: Path, n: int) -> tuple[bool, bool, list[int]]:
    """(adds a token in front, adds one at the end, the ids of "a" with them): what the post-processor does."""
    with_sp = hf.encode("a", add_special_tokens=True).ids
    without = hf.encode("a", add_special_tokens=False).ids
    k = next((j for j in range(len(with_sp) - len(without) + 1) if with_sp[j:j + len(without)] == without), 0)
    for i in with_sp:
        _in_vocab(path, n, i, "post-processor's special")
    return k > 0, len(with_sp) > k + len(without), with_sp


def _hf_pieces(hf: HFTokenizer, tokens: list[str], id_to_tok: dict[int, str],
               added: dict[int, AddedToken]) -> tuple[list[bytes], bool]:
    """(bytes of every id, whether decoding drops the first token's leading space), read off the decoder's kind:
    added tokens give their text, ids missing from the vocabulary nothing."""
    dec = json.loads(hf.decoder.__getstate__()) if hf.decoder is not None else {}
    dec_types = _decoder_types(dec)
    strip_first = "Strip" in dec_types or ("Metaspace" in dec_types and _metaspace_prepends(dec))
    piece = _hf_piece_rule(hf, dec_types)
    pieces = [added[i].content.encode("utf-8") if i in added else piece(i, t) if i in id_to_tok else b""
              for i, t in enumerate(tokens)]
    return pieces, strip_first


def _hf_piece_rule(hf: HFTokenizer, dec_types: set[str]) -> Callable[[int, str], bytes]:
    """(id, token) -> bytes for a decoder of these types: byte-level, SentencePiece-like, or the decoder itself."""
    if "ByteLevel" in dec_types:
        return lambda i, token: _byte_level_bytes(token)
    if dec_types & {"Replace", "ByteFallback", "Metaspace"}:
        return lambda i, token: _spm_bytes(token)
    return lambda i, token: hf.decode([i], skip_special_tokens=False).encode("utf-8")


def _gguf_value(metadata: dict, key: str, kind: type, item: type | tuple | None = None):
    """metadata[key] (None when absent) if it is a `kind` (a list of `item`s), else TokenizerError naming it."""
    value = metadata.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (item is not None and not all(isinstance(x, item) for x in value)):
        wanted = f"a list of {getattr(item, '__name__', 'numbers')}" if item is not None else f"a {kind.__name__}"
        raise TokenizerError(f"GGUF metadata {key} is not {wanted}; the file is corrupt: download it again.")
    return value


def _config_file(path: Path) -> dict:
    """A JSON object file beside tokenizer.json ({} when absent), parsed with bounded depth."""
    return jsonfile.read(path) if path.is_file() else {}


def _flag(tok_cfg: dict, key: str) -> bool:
    """tokenizer_config.json's add_bos_token / add_eos_token: true, false or null (false)."""
    v = tok_cfg.get(key)
    if not isinstance(v, (bool, type(None))):
        raise TokenizerError(f"tokenizer_config.json {key} is {v!r:.40}, expected true or false; the file is corrupt.")
    return bool(v)


def _vocab_bound(path: Path, vocab: dict[str, int], size: int, model_cfg: dict) -> int:
    """The length of the id-indexed tables for a tokenizer.json vocabulary {token: id} of `size` ids: one past
    its largest id, which must be below the larger of config.json's vocab_size and twice the number of tokens
    (real vocabularies have few gaps; one id of 2^31 would otherwise build a 2^31-entry list)."""
    if not vocab:
        raise TokenizerError(f"{path}: the vocabulary is empty; the tokenizer.json is corrupt.")
    model_vocab = model_cfg.get("vocab_size")
    limit = max(2 * len(vocab), model_vocab if isinstance(model_vocab, int) else 0)
    top = max(vocab.values())
    if top >= limit:
        raise TokenizerError(f"{path}: token {max(vocab, key=vocab.get)[:40]!r} has id {top}, far beyond the "
                             f"{len(vocab)} tokens of the vocabulary (limit {limit}); the tokenizer.json is corrupt.")
    return max(size, top + 1)

def _decoder_types(dec: dict) -> set[str]:
    out = set()
    if not isinstance(dec, dict):
        return out
    t = dec.get("type")
    if t:
        out.add(t)
    for d in dec.get("decoders") or []:
        out |= _decoder_types(d)
    return out


def _metaspace_prepends(dec: dict) -> bool:
    if dec.get("type") == "Metaspace":
        return dec.get("prepend_scheme", "always") != "never" and dec.get("add_prefix_space", True) is not False
    return any(_metaspace_prepends(d) for d in dec.get("decoders") or [])


class StreamDecoder:
    """Incremental detokenizer for generated tokens.

    push(token_id) returns the text completed by that token: a character whose UTF-8 bytes are spread over several
    byte-level tokens comes out once, whole, with the token that completes it (never a U+FFFD for a sequence
    still incomplete). flush() returns what is left (an incomplete sequence at the end becomes U+FFFD, as in
    decode). The concatenation of all pushes and the flush equals tokenizer.decode(ids, skip_special).
    continuation=True is for tokens that continue a prompt: the first token keeps its leading space even where
    decode() drops it (SentencePiece vocabularies), so prompt text + pieces reads as one text.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False, continuation: bool = False):
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = not continuation

    def push(self, token_id: int) -> str:
        b = self.tokenizer.token_bytes(int(token_id), self.skip_special)
        if self._first:
            if self.tokenizer._strip_first_space and b.startswith(b" "):
                b = b[1:]
            self._first = False
        return self._utf8.decode(b)

    def flush(self) -> str:
        out = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return out
