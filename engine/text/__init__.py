"""Text in and out of token ids: the tokenizer (tokenizer.py: byte-level BPE and SentencePiece as llama.cpp
tokenizes, and the streaming decoder) and the chat template (template.py: a sandboxed Jinja renderer of the
model's template). With engine.formats it is the lowest floor of engine/: it imports engine.errors and
engine.formats (bounded JSON), never engine.runtime, engine.chat, engine.server or engine.cli."""
