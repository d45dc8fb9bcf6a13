"""``junit.xml``: one test case per requested seed, so CI systems show deviations as failures.

- a triggering input is a ``<failure>`` whose message names both labels;
- a flaky deviation passes, with the details in ``<system-out>``;
- a seed the models already disagree on (or that mismatches its label) is ``<skipped>``;
- a seed not finished yet (interrupted campaign) is ``<skipped message="not finished ...">``.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path

from host.figures import candidates
from host.files import atomic_write
from host.search.results import SeedStatus
from host.store import CampaignStore

JUNIT_NAME = "junit.xml"


def build_junit(store: CampaignStore) -> ET.ElementTree:
    """Build the JUnit XML tree from the store."""
    config = store.config_dict()
    suite_name = f"dflare.{config.get('algo', 'search')}"
    outcomes = {r.seed_index: r for r in store.outcomes()}
    inputs = {}
    for record in store.inputs():
        inputs.setdefault(record.seed_index, record)
    requested = store.requested()
    suite = ET.Element("testsuite", name=suite_name)
    counts = {"tests": 0, "failures": 0, "skipped": 0}
    total_s = 0.0
    for seed in requested:
        counts["tests"] += 1
        outcome = outcomes.get(seed.seed_index)
        case = ET.SubElement(suite, "testcase", classname=suite_name, name=f"seed_{seed.seed_index}",
                             time=f"{outcome.seconds:.3f}" if outcome else "0")
        if outcome is None:
            counts["skipped"] += 1
            ET.SubElement(case, "skipped", message="not finished (the campaign was interrupted; rerun to resume)")
            continue
        total_s += outcome.seconds
        detail = (f"seed {seed.seed_index} ({seed.name}): {candidates(outcome.queries):.0f} candidates "
                  f"({outcome.queries} queries), {outcome.seconds:.2f} s")
        if outcome.status is SeedStatus.triggered:
            counts["failures"] += 1
            record = inputs.get(seed.seed_index)
            lo = record.label_original if record else outcome.label_original
            lc = record.label_compressed if record else outcome.label_compressed
            failure = ET.SubElement(case, "failure", type="deviation",
                                    message=f"original label {lo} != compressed label {lc}")
            where = f"; input: inputs/{record.stem}.png" if record else ""
            failure.text = f"{detail}; reproduced {outcome_reproduced(record)}{where}"
        elif outcome.status is SeedStatus.skipped:
            counts["skipped"] += 1
            ET.SubElement(case, "skipped", message=outcome.exit_reason or "not searched")
        else:
            out = ET.SubElement(case, "system-out")
            out.text = f"{outcome.status.value}: {detail}; {outcome.exit_reason}".rstrip("; ")
    suite.set("tests", str(counts["tests"]))
    suite.set("failures", str(counts["failures"]))
    suite.set("errors", "0")
    suite.set("skipped", str(counts["skipped"]))
    suite.set("time", f"{total_s:.3f}")
    suites = ET.Element("testsuites", name="dflare", tests=suite.get("tests"), failures=suite.get("failures"),
                        errors="0", skipped=suite.get("skipped"), time=suite.get("time"))
    suites.append(suite)
    return ET.ElementTree(suites)


def outcome_reproduced(record: object) -> str:
    return "?" if record is None else f"{record.reproduced} time(s)"


def write_junit(store: CampaignStore, out_dir: str | Path) -> Path:
    """Write ``out_dir/junit.xml`` atomically; return its path."""
    tree = build_junit(store)
    ET.indent(tree)
    path = Path(out_dir) / JUNIT_NAME
    buf = io.BytesIO()
    tree.write(buf, encoding="utf-8", xml_declaration=True)
    atomic_write(path, buf.getvalue())
    return path
