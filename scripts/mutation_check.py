"""Reintroduce known single-line bugs one at a time and check that the tests catch each.

    python scripts/mutation_check.py [pytest args...]   (default: the conformance and straight-through tests)

Each mutant once survived the whole suite; each must now make at least one test fail. The file is
restored after every run (also on Ctrl-C).
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
MUTANTS = {  # name: (file, original line fragment, mutated fragment)
    "concat: query and key halves of w swapped": (
        "plugins/scores.py", "return self.w.weight[0, : self.query_dim], self.w.weight[0, self.query_dim:]",
        "return self.w.weight[0, self.query_dim:], self.w.weight[0, : self.query_dim]"),
    "cosine: no normalisation": (
        "plugins/scores.py", "return x / x.norm(dim=-1, keepdim=True).clamp_min(self.eps)", "return x"),
    "epanechnikov: log(1 - u) for log(1 - u^2)": (
        "plugins/nadaraya_watson.py", "torch.log((1 - u2).clamp_min(1e-30))",
        "torch.log((1 - u2.sqrt()).clamp_min(1e-30))"),
    "bfloat16 capability dropped": ("attnzoo/variants.py", 'caps.add("bfloat16")', "pass"),
    "straight-through term times 0": (
        "attnzoo/pooling.py", "return onehot + (p - p.detach())", "return onehot + 0 * (p - p.detach())"),
}
TESTS = ["tests/test_conformance.py", "tests/test_straight_through.py"]


def main(argv: list[str]) -> int:
    survivors = []
    for name, (path, old, new) in MUTANTS.items():
        f = ROOT / path
        src = f.read_text()
        if src.count(old) != 1:
            print(f"{name}: the original line is gone from {path}; update this script")
            survivors.append(name)
            continue
        f.write_text(src.replace(old, new))
        try:
            cmd = [sys.executable, "-m", "pytest", *(argv or TESTS), "-q", "-x", "-p", "no:cacheprovider"]
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        finally:
            f.write_text(src)
        caught = [line for line in res.stdout.splitlines() if line.startswith("FAILED")]
        print(f"{name}: {'caught by ' + caught[0].split()[1] if caught else 'SURVIVED'}")
        if not caught:
            survivors.append(name)
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
