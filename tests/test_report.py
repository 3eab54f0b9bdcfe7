"""`bizsre report` on fabricated lm-eval output folders with known values.

The fabricated files follow lm-eval 0.4.13's own layout (results_<date>.json beside
samples_<task>_<date>.jsonl, inside a folder named after the model), trimmed to the fields the
report reads, as written by a real `lm_eval --model edited-hf ... --log_samples` run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bizsre_tasks import cli
from bizsre_tasks.errors import BizsreError
from bizsre_tasks.report.build import ReportOptions, build_report
from bizsre_tasks.report.results_reader import read_results

DATE = "2026-01-02T03-04-05.678901"
TASKS = ("reliability", "generality_en", "locality_en", "portability_en", "generality_zh", "locality_zh", "portability_zh")
QUESTIONS = {"en": ["Who made Alpha?", "Where is Beta?"], "zh": ["谁制造了阿尔法？", "贝塔在哪里？"]}
GOLDS = {"en": ["Acme", "Paris"], "zh": ["艾克米", "巴黎"]}


def task_name(metric: str) -> str:
    return f"bizsre_{metric}"


def write_run(
    root: Path,
    method: str,
    edit_lang: str,
    cases: dict[str, list[tuple[float, float, str]]],
    *,
    model: str = "edited-hf",
    model_args=None,
    date: str = DATE,
    limit: float | None = 2.0,
    tasks=TASKS,
    samples: bool = True,
) -> Path:
    """A fabricated lm-eval run: per metric, one (f1, em, answer) per case; results are their means."""
    folder = root / "model_sanitized"
    folder.mkdir(parents=True, exist_ok=True)
    if model_args is None:
        model_args = {"method": method, "edit_lang": edit_lang, "protocol": "teacher_forced"}
    results, n_samples = {}, {}
    for metric in tasks:
        values = cases[metric]
        results[task_name(metric)] = {
            "name": task_name(metric), "alias": task_name(metric), "sample_len": len(values),
            "f1,none": sum(v[0] for v in values) / len(values), "f1_stderr,none": 0.0,
            "em,none": sum(v[1] for v in values) / len(values), "em_stderr,none": 0.0,
        }
        n_samples[task_name(metric)] = {"original": 743, "effective": len(values)}
        if samples:
            lang = edit_lang if metric == "reliability" else metric.split("_")[1]
            with (folder / f"samples_{task_name(metric)}_{date}.jsonl").open("w", encoding="utf-8") as handle:
                for case_id, (f1, em, answer) in enumerate(values):
                    doc = {"case_id": case_id, "split": metric.split("_")[0], "lang": lang, "question": QUESTIONS[lang][case_id],
                           "prompt": f"Question: {QUESTIONS[lang][case_id]}\nAnswer:", "target": GOLDS[lang][case_id]}
                    resps = [[answer, answer]] if metric.startswith("locality") else [[answer]]
                    sample = {"doc_id": case_id, "doc": doc, "target": doc["target"], "arguments": {}, "resps": resps,
                              "filtered_resps": resps[0] if metric.startswith("locality") else [answer], "filter": "none",
                              "metrics": ["f1", "em"], "f1": f1, "em": em}
                    handle.write(json.dumps(sample, ensure_ascii=False) + "\n")
    results["bizsre"] = {"alias": "bizsre", "name": "bizsre"}
    data = {
        "results": results,
        "group_subtasks": {"bizsre": [task_name(m) for m in tasks]},
        "configs": {task_name(m): {"task": task_name(m), "metadata": {"version": 1.0}} for m in tasks},
        "n-samples": n_samples,
        "config": {"model": model, "model_args": model_args, "limit": limit, "batch_size": 1},
        "lm_eval_version": "0.4.13",
    }
    path = folder / f"results_{date}.json"
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def uniform(f1: float, em: float, answer: str = "x") -> list[tuple[float, float, str]]:
    return [(f1, em, answer), (f1, em, answer)]


def rome_en_cases() -> dict:
    # Case 0: held in en (F1 = EM = 1) but not in zh; case 1: did not hold in en.
    return {
        "reliability": [(1.0, 1.0, "Acme"), (0.5, 0.0, "Paris Texas")],
        "generality_en": uniform(0.8, 0.5),
        "locality_en": uniform(0.9, 1.0),
        "portability_en": uniform(0.1, 0.0),
        "generality_zh": [(0.25, 0.0, "阿尔法公司"), (0.35, 0.0, "巴")],
        "locality_zh": uniform(0.95, 0.5),
        "portability_zh": uniform(0.0, 0.0),
    }


def flat_cases(value: float) -> dict:
    return {metric: uniform(value, 0.0) for metric in TASKS}


@pytest.fixture()
def sweep_dir(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    write_run(root / "rome_en", "rome", "en", rome_en_cases())
    write_run(root / "none_en", "none", "en", flat_cases(0.2))
    write_run(root / "rome_zh", "rome", "zh", {**flat_cases(0.4), "generality_zh": uniform(0.9, 1.0)})
    return root


def read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def run_cli(argv: list[str], monkeypatch) -> int:
    monkeypatch.setitem(cli.SUBCOMMANDS, "report", ("bizsre_tasks.commands.report", "report"))
    return cli.main(argv)


def test_table_cells_are_exact(sweep_dir: Path, tmp_path: Path) -> None:
    report = build_report(ReportOptions([sweep_dir], tmp_path / "out"), warn=lambda m: None)
    rows = read_csv(tmp_path / "out" / "table2.csv")
    assert rows[0] == ["Backbone", "Protocol", "Edit mode", "Edit", "Method", "Reliability", "en Generality", "en Locality", "en Portability",
                       "zh Generality", "zh Locality", "zh Portability", "Cases"]
    assert rows[1] == ["gemma3-270m", "teacher_forced", "single", "en", "No edit", *["20.0 / 0.0"] * 7, "2"]
    assert rows[2] == ["gemma3-270m", "teacher_forced", "single", "en", "ROME", "75.0 / 50.0", "80.0 / 50.0", "90.0 / 100.0", "10.0 / 0.0",
                       "30.0 / 0.0", "95.0 / 50.0", "0.0 / 0.0", "2"]
    assert rows[3][3:6] == ["zh", "ROME", "40.0 / 0.0"]
    assert rows[3][9] == "90.0 / 100.0"
    assert "| en | ROME | 75.0 / 50.0 | 80.0 / 50.0 | 90.0 / 100.0 | 10.0 / 0.0 | 30.0 / 0.0 | 95.0 / 50.0 | 0.0 / 0.0 | 2 |" in report.markdown


def test_findings_section_and_csv(sweep_dir: Path, tmp_path: Path) -> None:
    report = build_report(ReportOptions([sweep_dir], tmp_path / "out"), warn=lambda m: None)
    rows = read_csv(tmp_path / "out" / "findings.csv")
    assert rows[0] == ["Backbone", "Protocol", "Edit mode", "Finding", "Claim", "Held", "Evidence"]
    verdicts = {row[3]: row[5] for row in rows[1:]}
    # fixture: ROME en generality 80 vs 30, ROME zh 90 vs 40; no IKE run; one unedited run (one edit language)
    assert verdicts == {"a": "not decided", "b": "held", "c": "held", "d": "not decided"}
    assert "### The paper's findings, measured here" in report.markdown


def test_gap_table(sweep_dir: Path, tmp_path: Path) -> None:
    build_report(ReportOptions([sweep_dir], tmp_path / "out"), warn=lambda m: None)
    rows = read_csv(tmp_path / "out" / "gap.csv")
    assert rows[0] == ["Backbone", "Protocol", "Edit mode", "Method", "en→zh", "zh→en"]
    by_method = {row[3]: row[4:] for row in rows[1:]}
    assert by_method["ROME"] == ["+50.0", "+50.0"]  # en: 80 - 30; zh: 90 - 40
    assert by_method["No edit"] == ["+0.0", "–"]


def test_radar_png_is_written(sweep_dir: Path, tmp_path: Path) -> None:
    report = build_report(ReportOptions([sweep_dir], tmp_path / "out"), warn=lambda m: None)
    png = tmp_path / "out" / "radar_gemma3-270m_teacher_forced.png"
    assert png in report.files
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width = matplotlib.image.imread(png).shape[:2]
    assert width > height > 300  # two panels side by side (en, zh)


def test_reference_side_by_side(sweep_dir: Path, tmp_path: Path) -> None:
    from bizsre_tasks.report.reference import DEFAULT_REFERENCE

    options = ReportOptions([sweep_dir], tmp_path / "out", DEFAULT_REFERENCE, ["Chinese-LLaMA-2-7B"])
    report = build_report(options, warn=lambda m: None)
    rows = read_csv(tmp_path / "out" / "comparison.csv")
    assert rows[0][:8] == ["Backbone", "Protocol", "Edit mode", "Paper backbone", "Edit", "Method", "Reliability ours", "Reliability paper"]
    rome_en = next(row for row in rows if row[4:6] == ["en", "ROME"])
    assert rome_en[6:8] == ["75.0 / 50.0", "77.7 / 68.0"]  # paper: 77.65 / 67.98
    assert (tmp_path / "out" / "radar_paper_Chinese-LLaMA-2-7B.png").is_file()
    assert "Published numbers" in report.markdown


def test_unknown_reference_backbone(sweep_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    assert run_cli(["report", str(sweep_dir), "--out", str(tmp_path / "o"), "--backbone", "GPT-9"], monkeypatch) == 2
    assert "GPT-9" in capsys.readouterr().err


def test_cases_drill_down(sweep_dir: Path, tmp_path: Path) -> None:
    build_report(ReportOptions([sweep_dir], tmp_path / "out", cases=True), warn=lambda m: None)
    rows = read_csv(tmp_path / "out" / "cases.csv")
    rome = [row for row in rows[1:] if row[3] == "rome" and row[4] == "en"]
    assert len(rome) == 1
    header = rows[0]
    case = dict(zip(header, rome[0]))
    assert case["other_lang"] == "zh" and case["case_id"] == "0"
    assert (case["edit_question"], case["edit_gold"], case["edit_answer"]) == ("Who made Alpha?", "Acme", "Acme")
    assert (case["other_question"], case["other_gold"], case["other_answer"]) == ("谁制造了阿尔法？", "艾克米", "阿尔法公司")
    text = (tmp_path / "out" / "cases.md").read_text(encoding="utf-8")
    assert "Held in en: 1 of 2 cases; of these, 1 did not carry over to zh." in text


def test_truncated_results_file_is_named(sweep_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    path = next((sweep_dir / "rome_en").rglob("results_*.json"))
    path.write_text(path.read_text(encoding="utf-8")[:200], encoding="utf-8")
    assert run_cli(["report", str(sweep_dir), "--out", str(tmp_path / "o")], monkeypatch) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "truncated or not valid JSON" in err


def test_missing_results_file_is_named(sweep_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    failed = sweep_dir / "kn_en"
    failed.mkdir()
    (failed / "lm_eval.log").write_text("Traceback ...\n", encoding="utf-8")
    assert run_cli(["report", str(sweep_dir), "--out", str(tmp_path / "o")], monkeypatch) == 2
    err = capsys.readouterr().err
    assert str(failed) in err and "no lm-eval results file" in err
    # Reporting the finished runs anyway is one flag away.
    assert run_cli(["report", str(sweep_dir), "--out", str(tmp_path / "o"), "--skip-incomplete"], monkeypatch) == 0


def test_missing_folder_and_file(tmp_path: Path, monkeypatch, capsys) -> None:
    assert run_cli(["report", str(tmp_path / "nowhere")], monkeypatch) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
    with pytest.raises(BizsreError, match="not found"):
        read_results(tmp_path / "results_2026-01-01T00-00-00.json")
    (tmp_path / "empty").mkdir()
    assert run_cli(["report", str(tmp_path / "empty")], monkeypatch) == 2
    assert "no lm-eval results files" in capsys.readouterr().err


def test_missing_samples_file_with_cases(sweep_dir: Path, tmp_path: Path) -> None:
    victim = next((sweep_dir / "rome_en").rglob("samples_bizsre_generality_zh_*.jsonl"))
    victim.unlink()
    with pytest.raises(BizsreError, match="samples file .*samples_bizsre_generality_zh"):
        build_report(ReportOptions([sweep_dir], tmp_path / "out", cases=True), warn=lambda m: None)


def test_plain_lm_eval_runs(tmp_path: Path) -> None:
    """Runs made by hand: `--model hf` is the unedited model; string model_args (older lm-eval)."""
    hf = write_run(tmp_path / "a", "x", "en", flat_cases(0.5), model="hf", model_args="pretrained=/models/llama-7b,dtype=float16")
    run = read_results(hf)
    assert (run.method, run.edit_lang, run.backbone, run.protocol) == ("none", "en", "llama-7b", "generate")
    edited = write_run(tmp_path / "b", "x", "zh", flat_cases(0.5), model_args="method=memit,edit_lang=zh,pretrained=org/model")
    run = read_results(edited)
    assert (run.method, run.edit_lang, run.backbone) == ("memit", "zh", "org/model")


def test_repeated_run_uses_newest(tmp_path: Path) -> None:
    write_run(tmp_path / "r", "rome", "en", flat_cases(0.1), date="2026-01-01T00-00-00.000001")
    write_run(tmp_path / "r", "rome", "en", flat_cases(0.7), date="2026-01-03T00-00-00.000001")
    notes = []
    report = build_report(ReportOptions([tmp_path / "r"], tmp_path / "out"), warn=notes.append)
    assert len(report.runs) == 1 and report.runs[0].scores["reliability"].f1 == pytest.approx(0.7)
    assert any("repeats" in note for note in notes)


def test_cli_default_out_folder(sweep_dir: Path, monkeypatch, capsys) -> None:
    assert run_cli(["report", str(sweep_dir), "--reference"], monkeypatch) == 0
    assert (sweep_dir / "report" / "report.md").is_file()
    assert (sweep_dir / "report" / "radar_paper_Baichuan2-7B.png").is_file()
    # The report folder holds no results, so a second report over DIR reads the same runs.
    assert run_cli(["report", str(sweep_dir)], monkeypatch) == 0


def test_custom_reference_tsv(sweep_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    tsv = tmp_path / "mine.tsv"
    tsv.write_text("backbone\tedit_lang\tmethod\tmetric\tf1\tem\nTiny\ten\tROME\treliability\t12.34\t05.00\n", encoding="utf-8")
    assert run_cli(["report", str(sweep_dir), "--out", str(tmp_path / "o"), "--reference", str(tsv)], monkeypatch) == 0
    rome_en = next(row for row in read_csv(tmp_path / "o" / "comparison.csv") if row[4:6] == ["en", "ROME"])
    assert rome_en[3] == "Tiny" and rome_en[6:8] == ["75.0 / 50.0", "12.3 / 5.0"]
    tsv.write_text("backbone\tedit_lang\tmethod\tmetric\tf1\tem\nTiny\ten\tROME\treliability\tabc\t05.00\n", encoding="utf-8")
    assert run_cli(["report", str(sweep_dir), "--out", str(tmp_path / "o"), "--reference", str(tsv)], monkeypatch) == 2
    assert f"{tsv}, line 2" in capsys.readouterr().err


def test_sequential_runs_get_their_own_section_with_immediate_reliability(sweep_dir: Path, tmp_path: Path) -> None:
    """A sequential run beside a single one of the same method: both kept, in separate sections; its
    f1_immediate shows in the forgetting table; it is not set beside the paper's single-edit numbers."""
    from bizsre_tasks.report.reference import DEFAULT_REFERENCE

    args = {"method": "rome", "edit_lang": "en", "protocol": "teacher_forced", "edit_mode": "sequential"}
    write_run(tmp_path / "sweep" / "rome_en_sequential", "rome", "en", flat_cases(0.3), model_args=args,
              date="2026-01-03T03-04-05.678901")
    path = next((sweep_dir / "rome_en_sequential").rglob("results_*.json"))
    data = json.loads(path.read_text(encoding="utf-8"))
    data["results"]["bizsre_reliability"].update({"f1_immediate,none": 0.9, "em_immediate,none": 0.5})
    path.write_text(json.dumps(data), encoding="utf-8")
    assert read_results(path).immediate.f1 == pytest.approx(0.9)

    options = ReportOptions([sweep_dir], tmp_path / "out", DEFAULT_REFERENCE, ["Chinese-LLaMA-2-7B"])
    report = build_report(options, warn=lambda m: None)
    assert len(report.runs) == 4  # the sequential run does not replace the single-mode ROME en run
    table = read_csv(tmp_path / "out" / "table2.csv")
    assert [row[2:5] for row in table[1:]] == [["single", "en", "No edit"], ["single", "en", "ROME"], ["single", "zh", "ROME"],
                                               ["sequential", "en", "ROME"]]
    forgetting = read_csv(tmp_path / "out" / "forgetting.csv")
    assert forgetting[1] == ["gemma3-270m", "teacher_forced", "sequential", "en", "ROME", "30.0 / 0.0", "90.0 / 50.0", "+60.0"]
    assert len(forgetting) == 2  # single-mode runs have no separate immediate score
    compared = read_csv(tmp_path / "out" / "comparison.csv")
    assert {row[2] for row in compared[1:]} == {"single"}
    assert "## gemma3-270m, protocol teacher_forced, edit_mode sequential" in report.markdown
    assert (tmp_path / "out" / "radar_gemma3-270m_teacher_forced_sequential.png").is_file()
