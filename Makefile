# Every command a user needs. Each target sets up .venv first (idempotent).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)

.PHONY: setup demo lr-find test test-fast gui bench xvfb clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

# A virtual screen for the GUI tests (skipped where there is no apt-get or no root).
xvfb:
	@command -v Xvfb >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb >/dev/null) || \
		echo "note: Xvfb is not installed; the tests that open the real window will be skipped"; }

# The demo starts afresh each time: output/demo, output/concepts_demo (two concepts and a
# regularization folder), output/tiny_sd, output/text_to_image_demo and output/validation_ema_demo (validation
# loss and EMA) are its own scratch folders. The second half builds a tiny Stable Diffusion pipeline with random weights
# (there are no real weights offline) and trains the text-to-image LoRA preset on it. The demo's
# models are tiny: one torch thread is quickest for them (and fair to a shared machine).
demo: export OMP_NUM_THREADS = 1
demo: setup
	rm -rf output/demo output/tiny_sd output/text_to_image_demo output/concepts_demo output/validation_ema_demo
	$(PY) scripts/preview.py training_presets/demo.json --csv output/demo/preview.csv --png output/demo/preview.png
	$(PY) scripts/train.py training_presets/demo.json
	$(PY) scripts/preview.py training_presets/concepts_demo.json \
		--csv output/concepts_demo/preview.csv --png output/concepts_demo/preview.png
	$(PY) scripts/train.py training_presets/concepts_demo.json
	$(PY) scripts/build_tiny_pipeline.py --type stable_diffusion output/tiny_sd
	$(PY) scripts/preview.py training_presets/text_to_image_demo.json \
		--csv output/text_to_image_demo/preview.csv --png output/text_to_image_demo/preview.png
	$(PY) scripts/train.py training_presets/text_to_image_demo.json
	$(PY) scripts/preview.py training_presets/validation_ema_demo.json \
		--csv output/validation_ema_demo/preview.csv --png output/validation_ema_demo/preview.png
	$(PY) scripts/train.py training_presets/validation_ema_demo.json
	@echo
	@echo "Done. What the demo wrote:"
	@echo "  LoRA files:  output/text_to_image_demo/model (pytorch_lora_weights.safetensors, lora_kohya.safetensors)"
	@echo "  samples:     output/text_to_image_demo/samples"
	@echo "  TensorBoard: output/demo/tensorboard, output/concepts_demo/tensorboard (data/samples/<concept>)"
	@echo "               and output/text_to_image_demo/tensorboard"
	@echo "  validation:  output/validation_ema_demo/tensorboard (loss/validation, ema/decay); its LoRA holds the EMA"
	@echo "Look at the curves:  $(VENV)/bin/tensorboard --logdir output  (then open http://localhost:6006)"
	@echo "Load the LoRA:       pipe = StableDiffusionPipeline.from_pretrained(\"output/tiny_sd\")"
	@echo "                     pipe.load_lora_weights(\"output/text_to_image_demo/model\")"

# LR range test on the demo preset (a throw-away copy: output/demo is left alone).
# One torch thread: on 2 shared cores the demo's tiny model trains several times faster on one.
lr-find: export OMP_NUM_THREADS = 1
lr-find: setup
	$(PY) scripts/lr_find.py training_presets/demo.json --csv output/lr_find/demo.csv --png output/lr_find/demo.png

test: setup xvfb
	$(PY) -m pytest

# Everyday work: every test that trains no model and opens no window (under 2 minutes).
test-fast: export OMP_NUM_THREADS = 1
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

gui: setup
	$(PY) main.py

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf output test-artifacts .pytest_cache
