import json

import pytest
from transformers import AutoTokenizer

from conftest import run_script


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    (root / "train").mkdir()
    (root / "validation").mkdir()
    titles = [f"Nestling Organic Cotton Swaddle Blanket, Pack of {i % 7}, 12\" Tall" for i in range(300)]
    (root / "train" / "corpus_chunk_00000.txt").write_text("\n".join(titles) + "\n")
    (root / "validation" / "corpus_chunk_00000.txt").write_text("Petit Bébé Bottle 9 oz ™\nSoft <b>bib</b>\n")
    run_script("tokenizer/run_tokenizer_fitting.py", "--corpus-dir", str(root / "train"), "--output-dir",
               str(root / "tok"), "--vocab-size", "400", "--no-progress")
    return root


def test_special_token_ids_and_round_trip(fitted):
    tok = AutoTokenizer.from_pretrained(str(fitted / "tok"))
    assert [tok.convert_tokens_to_ids(t) for t in ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]] == [0, 1, 2, 3, 4]
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.mask_token_id) == (0, 1, 2, 4)
    text = 'Petit Bébé "Bottle" 9 oz ™ 😀'
    ids = tok(text)["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2  # RoBERTa post-processing: <s> ... </s>
    assert tok.decode(ids, skip_special_tokens=True) == text  # byte level: nothing is unknown
    masked = tok("Organic <mask> Blanket")["input_ids"]
    assert tok.mask_token_id in masked and len(tok.vocab) <= 400
    # <mask> takes the space before it, as RoBERTa's does: the word it stands for is " word", not a lone " "
    words = [tok(w, add_special_tokens=False)["input_ids"] for w in ("Organic", " Blanket")]
    assert masked == [0, *words[0], tok.mask_token_id, *words[1], 2]


def test_report_is_saved(fitted):
    report = json.load(open(fitted / "tok" / "tokenizer_report.json"))
    assert report["validation_lines"] == 2 and report["round_trip_ok"] == 2
    assert report["bytes_per_token"] > 1 and report["vocab_size"] <= 400


def test_refuses_to_overwrite(fitted):
    result = run_script("tokenizer/run_tokenizer_fitting.py", "--corpus-dir", str(fitted / "train"),
                        "--output-dir", str(fitted / "tok"), check=False)
    assert result.returncode == 2 and "--overwrite" in result.stderr


def test_max_lines_fits_on_an_even_sample(tmp_path):
    from tokenizer.fitting import sample_lines

    shard = tmp_path / "c.txt"
    shard.write_text("".join(f"line {i}\n" for i in range(1000)))
    picked = list(sample_lines([str(shard)], 100))
    assert len(picked) == 100 and picked[0] == "line 0" and picked[-1] == "line 990"
    run_script("tokenizer/run_tokenizer_fitting.py", "--corpus-dir", str(shard), "--output-dir", str(tmp_path / "tok"),
               "--vocab-size", "300", "--max-lines", "100", "--no-progress")
    assert AutoTokenizer.from_pretrained(str(tmp_path / "tok")).mask_token_id == 4


def test_saved_files_load_as_those_transformers_writes(fitted, tmp_path):
    """save_tokenizer writes the config by hand (transformers' import is slow): AutoTokenizer must load it
    exactly as it loads transformers' own save_pretrained of the same tokenizer."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from tokenizer.fitting import MODEL_MAX_LENGTH, SPECIAL_ROLES

    ours = AutoTokenizer.from_pretrained(str(fitted / "tok"))
    raw = Tokenizer.from_file(str(fitted / "tok" / "tokenizer.json"))
    PreTrainedTokenizerFast(tokenizer_object=raw, model_max_length=MODEL_MAX_LENGTH, **SPECIAL_ROLES).save_pretrained(
        str(tmp_path / "hf"))
    theirs = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    attributes = ["bos_token_id", "eos_token_id", "pad_token_id", "mask_token_id", "unk_token_id", "cls_token_id",
                  "sep_token_id", "model_max_length", "all_special_ids", "all_special_tokens"]
    assert {a: getattr(ours, a) for a in attributes} == {a: getattr(theirs, a) for a in attributes}
    texts = ["Organic <mask> Blanket, 12\" Tall", "Petit Bébé ™", ""]
    assert ours(texts)["input_ids"] == theirs(texts)["input_ids"]
    assert ours.get_special_tokens_mask([0, 9, 4, 2, 1], already_has_special_tokens=True) == [1, 0, 1, 1, 1]
    assert theirs.get_special_tokens_mask([0, 9, 4, 2, 1], already_has_special_tokens=True) == [1, 0, 1, 1, 1]
