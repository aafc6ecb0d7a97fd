"""What the model has learned, in TensorBoard: fill-mask samples at each validation, token embeddings at the end."""
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from transformers import PreTrainedTokenizerBase

from common import UsageError
from training.masking import pad_rows
from training.token_cache import TokenizedSplit

FILL_MASK_TAG = "fill_mask/samples"


def watch_ids(tokenizer: PreTrainedTokenizerBase, text: str, max_length: int) -> list[int]:
    """A watched text's input ids as the fill-mask table feeds them: <s> text </s>, cut to `max_length`."""
    return tokenizer(text, truncation=True, max_length=max_length)["input_ids"]


def read_watch_texts(path: str, tokenizer: PreTrainedTokenizerBase, max_seq_length: int = 128) -> list[str]:
    """The lines of --watch-texts, each checked to hold exactly one <mask> within `max_seq_length` tokens."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(number, line.strip()) for number, line in enumerate(f, 1) if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read --watch-texts {path!r} ({e}); pass a UTF-8 text file") from None
    mask = tokenizer.mask_token
    for number, line in lines:
        if line.count(mask) != 1:
            raise UsageError(f"--watch-texts {path!r} line {number} has {line.count(mask)} {mask} tokens; "
                             f"write one {mask} per line")
        if tokenizer.mask_token_id not in watch_ids(tokenizer, line, max_seq_length):
            raise UsageError(f"--watch-texts {path!r} line {number} has its {mask} past --max-seq-length "
                             f"{max_seq_length} tokens; shorten the line or raise --max-seq-length")
    if not lines:
        raise UsageError(f"--watch-texts {path!r} is empty; write lines with one {mask} each")
    return [line for _, line in lines]


class FillMaskSamples(Callback):
    """At every validation, a TensorBoard text table: each watched text with one token masked, the
    expected token (for validation sentences) and the model's top 3 with their probabilities.

    The texts are `watch_texts` (each with one <mask>) or, without them, `count` validation sentences
    chosen by `seed` with one word-initial token masked: fixed, so the tables compare across steps.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, watch_texts: list[str] | None = None, count: int = 8,
                 seed: int = 42, top_k: int = 3) -> None:
        self.tokenizer, self.watch_texts, self.count, self.seed, self.top_k = tokenizer, watch_texts, count, seed, top_k
        self.examples: list[tuple[list[int], str]] | None = None  # (input ids with one <mask>, expected token)

    def _build(self, split: TokenizedSplit, max_length: int = 128) -> list[tuple[list[int], str]]:
        tok = self.tokenizer
        if self.watch_texts:  # read_watch_texts checked that each <mask> survives the cut
            return [(watch_ids(tok, text, max_length), "") for text in self.watch_texts]
        rng = np.random.default_rng([self.seed, 3])
        candidates = rng.choice(len(split), min(len(split), 50 * self.count), replace=False)
        examples = []
        for i in candidates:
            body = split.sentence(int(i))[: max_length - 2].tolist()
            words = [p for p, t in enumerate(tok.convert_ids_to_tokens(body)) if t.startswith("Ġ")]
            if len(body) < 3 or not words:
                continue
            position = words[int(rng.integers(len(words)))]
            expected = tok.decode([body[position]])
            body[position] = tok.mask_token_id
            examples.append(([tok.bos_token_id, *body, tok.eos_token_id], expected))
            if len(examples) == self.count:
                break
        return examples

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.logger is None:
            return
        if self.examples is None:
            data = trainer.datamodule
            self.examples = self._build(data.val_set.sentences.split, data.max_seq_length)
        if not self.examples:
            return
        trainer.logger.experiment.add_text(FILL_MASK_TAG, self.table(pl_module.model), global_step=trainer.global_step)

    @torch.no_grad()
    def table(self, model: torch.nn.Module) -> str:
        """The markdown table of the watched texts and the model's predictions."""
        tok = self.tokenizer
        ids, attention_mask = pad_rows([seq for seq, _ in self.examples], tok.pad_token_id)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        logits = model(input_ids=ids.to(device), attention_mask=attention_mask.to(device)).logits
        model.train(was_training)
        rows = ["| text | expected | " + " | ".join(f"top {k + 1}" for k in range(self.top_k)) + " |",
                "|---|---|" + "---|" * self.top_k]
        for row, (seq, expected) in enumerate(self.examples):
            position = seq.index(tok.mask_token_id)
            probs = logits[row, position].float().softmax(-1)
            top = probs.topk(self.top_k)
            guesses = [f"{_cell(tok.decode([int(i)]))} ({p:.2f})" for p, i in zip(top.values.tolist(), top.indices)]
            text = tok.decode(seq[1:-1]) if seq[-1] == tok.eos_token_id else tok.decode(seq)
            rows.append(f"| {_cell(text)} | {_cell(expected)} | " + " | ".join(guesses) + " |")
        return "\n".join(rows)


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell; leading spaces (word starts) made visible."""
    text = text.replace("|", "\\|").replace("\n", " ")
    return f"`{text}`" if text != text.strip() else (text or "-")


def log_token_embeddings(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, split: TokenizedSplit,
                         count: int, writer, step: int) -> None:
    """The input embeddings of the `count` most frequent tokens of the training split, in TensorBoard's
    projector, labelled with the token strings."""
    counts = np.zeros(len(tokenizer), dtype=np.int64)
    for start in range(0, split.tokens.size, 1 << 24):  # the memory-mapped stream, a slice at a time
        counts += np.bincount(split.tokens[start : start + (1 << 24)], minlength=len(counts))[: len(counts)]
    counts[tokenizer.all_special_ids] = 0
    ids = [int(i) for i in np.argsort(-counts, kind="stable")[:count] if counts[i] > 0]
    weights = model.get_input_embeddings().weight.detach()[ids].float().cpu()
    labels = [token.replace("\t", " ") for token in tokenizer.convert_ids_to_tokens(ids)]
    writer.add_embedding(weights, metadata=labels, global_step=step, tag="token_embeddings")
