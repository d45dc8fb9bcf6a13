"""scripts/bench_compare.py rewrites only its own section of docs/benchmarks.md."""

from __future__ import annotations

from tests.script_support import load_script


def test_write_section_replaces_only_its_own_section(tmp_path):
    bench = load_script("bench_compare")
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Agent throughput\n\nA.\n\n## Delegate comparison\n\nold\n\n## Search\n\nS.\n")
    bench.write_section("## Delegate comparison\n\nnew figures\n", doc)
    assert doc.read_text() == ("# Benchmarks\n\n## Agent throughput\n\nA.\n\n## Delegate comparison\n\nnew figures\n"
                               "\n## Search\n\nS.\n")
    other = tmp_path / "other.md"
    other.write_text("# Benchmarks\n\n## Search\n\nS.\n")
    bench.write_section("## Delegate comparison\n\nfigures\n", other)
    assert other.read_text() == "# Benchmarks\n\n## Search\n\nS.\n\n## Delegate comparison\n\nfigures\n\n"


def test_p50_gate_uses_the_worst_row():
    bench = load_script("bench_compare")
    rows = [{"ratio_p50": 1.05}, {"ratio_p50": 0.7}]
    assert abs(bench.worst_p50_deviation(rows) - 0.3) < 1e-9
