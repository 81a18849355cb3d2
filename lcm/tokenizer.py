"""Byte-level BPE tokenizer for the sentence decoder and the token baseline, trained on the training split.

Why our own BPE and not the encoder's WordPiece: MiniLM's tokenizer is uncased (a decoder built on it
could never reproduce "Emma" or "$"), maps unseen characters to [UNK], and has a 30k vocabulary whose
softmax would dominate a small decoder's cost on CPU. Byte-level BPE keeps case, has no unknown tokens
(any UTF-8 text round-trips exactly), and its vocabulary size is ours to choose.
"""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lcm.errors import LCMError

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)


class SentenceTokenizer:
    """A `tokenizers.Tokenizer` with pad/bos/eos ids; serializes to one JSON string (kept in checkpoints)."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        ids = [tok.token_to_id(s) for s in SPECIALS]
        if None in ids:
            raise LCMError(f"tokenizer lacks the special tokens {SPECIALS}")
        self.pad_id, self.bos_id, self.eos_id = ids

    @classmethod
    def train(cls, texts: list[str], vocab_size: int = 4096, min_frequency: int = 2,
              split_digits: bool = False) -> "SentenceTokenizer":
        """BPE on `texts`. split_digits: every digit is its own token (as Llama's and PaLM's tokenizers), so a number
        is spelled digit by digit -- an unseen number is then made of seen tokens, not of merges never trained."""
        if not texts:
            raise LCMError("cannot train a tokenizer on no sentences")
        tok = Tokenizer(models.BPE())
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                             if split_digits else byte_level)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIALS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def from_str(cls, data: str) -> "SentenceTokenizer":
        try:
            return cls(Tokenizer.from_str(data))
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises plain Exception on bad JSON
            raise LCMError(f"stored tokenizer is corrupted ({type(e).__name__})") from e

    def to_str(self) -> str:
        return self.tok.to_str()

    @property
    def splits_digits(self) -> bool:
        """Whether numbers are spelled digit by digit (`train(split_digits=True)`)."""
        return '"Digits"' in self.tok.to_str()

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, texts: list[str]) -> list[list[int]]:
        """texts -> token ids, without bos/eos."""
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: list[list[int]]) -> list[str]:
        """token ids (specials dropped) -> texts."""
        return self.tok.decode_batch([list(map(int, x)) for x in ids], skip_special_tokens=True)

    def to_hf(self):
        """This BPE as a `transformers.PreTrainedTokenizerFast` (what HF models, `AutoTokenizer` and TRL take)."""
        return wrap_fast(self.tok, {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD})


# ---- the Hugging Face wrapping (the token baseline's tokenizer) --------------------------------------------
def wrap_fast(tok: Tokenizer, specials: dict[str, str | None]):
    """A `tokenizers.Tokenizer` as a `transformers.PreTrainedTokenizerFast`; `specials` names its bos / eos / pad
    tokens. No clean-up of spaces on decode, so byte-level text round-trips exactly."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **specials)


def fast_record(fast) -> dict:
    """What a checkpoint keeps of a `PreTrainedTokenizerFast`: the backend's JSON and the special tokens."""
    specials = {k: getattr(fast, k) for k in ("bos_token", "eos_token", "pad_token")}
    return {"tokenizer": fast.backend_tokenizer.to_str(), "special_tokens": {k: v and str(v) for k, v in specials.items()}}


def fast_from_record(data: str, specials: dict[str, str | None]):
    """The inverse of `fast_record`."""
    try:
        tok = Tokenizer.from_str(data)
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises plain Exception on bad JSON
        raise LCMError(f"stored tokenizer is corrupted ({type(e).__name__})") from e
    return wrap_fast(tok, specials)


class TokenizerInCheckpoint:
    """For LightningModules that train their own tokenizer: it travels in the checkpoint's `lcm` record, next
    to `self.meta` (whose "kind" names the model: "decoder", "token"). Subclasses set `KIND` (the record's
    kind), `WHAT` (the kind's name in messages) and `TRAIN_HINT` (the command that trains one)."""

    KIND = ""
    WHAT = ""
    TRAIN_HINT = ""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lcm"] = dict(self.meta, tokenizer=self.tokenizer.to_str() if self.tokenizer else None)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = dict(checkpoint.get("lcm") or {})
        if meta.get("kind") != self.KIND or not meta.get("tokenizer"):
            raise LCMError(f"checkpoint is not a {self.WHAT} checkpoint (no tokenizer record)")
        self.check_record(meta)
        self.tokenizer = SentenceTokenizer.from_str(meta.pop("tokenizer"))
        self.meta = meta

    def check_record(self, meta: dict) -> None:
        """Refuse a checkpoint whose record does not fit the data this run trains on (default: any fits)."""

    @classmethod
    def from_checkpoint(cls, path, device: str = "cpu"):
        """An eval-mode model from an `lcm fit` checkpoint of this kind (one error line for another kind)."""
        from lcm.checkpoint import load_module

        return load_module(cls, path, cls.KIND, cls.WHAT, cls.TRAIN_HINT, device)

    @classmethod
    def from_pretrained(cls, folder, device: str = "cpu"):
        """An eval-mode model from a folder written by `lcm export` (safetensors weights, the tokenizer in
        config.json); no pickle is read."""
        from lcm.checkpoint import on_device
        from lcm.pretrained import load_pretrained

        model, meta = load_pretrained(folder, lambda _: cls, kind=cls.KIND)
        model.on_load_checkpoint({"lcm": meta})
        return on_device(model, device)
