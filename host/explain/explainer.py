"""Explain a campaign directory: every stored triggering input (raw and minimized), layer by layer.

For each input both models run in process (``tensors.GraphRunner``) on the input and on its seed;
the matched tensors (``matching``) are compared (``metrics``) and the rule of ``blame`` names the
layer where the error first jumps and the layers whose error grew most from the seed. The result
is the document ``output.write_explain`` stores as ``explain.json`` (schema in docs/explain.md).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.runtime import Preprocessing
from host.errors import CampaignError, ModelError, ProtocolError, TargetUnreachableError
from host.explain import blame
from host.explain.html import write_explain_html
from host.explain.matching import Matching, match_graphs
from host.explain.metrics import ErrorStats, error_stats, growth
from host.explain.output import write_explain
from host.explain.suggest import suggest
from host.explain.tensors import DeviceGraphRunner, GraphRunner
from host.records import InputRecord
from host.report.writer import write_reports
from host.store import CampaignStore
from host.targets import ModelSpec, TargetOptions, open_target

#: The schema of explain.json; bumped when a field changes meaning or goes away (additions keep it).
SCHEMA = "dflare-explain/1"

ROLES = ("original", "compressed")


@dataclass(frozen=True)
class ModelSource:
    """Where one of the campaign's models is read from and how the campaign ran it."""

    role: str
    path: Path
    content: bytes
    delegate: str
    target: str
    preprocessing: Preprocessing
    threads: int | None = None


def model_sources(store: CampaignStore, overrides: dict[str, Path | None] | None = None) -> dict[str, ModelSource]:
    """The two models of a stored campaign, checked against the digests the store recorded.

    Args:
        store: the campaign's store.
        overrides: a path per role to use instead of the stored config's (a moved model file).

    Raises:
        CampaignError: the store has no config, a model file is missing, or it is not the campaign's model.
    """
    config = store.config_dict()
    if not config:
        raise CampaignError(f"{store.path} holds no campaign config (created, then killed before its first write)")
    digests, targets = store.model_digests(), store.targets()
    keys = {"original": ("reference_delegate", "reference_target"), "compressed": ("delegate", "target")}
    sources = {}
    for role in ROLES:
        path = Path((overrides or {}).get(role) or config[role])
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise CampaignError(f"the campaign's {role} model {path} cannot be read ({exc.strerror or exc}); "
                                f"pass --{role} PATH with that model") from None
        digest = hashlib.sha256(content).hexdigest()
        if digests.get(role) and digests[role] != digest:
            raise CampaignError(f"{path} is not the {role} model this campaign ran (sha256 {digest[:12]}, the "
                                f"campaign's is {digests[role][:12]}); pass --{role} PATH with the campaign's model")
        delegate_key, target_key = keys[role]
        sources[role] = ModelSource(role, path, content, str(config.get(delegate_key) or "cpu"),
                                    str(config.get(target_key) or "local:"),
                                    _preprocessing(targets.get(role, {}), config, path, content),
                                    config.get("threads"))
    return sources


def _preprocessing(target: dict[str, Any], config: dict[str, Any], path: Path, content: bytes) -> Preprocessing:
    """The normalization the campaign applied: as recorded with its targets, else rebuilt as the runner does."""
    recorded = target.get("model", {}).get("preprocessing")
    if recorded:
        return Preprocessing.from_dict(recorded)
    if config.get("scale") is not None:
        return Preprocessing((0.0,), (1.0 / float(config["scale"]),))
    if config.get("mean") is not None or config.get("std") is not None:
        return Preprocessing(tuple(config.get("mean") or (0.0,)), tuple(config.get("std") or (1.0,)))
    from host.tflite.metadata import preprocessing_for

    return preprocessing_for(path, content) or Preprocessing()


#: Target schemes whose agent can measure the compressed side itself (GetTensors).
DEVICE_SCHEMES = ("grpc://", "grpcs://", "adb://")


def _kernel_notes(source: ModelSource, runner: GraphRunner | DeviceGraphRunner,
                  fallback: str = "") -> list[str]:
    if isinstance(runner, DeviceGraphRunner):
        notes = [f"measured on the agent at {runner.device} (GetTensors), with the device's own {runner.kernels} "
                 "kernels and delegate"]
        if runner.hidden:
            notes.append(f"the {runner.kernels} delegate keeps {len(runner.hidden)} tensor(s) to itself (computed "
                         "inside a delegate partition, never written out); they are listed in hidden and left "
                         "unmatched")
        if runner.note:
            notes.append(f"the agent says: {runner.note}")
        return notes
    notes = [runner.note] if runner.note else []
    if fallback:
        notes.append(fallback)
    if source.target != "local:":
        hint = "" if fallback else ("; measuring on the device is opt-in (dflare explain --device, through the "
                                    "agent), making it the default is future work")
        notes.append(f"the campaign ran this model on {source.target}; these figures come from this host's "
                     f"{runner.kernels} kernels, which may round differently from the device's{hint}")
    return notes


