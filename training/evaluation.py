"""Score a masked LM on a split with training's fixed validation masks (see FixedMaskedSample)."""
import contextlib

import torch
from transformers import PreTrainedTokenizerBase, RobertaForMaskedLM

from training.masking import MaskedLMCollator, pad_masked
from training.model import masked_lm_loss, perplexity
from training.sequences import FixedMaskedSample
from training.token_cache import encode_split, text_files


def validation_sample(val_path: str, tokenizer: PreTrainedTokenizerBase, tokenizer_file: str, cache_dir: str,
                      max_seq_length: int = 128, mlm_probability: float = 0.15, seed: int = 42,
                      max_sentences: int = 10_000, progress: bool = False) -> FixedMaskedSample:
    """The sample training validates on, for the same split, seed and settings."""
    split = encode_split(text_files(val_path, "--path-to-val-set"), tokenizer_file, cache_dir,
                         tokenizer.eos_token_id, progress, "validation")
    collator = MaskedLMCollator(tokenizer, mlm_probability)
    return FixedMaskedSample(split, max_seq_length, tokenizer.bos_token_id, tokenizer.eos_token_id, collator, seed,
                             max_sentences)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast Lightning's mixed-precision plugin uses for this precision (none for the others)."""
    if precision in ("bf16-mixed", "16-mixed"):
        dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
        return torch.autocast(device.type, dtype=dtype, cache_enabled=False)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: RobertaForMaskedLM, sample: FixedMaskedSample, pad_id: int, batch_size: int = 32,
             precision: str = "32-true", device: torch.device | str = "cpu") -> dict:
    """Loss (mean over masked tokens), perplexity, masked accuracy, sentences and masked tokens."""
    device = torch.device(device)
    model = model.to(device).eval()
    sums = torch.zeros(3, dtype=torch.float64)
    with autocast(device, precision):
        for start in range(0, len(sample), batch_size):
            batch = pad_masked([sample[i] for i in range(start, min(start + batch_size, len(sample)))], pad_id)
            tensors = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            loss, correct, n = masked_lm_loss(model, tensors["input_ids"], tensors["attention_mask"], tensors["labels"],
                                              masked_most=batch["masked_most"], masked_total=batch["masked_total"])
            loss, correct, n = torch.stack([loss.detach().float(), correct.float(), n.float()]).cpu().double()
            sums += torch.stack([loss * n, correct, n])  # summed in float64 on the host: MPS has none
    loss_sum, correct, n = sums.tolist()
    loss = loss_sum / max(n, 1.0)
    return {"loss": loss, "perplexity": perplexity(loss), "mlm_accuracy": correct / max(n, 1.0),
            "sentences": len(sample), "masked_tokens": int(n)}
