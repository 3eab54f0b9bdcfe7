"""What a results file must say about where its numbers came from.

The tasks record every test file they read (path, fingerprint, and how it was chosen: model_args or
--metadata, a made task folder, $BIZSRE_TEST_FILE or the bundled demo sample) and `edited-hf` records
its run label (model, method, edit language, protocol). The start-up hook wraps the harness's
`EvaluationTracker.save_results_aggregated` so that each results JSON gets a `bizsre` section with
both, and so that edited-hf runs land in `OUTPUT/<model>__<method>_<edit_lang>_<protocol>/` instead
of the harness's one folder per `pretrained` (or a random name when `pretrained` is not given).
"""

from __future__ import annotations

import functools
from pathlib import Path

TEST_FILES: dict[str, dict[str, str]] = {}
RUN: dict[str, str] = {}


def record_test_file(path: Path, fingerprint: str, source: str) -> None:
    TEST_FILES[str(Path(path).resolve())] = {"fingerprint": fingerprint, "source": source}


def record_run(model_name: str, method: str, edit_lang: str, protocol: str) -> None:
    RUN.clear()
    RUN.update({"model": model_name, "method": method, "edit_lang": edit_lang, "protocol": protocol})


def run_label() -> str | None:
    if not RUN:
        return None
    from lm_eval.utils import sanitize_model_name

    return sanitize_model_name(f"{Path(RUN['model']).name or RUN['model']}__{RUN['method']}_{RUN['edit_lang']}_{RUN['protocol']}")


def section() -> dict:
    info: dict = {}
    if TEST_FILES:
        info["test_files"] = [{"path": path, **details} for path, details in TEST_FILES.items()]
    if RUN:
        info["edited_hf"] = dict(RUN)
    return info


def patch_evaluation_tracker(tracker_class) -> None:
    original = tracker_class.save_results_aggregated
    if getattr(original, "_bizsre", False):
        return

    @functools.wraps(original)
    def save_results_aggregated(self, results, samples=None):
        info = section()
        if info and isinstance(results, dict):
            results["bizsre"] = info
        general = self.general_config_tracker
        label = run_label()
        if label and getattr(general, "model_source", None) == "edited-hf":
            general.model_name_sanitized = label
        try:
            return original(self, results, samples)
        finally:
            TEST_FILES.clear()  # the next evaluation in this process records its own

    save_results_aggregated._bizsre = True
    tracker_class.save_results_aggregated = save_results_aggregated