@dataclass(frozen=True)
class DeviceOptions:
    """``dflare explain --device``: measure the compressed side on the campaign's agent.

    Attributes:
        target_options: how to reach it (token, TLS, connect timeout).
    """

    target_options: TargetOptions | None = None


class Explainer:
    """Explains the inputs of one campaign store.

    Args:
        store: the campaign's store (read only).
        overrides: model paths per role replacing the stored config's.
        device: measure the compressed side on the campaign's agent when it ran on one (None: in process).

    Raises:
        CampaignError: see :func:`model_sources`.
        ModelError: a model cannot be loaded for explain.
        host.errors.TargetError: the agent was reached but refused or failed (an unreachable one, or
            one older than protocol 1.1, falls back to this process, with a note).
    """

    def __init__(self, store: CampaignStore, overrides: dict[str, Path | None] | None = None,
                 device: DeviceOptions | None = None) -> None:
        self.store = store
        self.sources = model_sources(store, overrides)
        self._target = None
        self._device: dict[str, Any] = {}  # the agent's GetDeviceInfo, when the compressed side runs there
        self._fallback: dict[str, str] = {}
        self.runners: dict[str, GraphRunner | DeviceGraphRunner] = {}
        try:
            for role, s in self.sources.items():
                remote = device is not None and role == "compressed" and s.target.startswith(DEVICE_SCHEMES)
                runner = self._device_runner(s, device) if remote else None
                if device is not None and role == "compressed" and not remote:
                    self._fallback[role] = (f"--device: the campaign ran this model on {s.target}, not on an agent; "
                                            "measured in this process")
                self.runners[role] = runner or GraphRunner(s.content, s.delegate, s.preprocessing, role, s.threads)
        except BaseException:
            self.close()
            raise
        self.matching: Matching = match_graphs(self.runners["original"].graph, self.runners["compressed"].graph)
        if not self.matching.matches:
            raise ModelError("no tensor of the original model matches one of the compressed model's "
                             "(different architectures?): nothing to explain")
        self._seed_cache: dict[int, tuple[list[ErrorStats], dict[str, int]]] = {}

    def _device_runner(self, source: ModelSource, device: DeviceOptions) -> DeviceGraphRunner | None:
        """The source's model loaded on the campaign's agent; None (and a note) when it cannot be reached."""
        try:
            self._target = open_target(source.target, device.target_options)
            session = self._target.load(ModelSpec(source.content, source.path.name, source.delegate,
                                                  source.threads, source.preprocessing))
            self._device = self._target.info()
            return DeviceGraphRunner(session, source.content, source.delegate, source.preprocessing, source.role,
                                     source.target, source.threads)
        except (TargetUnreachableError, ProtocolError) as exc:
            why = "could not be reached" if isinstance(exc, TargetUnreachableError) else "cannot serve GetTensors"
            self._fallback[source.role] = (f"--device: the agent at {source.target} {why} ({exc}); "
                                           "measured in this process instead")
            if self._target is not None:
                self._target.close()
                self._target = None
            return None

    def close(self) -> None:
        """Unload the model from the agent and close the connection (nothing to do in process)."""
        if self._target is not None:
            self._target.close()
            self._target = None

    def _model_dict(self, role: str, source: ModelSource) -> dict[str, Any]:
        runner = self.runners[role]
        out: dict[str, Any] = {"path": str(source.path), "sha256": hashlib.sha256(source.content).hexdigest(),
                               "campaign_delegate": source.delegate, "campaign_target": source.target,
                               "kernels": runner.kernels, "measured_on": "host",
                               "notes": _kernel_notes(source, runner, self._fallback.get(role, "")), "hidden": []}
        if isinstance(runner, DeviceGraphRunner):
            info = self._device
            out.update(measured_on=runner.device, hidden=list(runner.hidden),
                       device={"runtime": info.get("runtime", ""), "runtime_version": info.get("runtime_version", ""),
                               "machine": info.get("machine", ""), "agent_version": info.get("agent_version", ""),
                               "delegate": runner.kernels, "outputs_identical": runner.outputs_identical})
        return out

    def explain(self) -> dict[str, Any]:
        """The whole explain.json document for the store's inputs (raw, then minimized, by seed)."""
        started = time.monotonic()
        minimized = self.store.minimized()
        entries = []
        for record in self.store.inputs():
            entries.append(self._entry(record, record.image, "raw", record.stem,
                                       (record.label_original, record.label_compressed)))
            small = minimized.get((record.seed_index, record.n))
            if small is not None:
                entries.append(self._entry(record, small.image, "minimized", small.stem,
                                           (small.label_original, small.label_compressed)))
        ranking = _ranking(entries)
        campaign = str(Path(self.store.path).parent)
        return {
            "schema": SCHEMA,
            "campaign": campaign,
            "models": {role: self._model_dict(role, s) for role, s in self.sources.items()},
            "rule": blame.rule_dict(),
            "matching": self.matching.to_dict(),
            "tensors": [{"match": k, **m.to_dict()} for k, m in enumerate(self.matching.matches)],
            "inputs": entries,
            "ranking": ranking,
            "suggestion": suggest(ranking, len(entries), self.runners["original"].graph,
                                  [m.original for m in self.matching.matches], campaign),
            "seconds": time.monotonic() - started,
        }

    # -- one input ----------------------------------------------------------------------------
    def _profile(self, image: np.ndarray) -> tuple[list[ErrorStats], dict[str, int]]:
        values, labels = {}, {}
        for role, runner in self.runners.items():
            values[role], probs = runner.run(image)
            labels[role] = int(np.argmax(probs))
        stats = [error_stats(values["original"][m.original.index], values["compressed"][m.compressed.index])
                 for m in self.matching.matches]
        return stats, labels

    def _seed_profile(self, record: InputRecord) -> tuple[list[ErrorStats], dict[str, int]] | None:
        if record.seed_image is None:
            return None
        if record.seed_index not in self._seed_cache:
            self._seed_cache[record.seed_index] = self._profile(record.seed_image)
        return self._seed_cache[record.seed_index]

    def _entry(self, record: InputRecord, image: np.ndarray, kind: str, stem: str,
               stored: tuple[int, int]) -> dict[str, Any]:
        trigger, labels = self._profile(image)
        seed = self._seed_profile(record)
        layers = []
        for k, (m, st) in enumerate(zip(self.matching.matches, trigger)):
            row: dict[str, Any] = {"match": k, "layer": m.original.layer, "op": m.original.op,
                                   "confidence": m.confidence, "trigger": st.to_dict()}
            if seed is not None:
                row["seed"] = seed[0][k].to_dict()
                row["growth"] = growth(seed[0][k], st)
            layers.append(row)
        snr = [st.snr_db for st in trigger]
        jump = blame.first_jump(snr)
        lowest = int(np.argmin(snr))
        grown = blame.most_grown([row["growth"]["snr_drop_db"] for row in layers]) if seed is not None else []
        return {
            "input": stem, "kind": kind, "status": record.status.value, "seed_index": record.seed_index,
            "n": record.n,
            "png": f"inputs/{stem}.png",
            "labels": {"stored": {"original": stored[0], "compressed": stored[1]}, "explain": labels,
                       "seed": None if seed is None else seed[1], "seed_label": record.seed_label},
            # The explain kernels may differ from the campaign's (GPU, a device): say whether they flip too.
            "reproduces": labels["original"] != labels["compressed"],
            "first_jump": None if jump is None else {
                "match": jump, "layer": layers[jump]["layer"], "op": layers[jump]["op"],
                "snr_db": snr[jump], "drop_db": snr[jump - 1] - snr[jump]},
            "lowest_snr": {"match": lowest, "layer": layers[lowest]["layer"], "op": layers[lowest]["op"],
                           "snr_db": snr[lowest]},
            "most_grown": [{"match": k, "layer": layers[k]["layer"], "op": layers[k]["op"], **layers[k]["growth"]}
                           for k in grown],
            "layers": layers,
        }


