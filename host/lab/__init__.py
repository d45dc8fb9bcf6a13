"""Lab mode: unattended runs over many devices (``dflare lab run``) and their history (``dflare lab report``)."""

from host.lab.config import LabConfig, load_lab_config
from host.lab.history import History
from host.lab.report import Regression, find_regressions, junit_xml, trends
from host.lab.runner import LabEvent, LabRun, LabRunner

__all__ = ["History", "LabConfig", "LabEvent", "LabRun", "LabRunner", "Regression", "find_regressions",
           "junit_xml", "load_lab_config", "trends"]
