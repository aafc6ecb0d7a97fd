# make demo: venv + install + the whole pipeline on the bundled sample (CPU, < 10 minutes)
# make test: venv + install + the test suite
# make test-lowest: a second venv with the lowest versions pyproject.toml allows + the tests that cover them
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
DEMO_DIR ?= runs/demo
DEMO_STEPS ?= 1500

.PHONY: install demo test test-lowest images clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test,probe]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) corpus/run_corpus_generation.py --output-dir $(DEMO_DIR)/corpus --overwrite --no-progress
	$(PY) tokenizer/run_tokenizer_fitting.py --corpus-dir $(DEMO_DIR)/corpus/train \
		--output-dir $(DEMO_DIR)/tokenizer --overwrite --no-progress
	rm -rf $(DEMO_DIR)/job
	$(PY) training/run_training.py --job-dir $(DEMO_DIR)/job --path-to-train-set $(DEMO_DIR)/corpus/train \
		--path-to-val-set $(DEMO_DIR)/corpus/validation --path-to-tokenizer $(DEMO_DIR)/tokenizer \
		--model-size tiny --no-packing --batch-size 32 --max-steps $(DEMO_STEPS) --validate-every-n-steps 250 \
		--checkpoint-every-n-steps 500 \
		--lr 1e-3 --accelerator cpu
	$(PY) training/plot_learning_curves.py --job-dir $(DEMO_DIR)/job
	$(PY) training/run_fill_mask.py --model-dir $(DEMO_DIR)/job/model --top-k 5 \
		"Little Sprout Organic Cotton Swaddle <mask>" "Moonbeam Anti-Colic <mask>, 9 oz"

# Redraw the README's pictures: the schema, and from the last `make demo` its learning curves and what
# TensorBoard shows of it (a headless Chromium: apt install chromium).
images: install
	$(PY) images/draw_schema.py
	$(PY) training/plot_learning_curves.py --job-dir $(DEMO_DIR)/job --output images/learning_curves.png
	$(PY) images/screenshot_tensorboard.py --logdir $(DEMO_DIR)/job/tensorboard

test: install
	$(PY) -m pytest

# Each direct dependency at its lower bound (.ci/lowest.txt), in a fresh venv so that nothing newer lingers;
# the tests cover training, resume, export and the corpus readers (datasets, pyarrow, fsspec, huggingface_hub).
LOWEST ?= .venv-lowest
LOWEST_TESTS ?= tests/test_end_to_end.py tests/test_exact_resume.py tests/test_reliability.py tests/test_corpus.py \
	tests/test_json_lines.py tests/test_remote.py

$(LOWEST)/.installed: pyproject.toml .ci/lowest.txt
	rm -rf $(LOWEST)
	python3 -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet -c .ci/lowest.txt torch
	$(LOWEST)/bin/python -m pip install --quiet -c .ci/lowest.txt -e ".[test]"
	touch $@

test-lowest: $(LOWEST)/.installed
	$(LOWEST)/bin/python -m pip list 2>/dev/null | grep -iE "^($$(sed -n 's/==.*//p' .ci/lowest.txt | paste -sd'|')) "
	$(LOWEST)/bin/python -m pytest $(LOWEST_TESTS) -x -q

clean:
	rm -rf $(VENV) $(LOWEST) runs .pytest_cache
