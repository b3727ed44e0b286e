# The README's commands. Each creates .venv when missing and installs the project into it.
# On a CPU-only machine torch==$(TORCH_VERSION) is installed first (a local CPU wheel here), so pip never
# pulls CUDA wheels; where torch is already importable in .venv it is kept as it is.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
NUM_RANKS ?= 2
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/cotdistill/torch_extensions
export PYTHONUNBUFFERED := 1

.PHONY: install demo experiment test lint bench bench-eval bench-teacher bench-train bench-large bench-lm-eval bench-on-policy gpu-wheels gpu-check clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	@$(PY) -m pip install -q -e ".[dev,peer,serving,gkd-peer]"
	@# DeepSpeed's CPU ops compiled now (a few minutes, once per .venv) instead of in the first runs that need them.
	@$(PY) -c "from cotdistill.engine import build_cpu_ops; print('DeepSpeed CPU ops:', build_cpu_ops())"
	@touch $@

# The embedded default: tiny GPT-2, synthetic 1-3 step problems, ZeRO-3 + CPU offload on NUM_RANKS ranks.
# launchers/launch.py is the deepspeed launcher without its start-up lines; COTDISTILL_VERBOSE=1 shows them.
demo: install
	@rm -rf runs/demo-gpt2 runs/tiny-gpt2
	$(PY) launchers/launch.py --num_gpus $(NUM_RANKS) launchers/train.py --config recipes/demo-gpt2-synthetic.yaml

# An experiment (recipes/experiments/$(EXP).yaml; default the embedded one of issue 5: answer-only vs CoT vs Socratic
# students, same budget) over SEEDS seeds per arm (default: the file's, 3), every arm or ARMS=a,b; results are appended
# to runs/experiments/$(EXP)/results.json as each run ends (a rerun does only what is missing), then report.md/.png.
EXP ?= socratic-vs-cot
experiment: install
	$(PY) benchmarks/experiment.py $(EXP) --ranks $(NUM_RANKS) $(if $(ARMS),--arms $(ARMS)) $(if $(SEEDS),--seeds $(SEEDS))

test: install
	$(PY) -m pytest -q

# Benchmarks (not part of make test); figures go to docs/BENCHMARKS.md with their commands.
bench: bench-eval bench-teacher bench-train

bench-eval: install
	@rm -rf runs/bench-tiny-t5
	$(VENV)/bin/cotdistill make-tiny t5 runs/bench-tiny-t5 --config recipes/demo-t5-synthetic.yaml
	$(PY) benchmarks/eval_throughput.py --model runs/bench-tiny-t5 --problems 128 --batch_size 16 --max_new_tokens 48

bench-teacher: install
	$(PY) benchmarks/teacher_throughput.py --requests 3200 --runs 8:0.1 32:0.1 64:0.1 64:0.25 256:1.0

# cotdistill's trainer vs the Hugging Face Trainer (tokens/s, padding, peak RSS, loss, MFU) on tiny-gpt2, tiny-t5,
# t5-small and gpt2-small, one 2-rank run after the other, held-out loss of both: about 14 minutes on 2 CPU cores.
bench-train: install
	$(PY) benchmarks/train_throughput.py --out runs/bench-train/result.json

# On-policy distillation against TRL's GKD trainer (the gkd-peer extra): a GPT-2 student over the teacher's
# tokenizer, one shared SFT warm start, then both trainers on the same micro-batches (samples/s, held-out accuracy).
# TEACHER: a trained causal teacher (make demo writes runs/demo-gpt2/final).
TEACHER ?= runs/demo-gpt2/final
bench-on-policy: install
	$(PY) benchmarks/on_policy_vs_trl.py --teacher $(TEACHER) --out runs/bench-on-policy/trl/results.json

# GPT-2 large and FlanT5-large (random init) under ZeRO-3 + CPU offload against the memory planner: needs about
# 21 GiB of RAM, so it is not part of `bench`; about 4 minutes here.
bench-large: install
	$(PY) benchmarks/large_model_offload.py --models flan-t5-large gpt2-large --ranks 1 --steps 4 --out runs/bench-large/large-r1.json

# cotdistill eval --protocol lm-eval against lm-evaluation-harness itself (the `peer` extra), problem by problem, on
# the first 50 GSM8K test problems 0- and 3-shot: a tiny GPT-2 that recites varied solutions (every extraction path)
# and make-tiny's random GPT-2 (512 positions: prompts cut to the last 256 tokens on both sides). Exits 1 on a difference.
bench-lm-eval: install
	@rm -rf runs/bench-lm-eval
	$(PY) benchmarks/lm_eval_compare.py --model runs/bench-lm-eval/memorizer --make_memorizer --problems 50 --k_shot 0 3 \
		--out runs/bench-lm-eval/memorizer.json
	$(VENV)/bin/cotdistill make-tiny gpt2 runs/bench-lm-eval/tiny-gpt2 --config recipes/demo-gpt2-synthetic.yaml
	$(PY) benchmarks/lm_eval_compare.py --model runs/bench-lm-eval/tiny-gpt2 --problems 50 --k_shot 0 3 \
		--out runs/bench-lm-eval/tiny-gpt2.json

# GPU acceptance check (issue 16 item 9; README "GPU acceptance check"). gpu-wheels, here with network access: the
# wheels a CUDA machine without network lacks (deepspeed built pure-python with DS_BUILD_OPS=0, fire, datasets,
# openai and their missing needs) into .whl/ (git-ignored; the device call carries it). gpu-check, there: installs
# them offline and trains/resumes/evaluates/benchmarks on the GPU in under 8 minutes, with that machine's python3.
gpu-wheels: install
	$(PY) benchmarks/gpu_check.py wheels --dir .whl

gpu-check:
	$(PYTHON) benchmarks/gpu_check.py check --wheels .whl

lint: install
	$(VENV)/bin/ruff check setup.py src tests launchers benchmarks

clean:
	rm -rf runs .pytest_cache