def explain_directory(out_dir: str | Path, overrides: dict[str, Path | None] | None = None,
                      device: DeviceOptions | None = None) -> tuple[Path, dict[str, Any]]:
    """Explain a campaign directory, write its explain.json and explain.html; return the JSON's path and the document.

    The campaign's reports (summary.json, report.html) are written again afterwards, so they show
    the explained figures (``host.report.explain_view``).

    Args:
        out_dir: the campaign's directory.
        overrides: model paths per role replacing the stored config's.
        device: measure the compressed side on the campaign's agent (see :class:`DeviceOptions`).

    Raises:
        CampaignError: no campaign in the directory, or its models cannot be found.
        ModelError: a model cannot be loaded for explain.
        host.errors.TargetError: with ``device``, the agent refused or failed a call.
    """
    with CampaignStore.open_existing(out_dir) as store:
        explainer = Explainer(store, overrides, device)
        try:
            doc = explainer.explain()
        finally:
            explainer.close()
        write_explain_html(doc, out_dir)
        path = write_explain(doc, out_dir)
        write_reports(store, out_dir)
    return path, doc


def _ranking(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Layers by how many inputs the rule blames on them, then by how often they are among the most grown;
    ``carries`` counts the inputs on which either holds."""
    jumps = Counter(e["first_jump"]["match"] for e in entries if e["first_jump"])
    grown = Counter(g["match"] for e in entries for g in e["most_grown"])
    # A layer carries an input's deviation when the rule blames it or it is among the most grown (counted once).
    carries = Counter(k for e in entries
                      for k in {g["match"] for g in e["most_grown"]} | ({e["first_jump"]["match"]} if e["first_jump"]
                                                                        else set()))
    names = {row["match"]: (row["layer"], row["op"]) for e in entries for row in e["layers"]}
    order = sorted(set(jumps) | set(grown), key=lambda k: (-jumps[k], -grown[k], k))
    return [{"match": k, "layer": names[k][0], "op": names[k][1], "first_jump": jumps[k], "most_grown": grown[k],
             "carries": carries[k]} for k in order]
