"""`bizsre report`: the paper's Table 2, Figure 2 and a cross-lingual gap table, regenerated from
lm-eval's own results and samples files.

- results_reader: find and parse `results_*.json` / `samples_*.jsonl` (any lm_eval run, not only sweeps)
- reference: the published numbers (reference/paper_results.tsv)
- tables: Table 2 layout, comparison and gap tables, Markdown and CSV
- radar: Figure 2-style radar charts (matplotlib, Agg)
- cases: per-case drill-down of edits that did not carry over to the other language
- build: puts it together into an output folder
"""
