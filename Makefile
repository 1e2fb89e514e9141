# The README's two commands. Both install what is missing first (idempotent).
.PHONY: setup demo test

setup:
	bash .ci/setup.sh

# End to end on the built-in synthetic data (what exists of the pipeline so far).
demo: setup
	.venv/bin/pointad render synth --out demo-out/synthetic-mvtec3d --format mvtec3d --seed 0
	.venv/bin/pointad render scan --format mvtec3d --root demo-out/synthetic-mvtec3d
	.venv/bin/pointad render scan --dataset synthetic-real3d
	.venv/bin/pointad render scan --dataset synthetic-eyecandies

# pytest exits 5 when it collects no test; that is a failure here too.
test: setup
	.venv/bin/python -m pytest -q
