"""The one joint SentencePiece vocabulary shared by source, target and every model.

Special ids are fixed so that models, batches and search agree without looking them up:
``<pad>`` = 0, ``<unk>`` = 1, ``<s>`` (BOS) = 2, ``</s>`` (EOS) = 3.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class Vocab:
    """A thin wrapper over a SentencePiece processor, built from the model's bytes."""

    def __init__(self, model_bytes: bytes):
        import sentencepiece as spm

        self.model_bytes = bytes(model_bytes)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_bytes)
        if (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id()) != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError("SentencePiece model does not use the fixed ids pad=0 unk=1 bos=2 eos=3")

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        return cls(Path(path).read_bytes())

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, lines: list[str]) -> list[list[int]]:
        """Text lines -> id lists (no BOS/EOS)."""
        return self.sp.encode(lines)

    def pieces(self, ids: list[int]) -> list[str]:
        return [self.sp.id_to_piece(i) for i in ids]

    def decode(self, ids: list[int]) -> str:
        """Id list -> detokenised text; special ids are dropped."""
        return self.sp.decode([i for i in ids if i > EOS_ID])


def train_sentencepiece(
    lines: Iterable[str], vocab_size: int, model_type: str = "unigram", character_coverage: float = 1.0
) -> bytes:
    """Train one joint SentencePiece model on ``lines`` (source and target together); return its bytes.

    A vocabulary larger than the text supports raises ``ValueError`` with SentencePiece's limit.
    """
    import sentencepiece as spm

    out = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=out,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            input_sentence_size=2_000_000,
            shuffle_input_sentence=True,
            num_threads=2,
            minloglevel=2,
            max_sentence_length=65536,
        )
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else "training failed"
        raise ValueError(f"SentencePiece could not train a {vocab_size}-piece vocabulary: {msg}") from None
    return out.getvalue()
