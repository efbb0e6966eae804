#!/usr/bin/env bash
# The release check (`make dist-check`, run by CI after `make test`):
#   1. copy the checkout's files (tracked and untracked-but-not-ignored; no build outputs) to a
#      scratch folder, so nothing is built or written inside the checkout;
#   2. a fresh virtual environment there: torch, then setuptools, wheel, pybind11, ninja and build;
#   3. `python -m build --no-isolation`: the sdist, then the wheel built from the unpacked sdist (so a
#      file the sdist lacks, such as a header of csrc/, fails the build) - one compile of the extension;
#   4. check both archives: every file of csrc/ (headers included), plugins/, examples/, docs/ and
#      tests/ in the sdist, no compiled objects; attnzoo and each subpackage, attnzoo_plugins, the
#      compiled extension and the entry points in the wheel;
#   5. install the wheel into the environment (no editable install; it holds torch and pluggy, not
#      the extras) and, from a folder outside the checkout: `attnzoo list`, a fused additive call on
#      compiled kernels against the reference, `attnzoo demo` / `attnzoo bench` failing with the
#      name of their extra;
#   6. a slice of the test suite, run from the checkout against the installed copy (the report
#      header must name it), with ATTNZOO_EXPECT_EXTENSION=1.
#
# Usage: scripts/check_dist.sh [WORKDIR]    (default: a new folder under ${TMPDIR:-/tmp}, removed on success)
# Environment: PYTHON (python3), TORCH_SPEC (torch==2.13.0), MAX_JOBS (2), KEEP=1 keeps WORKDIR,
#   DIST_CHECK_TESTS (the pytest arguments of step 6).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
export MAX_JOBS=${MAX_JOBS:-2}
TESTS=${DIST_CHECK_TESTS:-tests/test_conformance.py -k scaled_dot}
GIVEN_WORK=${1:-}
WORK=${GIVEN_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/attnzoo-dist.XXXXXX")}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
case "$WORK/" in "$ROOT"/*) echo "check_dist: WORKDIR must be outside the checkout ($ROOT)" >&2; exit 2 ;; esac
VENV=$WORK/venv
START=$SECONDS
step() { printf '\n== [%4ds] %s\n' $((SECONDS - START)) "$*"; }
fail() { echo "check_dist: FAILED: $*" >&2; exit 1; }

step "1. copy the checkout to $WORK/src"
git -C "$ROOT" rev-parse --git-dir > /dev/null || fail "$ROOT is not a git checkout (the copy takes git's file list)"
rm -rf "$WORK/src" "$WORK/dist" "$WORK/outside"
mkdir -p "$WORK/src" "$WORK/dist" "$WORK/outside"
git -C "$ROOT" ls-files -z --cached --others --exclude-standard \
    | (cd "$ROOT" && while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done) \
    | (cd "$ROOT" && tar --null -T - -cf -) | tar -C "$WORK/src" -xf -

step "2. virtual environment $VENV ($TORCH_SPEC)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC2086  # TORCH_SPEC may hold options, e.g. --index-url ...
"$VENV/bin/pip" install --quiet $TORCH_SPEC
"$VENV/bin/pip" install --quiet "setuptools>=64" wheel pybind11 ninja build

step "3. python -m build --no-isolation (sdist, then the wheel from it; MAX_JOBS=$MAX_JOBS)"
(cd "$WORK/src" && "$VENV/bin/python" -m build --no-isolation --outdir "$WORK/dist" . > "$WORK/build.log" 2>&1) \
    || { tail -40 "$WORK/build.log"; fail "python -m build (log: $WORK/build.log)"; }
SDIST=$(ls "$WORK"/dist/attnzoo-*.tar.gz)
WHEEL=$(ls "$WORK"/dist/attnzoo-*.whl)
ls -l "$SDIST" "$WHEEL"

step "4. contents of the sdist and the wheel"
"$VENV/bin/python" - "$WORK/src" "$SDIST" "$WHEEL" <<'EOF' || fail "archive contents"
import pathlib, sys, tarfile, zipfile

src, sdist, wheel = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
with tarfile.open(sdist) as t:
    in_sdist = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
want = {str(p.relative_to(src)) for top in ("csrc", "plugins", "examples", "docs", "tests", "attnzoo")
        for p in (src / top).rglob("*") if p.is_file() and "__pycache__" not in p.parts}
want |= {"MANIFEST.in", "README.md", "pyproject.toml", "setup.py"}
headers = sorted(w for w in want if w.endswith((".h", ".cuh")))
missing = sorted(want - in_sdist)
compiled = sorted(n for n in in_sdist if n.endswith((".so", ".o", ".pyc")))
print(f"sdist: {len(in_sdist)} entries, {len(headers)} headers of csrc/ ({len([h for h in headers if h in in_sdist])} in it)")
with zipfile.ZipFile(wheel) as z:
    in_wheel = set(z.namelist())
    entry_points = z.read(next(n for n in in_wheel if n.endswith(".dist-info/entry_points.txt"))).decode()
packages = sorted({str(p.parent.relative_to(src)) for p in (src / "attnzoo").rglob("__init__.py")})
want_wheel = {f"{p}/__init__.py" for p in packages} | {f"attnzoo_plugins/{p.name}" for p in (src / "plugins").glob("*.py")}
missing_wheel = sorted(want_wheel - in_wheel)
if not any(n.startswith("attnzoo/_C") and n.endswith((".so", ".pyd")) for n in in_wheel):
    missing_wheel.append("attnzoo/_C*.so (the compiled extension)")
for line in ("attnzoo = attnzoo.cli:main", "scores = attnzoo_plugins.scores"):
    if line not in entry_points:
        missing_wheel.append(f"entry point {line!r}")
print(f"wheel: {len(in_wheel)} entries, packages {', '.join(packages)}, attnzoo_plugins, "
      f"{', '.join(sorted(n for n in in_wheel if n.startswith('attnzoo/_C')))}")
for what, bad in (("missing from the sdist", missing), ("compiled files in the sdist", compiled),
                  ("missing from the wheel", missing_wheel)):
    if bad:
        print(f"{what}: {bad}", file=sys.stderr)
sys.exit(1 if missing or compiled or missing_wheel else 0)
EOF

step "5. install the wheel (built from the sdist) into $VENV; smoke test from $WORK/outside"
"$VENV/bin/pip" install --quiet "$WHEEL"
cd "$WORK/outside"
"$VENV/bin/attnzoo" --version
"$VENV/bin/attnzoo" list > list.txt || { cat list.txt; fail "attnzoo list"; }
grep -E "^(additive|scaled_dot|multihead) " list.txt | cut -c1-60
grep "^fused ops:" list.txt
grep -q "^fused ops: built" list.txt || fail "attnzoo list: the extension is not built"
"$VENV/bin/python" - "$VENV" <<'EOF' || fail "fused call"
import os, sys
import torch
import attnzoo

where = os.path.realpath(os.path.dirname(attnzoo.__file__))
assert where.startswith(os.path.realpath(sys.argv[1])) and "site-packages" in where, where
attn = attnzoo.create("additive", query_dim=16, key_dim=16, hidden_dim=32)
q, k, v = torch.randn(2, 5, 16), torch.randn(2, 7, 16), torch.randn(2, 7, 4)
lens = torch.tensor([3, 7])
how = attn.explain(q, k, v, valid_lens=lens)
assert "compiled kernels" in how, how
ref = attnzoo.create("additive", query_dim=16, key_dim=16, hidden_dim=32, backend="reference")
ref.load_state_dict(attn.state_dict())
out = attn(q, k, v, valid_lens=lens)
torch.testing.assert_close(out, ref(q, k, v, valid_lens=lens))
print(f"attnzoo {attnzoo.__version__} from {where}: {how}; fused == reference, out {tuple(out.shape)}")
EOF
for pair in demo:viz bench:bench; do
    tool=${pair%%:*} extra=${pair#*:}
    if "$VENV/bin/attnzoo" "$tool" --out "$WORK/outside/out" 2> err.txt; then fail "attnzoo $tool ran without its extra"; fi
    cat err.txt
    grep -q "needs the '$extra' extra: pip install 'attnzoo\[$extra\]'" err.txt \
        || fail "attnzoo $tool: no clear missing-extra error"
done

step "6. tests from the checkout against the installed copy: $TESTS"
"$VENV/bin/pip" install --quiet pytest "hypothesis>=6.100"
cd "$ROOT"
# $VENV/bin/pytest (not `python -m pytest`, which puts the checkout on sys.path) with the project's
# --import-mode=importlib: the checkout's attnzoo/ is not imported
# shellcheck disable=SC2086
ATTNZOO_EXPECT_EXTENSION=1 "$VENV/bin/pytest" -p no:cacheprovider $TESTS > "$WORK/tests.log" 2>&1 \
    || { tail -40 "$WORK/tests.log"; fail "tests against the installed copy (log: $WORK/tests.log)"; }
grep "^attnzoo " "$WORK/tests.log"
grep -qE "^attnzoo [^ ]+ from $VENV/lib/python[^/]+/site-packages/attnzoo;" "$WORK/tests.log" \
    || fail "the tests did not import the installed copy (see the header line above)"
tail -1 "$WORK/tests.log"

step "dist check passed in $((SECONDS - START)) s"
if [ -z "${KEEP:-}" ] && [ -z "$GIVEN_WORK" ]; then rm -rf "$WORK"; else echo "kept $WORK"; fi
