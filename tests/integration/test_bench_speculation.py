"""scripts/bench_speculation.py: the replay of recorded verdicts, and the script end to end."""

from __future__ import annotations

from tests.script_support import load_script

bench = load_script("bench_speculation")


def test_the_chain_ends_a_step_at_each_keep_and_a_tree_walks_on():
    verdicts = {0: [1, 1, 1, 1]}  # four kept candidates, then the triggering one
    assert bench.replay(verdicts, "chain", 64, 16) == (5, 5)  # one candidate a step: each keep ends it
    steps, evaluated = bench.replay(verdicts, "tree", 64, 16)
    assert steps == 2 and evaluated == 32  # the four keeps lie on one path of a 16-node tree
    rejected = {0: [0] * 20}  # a run of rejections: the chain doubles its width
    assert bench.replay(rejected, "chain", 64, 16)[0] == 5  # 1 + 2 + 4 + 8, then 16 reach the trigger


def test_the_most_likely_nodes_form_a_tree():
    nodes = bench.tree(0.25, 10)
    assert len(nodes) == 10 and "" in nodes
    assert all(node[:-1] in nodes for node in nodes if node)  # every node's parent is proposed too
    assert "0" * 5 in nodes and "11" not in nodes  # rejections are the likelier verdicts here


def test_the_script_prints_a_row_per_pair(capsys):
    assert bench.main(["--pairs", "digits28/int8", "--seeds", "8", "--max-queries", "2000"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| digits28/int8"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1].endswith("/8") and len(cells) == 7
    engine_steps, chain_steps = int(cells[3]), int(cells[4].split(",")[0])
    assert abs(engine_steps - chain_steps) <= 2  # the replayed chain is the engine's own
