"""Trends over lab runs, regressions against a baseline run, and JUnit XML per combination.

A regression, for a combination (device, model, delegate) that passed in both runs:

* ``new_deviation``: a seed on which the original and compressed models agreed in the baseline
  now gets different top-1 labels (the compressed model, runtime or delegate changed behaviour);
* ``latency``: the p50 latency per image is more than ``latency_ratio`` times the baseline's and
  slower by at least ``latency_min_delta_ms``.

A combination that failed or was skipped is reported (a JUnit error or skip) but is not a
regression: a dead device is an infrastructure problem, and the device table shows it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from host.lab.history import History

ComboKey = tuple[str, str, str]


@dataclass(frozen=True)
class Regression:
    """One regression of a combination against the baseline run."""

    kind: str  # new_deviation | latency
    device: str
    model: str
    delegate: str
    detail: str
    seeds: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "device": self.device, "model": self.model, "delegate": self.delegate,
                "detail": self.detail, "seeds": list(self.seeds)}


def _key(row: dict[str, Any]) -> ComboKey:
    return (row["device"], row["model"], row["delegate"])


def find_regressions(history: History, run_id: str, baseline_id: str, latency_ratio: float,
                     latency_min_delta_ms: float) -> list[Regression]:
    """Compare a run with a baseline run; see the module docstring for what counts.

    Raises:
        ConfigError: either run id is unknown.
    """
    run_id = history.run(run_id)["run_id"]
    baseline_id = history.run(baseline_id)["run_id"]
    now = {_key(c): c for c in history.combos(run_id) if c["status"] == "passed"}
    base = {_key(c): c for c in history.combos(baseline_id) if c["status"] == "passed"}
    now_seeds: dict[ComboKey, dict[int, int]] = {}
    for s in history.seeds(run_id):
        now_seeds.setdefault(_key(s), {})[int(s["seed_index"])] = int(s["deviates"])
    base_seeds: dict[ComboKey, dict[int, int]] = {}
    for s in history.seeds(baseline_id):
        base_seeds.setdefault(_key(s), {})[int(s["seed_index"])] = int(s["deviates"])
    out: list[Regression] = []
    for key in sorted(set(now) & set(base)):
        device, model, delegate = key
        before, after = base_seeds.get(key, {}), now_seeds.get(key, {})
        new = sorted(i for i, dev in after.items() if dev and before.get(i) == 0)
        if new:
            shown = ", ".join(map(str, new[:10])) + (" ..." if len(new) > 10 else "")
            out.append(Regression("new_deviation", device, model, delegate,
                                  f"{len(new)} seed(s) that agreed in {baseline_id} now deviate: {shown}", tuple(new)))
        p_now, p_base = now[key]["latency_p50_ms"], base[key]["latency_p50_ms"]
        slower = p_now is not None and bool(p_base) and p_now > p_base * latency_ratio
        if slower and p_now - p_base >= latency_min_delta_ms:
            out.append(Regression("latency", device, model, delegate,
                                  f"p50 latency {p_now:.3f} ms vs {p_base:.3f} ms in {baseline_id} "
                                  f"({p_now / p_base:.2f}x > {latency_ratio:.2f}x)"))
    return out


def trends(history: History, lab: str, last: int = 10) -> list[dict[str, Any]]:
    """Per run (oldest first, at most ``last``): each combination's status and figures."""
    rows = []
    for run in history.runs(lab)[-last:]:
        combos = history.combos(run["run_id"])
        rows.append({
            "run_id": run["run_id"], "started_at": run["started_at"], "status": run["status"],
            "host_version": run["host_version"],
            "devices": {d["device"]: d["status"] for d in history.devices(run["run_id"])},
            "combos": [{k: c[k] for k in ("device", "model", "delegate", "status", "seed_deviations", "seeds",
                                          "triggered", "success_rate", "queries_per_trigger", "candidates_per_trigger",
                                          "latency_p50_ms",
                                          "runtime_version", "agent_version", "model_sha256")} for c in combos],
        })
    return rows


def junit_xml(history: History, run_id: str, regressions: list[Regression]) -> str:
    """JUnit XML: one test case per combination; regressions are failures, failed combos errors."""
    run = history.run(run_id)
    combos = history.combos(run["run_id"])
    by_key: dict[ComboKey, list[Regression]] = {}
    for r in regressions:
        by_key.setdefault((r.device, r.model, r.delegate), []).append(r)
    failures = sum(1 for c in combos if by_key.get(_key(c)))
    suite = ET.Element("testsuite", {
        "name": f"dflare-lab.{run['lab']}", "tests": str(len(combos)), "failures": str(failures),
        "errors": str(sum(c["status"] == "failed" for c in combos)),
        "skipped": str(sum(c["status"] == "skipped" for c in combos)),
        "time": f"{sum(c['seconds'] or 0 for c in combos):.3f}", "timestamp": run["started_at"],
    })
    props = ET.SubElement(suite, "properties")
    for name, value in (("run_id", run["run_id"]), ("host_version", run["host_version"] or "")):
        ET.SubElement(props, "property", {"name": name, "value": str(value)})
    for c in combos:
        case = ET.SubElement(suite, "testcase", {
            "classname": f"{run['lab']}.{c['device']}", "name": f"{c['model']}[{c['delegate']}]",
            "time": f"{c['seconds'] or 0:.3f}",
        })
        if c["status"] == "failed":
            ET.SubElement(case, "error", {"message": c["error"] or "failed"}).text = c["error"]
        elif c["status"] == "skipped":
            ET.SubElement(case, "skipped", {"message": c["error"] or "skipped"})
        for r in by_key.get(_key(c), []):
            ET.SubElement(case, "failure", {"type": r.kind, "message": r.detail}).text = r.detail
        out = ET.SubElement(case, "system-out")
        out.text = (f"seed_deviations={c['seed_deviations']}/{c['seeds']} triggered={c['triggered']} "
                    f"candidates_per_trigger={c['candidates_per_trigger']} "
                    f"queries_per_trigger={c['queries_per_trigger']} "
                    f"latency_p50_ms={c['latency_p50_ms']} "
                    f"runtime={c['runtime']} {c['runtime_version']} agent={c['agent_version']} "
                    f"model_sha256={c['model_sha256']}")
    suites = ET.Element("testsuites")
    suites.append(suite)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
