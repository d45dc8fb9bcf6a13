"""``dflare explain``: which layer of the compressed model makes each deviation (issue 22, host side).

One job per module: ``tensors`` runs a model in process with every intermediate tensor kept and
dequantizes them; ``matching`` pairs the two graphs' tensors; ``metrics`` computes the error
figures; ``blame`` applies the first-jump rule and ranks the growth from seed to trigger;
``suggest`` turns the campaign's ranking into the layers to keep in float (QuantizationDebugger's forms);
``explainer`` walks a campaign store; ``output`` writes ``explain.json`` and the table, ``html``
the ``explain.html`` page.
Nothing imports this package but ``host.commands`` (and the campaign runner, lazily, for
``dflare run --explain``).
"""
