# compleak-harness recipes (the `just` binary comes from PyPI as rust-just, installed by the test extra)
py := ".venv/bin/python"

setup:
    bash scripts/setup.sh --test

demo:
    .venv/bin/compleak demo

test *ARGS:
    {{py}} -m pytest -q {{ARGS}}

bench: bench-attacks bench-build bench-collect

# attack stage at 10k+10k, K=16, C=10, 5 variants; `just bench-attacks --sweep` adds K in (16, 64) x C in (10, 100)
bench-attacks *ARGS:
    {{py}} benchmarks/attacks.py {{ARGS}}

bench-build:
    {{py}} benchmarks/build.py

bench-collect:
    {{py}} benchmarks/collect.py

# scale-out (docs/scale.md): build speed-up on Ray by worker count, parallel collect on a 4-device farm;
# `just bench-scale --smoke` checks the script in a minute
bench-scale *ARGS:
    {{py}} benchmarks/scale.py {{ARGS}}

# ResNet-18 paper-protocol training on one CUDA GPU (fails with one line on a CPU-only machine)
bench-gpu *ARGS:
    {{py}} benchmarks/gpu_train.py {{ARGS}}

# every table of docs/findings.md from the committed results in docs/findings/ (`--check`: compare only)
findings *ARGS:
    {{py}} scripts/findings.py {{ARGS}}
