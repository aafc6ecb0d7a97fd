"""Export any training checkpoint as a Hugging Face model directory (safetensors + tokenizer).

    python training/export_model.py --checkpoint runs/demo/job/checkpoints/last.ckpt --output-dir exported/
"""
import argparse
import json
import os
import sys
from typing import TYPE_CHECKING


try:  # common first: it checks that the packages Python imports are this checkout's
    import common
except ImportError:
    sys.exit("error: this project is not installed; run `pip install -e .` in its checkout (docs/troubleshooting.md)")
common.check_own_checkout(__file__)

from common import ArgumentParser, UsageError, run_main

if TYPE_CHECKING:  # the modules themselves are imported where used: --help and a bad flag answer without torch
    from training.model import MaskedLMModule


def load_module(checkpoint: str) -> "MaskedLMModule":
    """Rebuild the LightningModule from a checkpoint, reading tensors and plain data only (weights_only)."""
    import torch

    from training.model import MaskedLMModule

    if not os.path.isfile(checkpoint):
        raise UsageError(f"checkpoint {checkpoint!r} does not exist; pass JOB/checkpoints/last.ckpt or another .ckpt")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        module = MaskedLMModule(**state["hyper_parameters"])
        module.load_state_dict(state["state_dict"])
    except Exception as e:  # truncated, foreign or incompatible files all end here
        raise UsageError(f"{checkpoint!r} is not a checkpoint of this pipeline ({str(e).splitlines()[0][:200]})") from None
    module.global_step_loaded = state.get("global_step", 0)
    return module


def default_tokenizer(checkpoint: str) -> str | None:
    """The tokenizer the run used, from JOB/run_config.json beside JOB/checkpoints/."""
    run_file = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(checkpoint))), "run_config.json")
    if os.path.isfile(run_file):
        with open(run_file) as f:
            config = json.load(f)["config"]
            return config.get("tokenizer_path") or config.get("init_from")
    return None


def load_checkpoint_with_tokenizer(checkpoint: str, tokenizer_path: str | None = None):
    """(module, tokenizer, tokenizer.json path) of a checkpoint; the tokenizer defaults to the run's own
    and must match the model's vocabulary."""
    from training.job import load_tokenizer

    tokenizer_path = tokenizer_path or default_tokenizer(checkpoint)
    if tokenizer_path is None:
        raise UsageError("cannot tell which tokenizer the run used; pass --path-to-tokenizer")
    tokenizer, tokenizer_file = load_tokenizer(tokenizer_path)
    module = load_module(checkpoint)
    if len(tokenizer) != module.config.vocab_size:
        raise UsageError(f"the tokenizer has {len(tokenizer)} tokens but the model {module.config.vocab_size}; "
                         "pass the --path-to-tokenizer the run was trained with")
    return module, tokenizer, tokenizer_file


def export_checkpoint(checkpoint: str, output_dir: str, tokenizer_path: str | None = None) -> int:
    """Export a checkpoint's model with its tokenizer; return the checkpoint's global step."""
    from training.export import export_model

    module, tokenizer, _ = load_checkpoint_with_tokenizer(checkpoint, tokenizer_path)
    export_model(module.model, tokenizer, output_dir)
    return module.global_step_loaded


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a .ckpt written by run_training.py")
    p.add_argument("--output-dir", required=True, help="directory to write (replaced only once complete)")
    p.add_argument("--path-to-tokenizer", help="step 2's directory (default: the one the run used, from run_config.json)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    step = export_checkpoint(args.checkpoint, args.output_dir, args.path_to_tokenizer)
    print(f"exported step {step} to {args.output_dir}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_main(main))
