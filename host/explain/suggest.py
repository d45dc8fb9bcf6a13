"""The campaign-level suggestion: which layers to keep in float, as TFLite's QuantizationDebugger takes them.

**The rule.** A layer is suggested when the first-jump rule (``blame``) names it on at least
:data:`MIN_SHARE` of the explained inputs, the graph input excepted (it is quantized by the
model's first op, not by a layer one can keep in float); at most :data:`MAX_LAYERS`, most often
named first.

**The forms.** ``tf.lite.experimental.QuantizationDebugOptions`` takes two lists (TensorFlow 2.21,
checked by converting the digits28 fixture): ``denylisted_nodes``, the output tensor names of the
ops to keep in float, as the float model names them (the converter's full ``;``-joined names,
which the original .tflite keeps); and ``denylisted_ops``, builtin op names (``"SOFTMAX"``,
``"CONV_2D"``; the MLIR names ``tfl.softmax`` are silently ignored), which keep *every* op of that
type in float. The suggestion gives the nodes, and the op form only for op types whose every
instance in the graph is suggested (then both say the same). ``QuantizationDebugger(converter=...,
debug_options=...).get_nondebug_quantized_model()`` then converts with those layers in float;
``dflare repair --keep-float`` does that and measures it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from host.explain.tensors import TensorInfo

#: Share of the explained inputs on which the rule must name a layer for it to be suggested. On the
#: fixtures a coarsened layer is named on every input and a stock int8 pair's softmax on about half
#: (docs/explain.md); a layer named on fewer than a quarter carries a minority of the deviations.
MIN_SHARE = 0.25
#: Layers suggested at most: each one kept in float costs size and latency (docs/explain.md, repair table).
MAX_LAYERS = 3

RULE_TEXT = (f"layers the first-jump rule names on at least {MIN_SHARE:.0%} of the explained inputs "
             f"(the graph input excepted), at most {MAX_LAYERS}")


def suggest(ranking: Sequence[dict[str, Any]], inputs: int, original: Sequence[TensorInfo],
            matched: Sequence[TensorInfo], campaign: str = "DIR") -> dict[str, Any]:
    """The deny-list suggestion of a campaign.

    Args:
        ranking: explain.json's ``ranking`` (most often blamed first).
        inputs: how many inputs were explained.
        original: the original graph's activations (to know how many ops of each type it has).
        matched: the original tensor of each match, by match index.
        campaign: the campaign directory, for the suggested command.

    Returns:
        ``{rule, inputs, layers: [{match, layer, op, node, first_jump, share}], denylisted_nodes,
        denylisted_ops, python, command, why}`` (``why`` says why the list is empty).
    """
    picked = [r for r in ranking if r["first_jump"] and r["op"] != "INPUT"
              and r["first_jump"] >= MIN_SHARE * inputs][:MAX_LAYERS]
    layers = [{"match": r["match"], "layer": r["layer"], "op": r["op"], "node": matched[r["match"]].name,
               "first_jump": r["first_jump"], "share": r["first_jump"] / inputs} for r in picked]
    nodes = [entry["node"] for entry in layers]
    in_graph = Counter(t.op for t in original if t.op != "INPUT")
    chosen = Counter(entry["op"] for entry in layers)
    ops = sorted(op for op, n in chosen.items() if n == in_graph.get(op))
    why = ""
    if not inputs:
        why = "no input explained"
    elif not layers:
        top = next((r for r in ranking if r["first_jump"] and r["op"] != "INPUT"), None)
        why = ("the rule names no layer on any input" if top is None else
               f"the layer the rule names most often, {top['layer']}, carries {top['first_jump']} of {inputs} "
               f"inputs (under {MIN_SHARE:.0%}): the deviations are spread over the graph")
    return {
        "rule": RULE_TEXT, "inputs": inputs, "layers": layers, "denylisted_nodes": nodes, "denylisted_ops": ops,
        "python": python_options(nodes) if nodes else "",
        "command": (f"dflare repair --campaign {campaign} --keep-float '{','.join(e['layer'] for e in layers)}' "
                    f"--original-keras M.keras --out {campaign}-keep-float") if nodes else "",
        "why": why,
    }


def python_options(nodes: Sequence[str]) -> str:
    """The suggestion as the QuantizationDebugOptions call that applies it."""
    return f"tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes={list(nodes)!r})"
