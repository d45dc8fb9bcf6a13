"""The campaign-level suggestion: which layers to keep in float, as TFLite's QuantizationDebugger takes them.

**The rule.** A layer *carries* an input's deviation when the first-jump rule (``blame``) names it
or it is among the layers whose error grew most from the seed (``ranking[].carries``). A layer is
suggested when it carries at least :data:`MIN_SHARE` of the explained inputs, the graph input
excepted (the model's first op quantizes it; no layer to keep in float); at most
:data:`MAX_LAYERS`, those carrying most first. Why not the first jump alone: on the stock int8
fixtures it falls on the softmax on about half the inputs, and keeping only the softmax in float
changes none of the deviations (docs/explain.md, repair table): the error that flips them builds up
over the last layers, which the growth counts show.

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

#: Share of the explained inputs a layer must carry to be suggested: a majority. On the fixtures a
#: coarsened layer is named on every input; on the stock int8 pairs the softmax, logits and dense
#: layers carry 55-97 % of the inputs, the convolutions under 20 % (docs/explain.md).
MIN_SHARE = 0.5
#: Layers suggested at most: each one kept in float costs size and latency (docs/explain.md, repair table).
MAX_LAYERS = 3

RULE_TEXT = (f"layers that carry at least {MIN_SHARE:.0%} of the explained inputs (the first jump or among the "
             f"most grown; the graph input excepted), at most {MAX_LAYERS}")


def suggest(ranking: Sequence[dict[str, Any]], inputs: int, original: Sequence[TensorInfo],
            matched: Sequence[TensorInfo], campaign: str = "DIR") -> dict[str, Any]:
    """The deny-list suggestion of a campaign.

    Args:
        ranking: explain.json's ``ranking`` (with ``carries`` per layer).
        inputs: how many inputs were explained.
        original: the original graph's activations (to know how many ops of each type it has).
        matched: the original tensor of each match, by match index.
        campaign: the campaign directory, for the suggested command.

    Returns:
        ``{rule, inputs, layers: [{match, layer, op, node, carries, first_jump, share}], denylisted_nodes,
        denylisted_ops, python, command, why}`` (``why`` says why the list is empty).
    """
    ranked = sorted((r for r in ranking if r["op"] != "INPUT" and r["carries"]),
                    key=lambda r: (-r["carries"], -r["first_jump"], r["match"]))
    picked = [r for r in ranked if r["carries"] >= MIN_SHARE * inputs][:MAX_LAYERS]
    layers = [{"match": r["match"], "layer": r["layer"], "op": r["op"], "node": matched[r["match"]].name,
               "carries": r["carries"], "first_jump": r["first_jump"], "share": r["carries"] / inputs}
              for r in picked]
    nodes = [entry["node"] for entry in layers]
    in_graph = Counter(t.op for t in original if t.op != "INPUT")
    chosen = Counter(entry["op"] for entry in layers)
    ops = sorted(op for op, n in chosen.items() if n == in_graph.get(op))
    why = ""
    if not inputs:
        why = "no input explained"
    elif not layers:
        top = ranked[0] if ranked else None
        why = ("no layer carries any input's deviation" if top is None else
               f"the layer that carries most, {top['layer']}, carries {top['carries']} of {inputs} "
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
