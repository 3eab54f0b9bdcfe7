"""`edited-hf`: the harness's HF model, edited per test case before it answers.

For every Bi-ZsRE case in the requests the harness hands over, the wrapper
1. answers the case's locality questions with the unedited model (the pre-edit answers),
2. applies the chosen method's edit once, built from the edit-language part of the case,
3. answers every request of that case from every selected task, batched,
4. restores the model (bit for bit; `verify_restore=true` checks it against a copy of the weights).
Weight methods take the cases in chunks of `edit_batch`: the chunk's pre-edit answers are batched,
the method may prepare the chunk's edits together (`precompute`), then every case is edited,
answered and restored in turn. Weight-free methods (IKE, SERAC, none) are batched across cases: a chunk's
edits are applied, then its pre-edit and post-edit questions answered in one call.
That is `edit_mode=single`; `sequential` lets the edits accumulate and `batch` installs several at once
(`wrapper/edit_modes.py`, docs/edited-hf.md).

The wrapper knows nothing of any method's internals: it talks to them through
`bizsre_tasks.editing.base.EditingMethod`.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import re
import time
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from tqdm.auto import tqdm
from transformers import LogitsProcessorList

from bizsre_tasks.default_model import resolve_pretrained
from bizsre_tasks.editing.base import (
    AppliedEdit,
    EditFailedError,
    EditingContext,
    EditStack,
)
from bizsre_tasks.editing.common import context_limit
from bizsre_tasks.editing.layout import ModelLayout
from bizsre_tasks.editing.registry import (
    build_method,
    hparams_source,
    method_class,
    read_hparams_file,
)
from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.tasks import paper_protocol, provenance, run_state
from bizsre_tasks.tasks.answer_lines import EndAfterFirstLine
from bizsre_tasks.tasks.task_docs import PROTOCOLS
from bizsre_tasks.wrapper import batch_sizing, edit_modes, greedy_generation, paper_answers, preflight
from bizsre_tasks.wrapper import sequence_checkpoints as sequence_points
from bizsre_tasks.wrapper.answer_store import (
    AnswerStore,
    request_signature,
    run_identity,
)
from bizsre_tasks.wrapper.case_planning import CaseWork, cut, plan_cases
from bizsre_tasks.wrapper.model_args import check_model_args, positive_int
from bizsre_tasks.wrapper.prefix_cache import (
    shared_prefix_answers,
    shared_prefix_groups,
)
from bizsre_tasks.wrapper.restore_check import WeightSnapshot
from bizsre_tasks.wrapper.teacher_forcing import teacher_forced_answers

logger = logging.getLogger(__name__)
PACKAGE_VERSION = "0.1.0"

# model_args that lm-eval also passes to tasks (metadata); the model accepts and ignores them.
TASK_ONLY_ARGS = ("test_file", "scoring_tokenizer")
TASK_ONLY_PREFIXES = ("prompt_template_",)
# Progress: answer in slices of about this many seconds, each at least this many batches.
PROGRESS_SECONDS = 15.0
MIN_SLICE_BATCHES = 2
LANG_CODE = re.compile(r"^[a-z]{2,3}([-_][A-Za-z0-9]+)?$")


class _Request:
    """The part of an lm-eval Instance that HFLM.generate_until reads."""

    def __init__(self, context: str, gen_kwargs: dict):
        self.args = (context, gen_kwargs)


def model_checksum(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A cheap identity for the weights (name, shape and a strided sample of every tensor)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 256)].float().cpu().numpy().tobytes()
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(sample)
    return digest.hexdigest()[:16]


def _own_args() -> set[str]:
    names = set(inspect.signature(EditedHFLM.__init__).parameters) - {"self", "kwargs"}
    return names | set(TASK_ONLY_ARGS) | {prefix + "<lang>" for prefix in TASK_ONLY_PREFIXES}


def _hflm_args() -> set[str]:
    return set(inspect.signature(HFLM.__init__).parameters) - {"self", "kwargs"}


def _model_config(pretrained: str | None, cache_dir: str | None, kwargs: dict):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(
        resolve_pretrained(pretrained, cache_dir),
        trust_remote_code=bool(kwargs.get("trust_remote_code")),
        revision=kwargs.get("revision") or "main",
        subfolder=kwargs.get("subfolder") or "",
    )


@register_model("edited-hf")
class EditedHFLM(HFLM):
    def __init__(
        self,
        pretrained: str | None = None,
        method: str = "none",
        edit_lang: str = "en",
        hparams: str | None = None,
        protocol: str = "generate",
        seed: int = 1234,
        verify_restore: bool = False,
        checkpoint: str | None = None,
        train_file: str | None = None,
        cache_dir: str | None = None,
        answer_store: str | None = None,
        cross_case_batch: int = 32,
        edit_batch: int = 4,
        edit_mode: str = "single",
        edits_per_batch: int = edit_modes.DEFAULT_EDITS_PER_BATCH,
        sequence_checkpoints: str | None = None,
        checkpoint_answers: str | None = None,
        drop_finished_rows: bool = True,
        case_order: str = "forward",
        **kwargs: Any,
    ) -> None:
        test_file = kwargs.get("test_file")
        for key in list(kwargs):
            if key in TASK_ONLY_ARGS or key.startswith(TASK_ONLY_PREFIXES):
                kwargs.pop(key)
        # A misspelt name would otherwise reach the HF model's constructor after the weights are loaded.
        check_model_args(kwargs, own=_own_args(), harness=_hflm_args(), load_config=lambda: _model_config(pretrained, cache_dir, kwargs))
        # Argument checks come before the (slow) model load.
        method = str(method) if ":" in str(method) else str(method).lower()
        method_cls = method_class(method)
        if protocol not in PROTOCOLS:
            raise ConfigurationError(f"unknown protocol '{protocol}'; choose one of: {', '.join(PROTOCOLS)}")
        edit_lang = str(edit_lang)
        if not LANG_CODE.match(edit_lang):
            raise ConfigurationError(f"edit_lang '{edit_lang}' is not a language code such as 'en' or 'zh'")
        if test_file:  # the tasks read it only after the model is loaded
            preflight.check_test_file(test_file, edit_lang)
        cross_case_batch, edit_batch = positive_int("cross_case_batch", cross_case_batch), positive_int("edit_batch", edit_batch)
        edit_mode, edits_per_batch = edit_modes.check_edit_mode(edit_mode, edits_per_batch)
        case_order = edit_modes.check_case_order(case_order, edit_mode)
        checkpoints = sequence_points.parse_checkpoints(sequence_checkpoints)
        sequence_points.check_options(edit_mode, checkpoints, checkpoint_answers)
        user_hparams = read_hparams_file(hparams, method_cls.name)  # `paper`: the method's bundled preset
        if not torch.cuda.is_available() and kwargs.get("device") in (None, "cuda"):
            kwargs["device"] = "cpu"
        if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # Under a multi-process launcher without GPUs, accelerate forms a gloo process group only when
            # told it runs on CPU; otherwise every process is alone (rank 0 of 1) and does all the work.
            os.environ.setdefault("ACCELERATE_USE_CPU", "1")
        super().__init__(pretrained=resolve_pretrained(pretrained, cache_dir), **kwargs)
        self._adopt_cpu_processes()
        edit_modes.check_world_size(edit_mode, self.world_size)
        self.edit_mode, self.edits_per_batch, self.case_order = edit_mode, edits_per_batch, case_order
        self.checkpoint_writer = sequence_points.CheckpointWriter(checkpoint_answers, checkpoints) if checkpoints else None
        self.model.requires_grad_(False)
        self.method_name = method
        self.edit_lang = edit_lang
        self.protocol = protocol
        run_state.record_wrapper_protocol(protocol)
        self.seed = int(seed)
        self.verify_restore = bool(verify_restore)
        self.drop_finished_rows = bool(drop_finished_rows)
        self.edit_count = 0
        self.timings: list[dict[str, float]] = []
        self.answer_store_dir = answer_store
        self.cross_case_batch, self.edit_batch = cross_case_batch, edit_batch
        self.failed_edits: list[dict[str, str]] = []
        context = EditingContext(
            model=self.model,
            tokenizer=self.tokenizer,
            layout=ModelLayout.for_model(self.model, user_hparams.get("layout")),
            device=self.device,
            model_name=str(getattr(self.model, "name_or_path", "") or pretrained or ""),
            train_file=train_file,
            edit_lang=edit_lang,
            checkpoint=checkpoint,
            seed=self.seed,
        )
        self.weights_fingerprint = weights_fingerprint(self.model) if answer_store else ""
        self.editor = build_method(method, context, user_hparams, source=str(hparams_source(hparams, method_cls.name) or f"{method_cls.name} defaults"))
        provenance.record_run(context.model_name or "model", method, edit_lang, protocol)
        self._auto_batch_size: int | None = None

    def _adopt_cpu_processes(self) -> None:
        """Data parallel on CPU: HFLM splits the documents between processes only when it sees more than
        one GPU, so on CPU every process of the group would still be rank 0 of 1 and do all the work.
        Take the process group's rank and size, as HFLM does for GPUs."""
        accelerator = getattr(self, "accelerator", None)
        if accelerator is None or self._world_size != 1 or accelerator.num_processes <= 1 or self.device.type != "cpu":
            return
        self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        logger.info("data parallel on CPU: rank %d of %d", self._rank, self._world_size)

    def _detect_batch_size(self, requests=None, pos: int = 0) -> int:
        """`--batch_size auto`: the largest batch whose estimated memory fits in the free memory (see
        batch_sizing), once per run. The harness's own probe runs the model at its full context (32k
        tokens for Gemma 3) with the full vocabulary, which does not fit in a CPU machine's memory."""
        if getattr(self, "_auto_batch_size", None) is None:
            size = batch_sizing.auto_batch_size(self.model, self.device, self.max_length, self.max_batch_size, self.world_size)
            if self.world_size > 1:  # every rank must use the same size
                size = int(min(self.all_gather(torch.tensor([size], device=self.device)).tolist()))
            self._auto_batch_size = size
        return self._auto_batch_size

    # --- the harness's cache cannot tell edits apart ------------------------------------------
    def set_cache_hook(self, cache_hook) -> None:
        if self.method_name != "none" and getattr(cache_hook, "dbdict", None) is not None:
            raise ConfigurationError(
                "--use_cache is not supported with edited-hf and an editing method: the harness keys its cache "
                "on the prompt alone, so answers computed under one edit would be returned under another. "
                "Drop --use_cache (method=none may use it)."
            )
        super().set_cache_hook(cache_hook)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise ConfigurationError("edited-hf answers generate_until tasks (the Bi-ZsRE tasks); use --model hf for others")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise ConfigurationError("edited-hf answers generate_until tasks (the Bi-ZsRE tasks); use --model hf for others")

    # --- answering ----------------------------------------------------------------------------
    def _teacher_forcing_batch_size(self) -> int:
        if self.batch_size == "auto":
            return self._detect_batch_size()
        return self.batch_size if isinstance(self.batch_size, int) and self.batch_size > 0 else 8

    def _answer(self, requests: list, indices: list[int], edits: list[AppliedEdit]) -> list[str]:
        """Answers for `requests[i]`, each under the edit at the same position in `edits`."""
        if not indices:
            return []
        contexts = [edit.rewrite_prompt(requests[i].args[0]) for i, edit in zip(indices, edits)]
        if self.protocol == "paper":
            questions, docs = [requests[i].args[0] for i in indices], [requests[i].doc for i in indices]
            return paper_answers.paper_answers(
                self.model, self.tokenizer, questions, [doc["target"] for doc in docs], [doc["paper_variant"] for doc in docs],
                [paper_protocol.split_rewrite(q, c) for q, c in zip(questions, contexts)], self._teacher_forcing_batch_size(),
            )
        if self.protocol == "teacher_forced":
            targets = [requests[i].doc["target_separator"] + requests[i].doc["target"] for i in indices]
            prefixes = [edit.prefix_for(requests[i].args[0]) for i, edit in zip(indices, edits)]
            return self._teacher_forced(contexts, targets, prefixes)
        def generated(positions: list[int]) -> list[str]:
            # Rows stop once their first non-empty line is complete (the answer, `answer_lines`), not at
            # max_gen_toks. The processor keeps state across the batches of one call: a new one per call.
            end = {"logits_processor": LogitsProcessorList([EndAfterFirstLine(self.tokenizer)])}
            plain = [_Request(contexts[p], {**requests[indices[p]].args[1], **end}) for p in positions]
            return super(EditedHFLM, self).generate_until(plain, disable_tqdm=True) if plain else []

        if not self.drop_finished_rows:
            return generated(list(range(len(contexts))))
        # Questions under one shared prefix (IKE's demonstrations) are generated together from its cache.
        answers = [""] * len(contexts)
        grouped: set[int] = set()
        prefixes = [edit.prefix_for(requests[i].args[0]) for i, edit in zip(indices, edits)]
        for prefix, positions in shared_prefix_groups(contexts, prefixes).items():
            # The harness makes a batch per set of generation options: the prefix runs in the first only.
            self._generation_prefix = {"ids": self.tok_encode(prefix), "made": None}
            try:
                self._store(answers, positions, generated(positions))
            finally:
                self._generation_prefix = None
            grouped.update(positions)
        rest = [p for p in range(len(contexts)) if p not in grouped]
        self._store(answers, rest, generated(rest))
        return answers

    def _teacher_forced(self, contexts: list[str], targets: list[str], prefixes: list[str | None]) -> list[str]:
        """Teacher-forced answers. Prompts that share a prefix (`AppliedEdit.prefix_for`: IKE's
        demonstrations) are answered together, computing that prefix once (for IKE several times faster
        than batching its long prompts across cases); the others are batched across cases."""
        batch_size = self._teacher_forcing_batch_size()
        answers = [""] * len(contexts)
        grouped: set[int] = set()
        for prefix, positions in shared_prefix_groups(contexts, prefixes).items():
            suffixes, suffix_targets = [contexts[p][len(prefix) :] for p in positions], [targets[p] for p in positions]
            self._store(answers, positions, shared_prefix_answers(self.model, self.tokenizer, prefix, suffixes, suffix_targets, batch_size))
            grouped.update(positions)
        rest = [p for p in range(len(contexts)) if p not in grouped]
        rest_answers = teacher_forced_answers(self.model, self.tokenizer, [contexts[p] for p in rest], [targets[p] for p in rest], batch_size)
        self._store(answers, rest, rest_answers)
        return answers

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs) -> torch.Tensor:
        """Greedy decoding that lets finished rows go (`wrapper/greedy_generation.py`); anything but plain
        greedy decoding, mixed precision, or `drop_finished_rows=false` goes to the harness's `generate`."""
        plain = self.backend == "causal" and getattr(self, "mixed_precision_dtype", None) is None
        if not (self.drop_finished_rows and plain and greedy_generation.is_greedy(generation_kwargs)):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        attention_mask = generation_kwargs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(context)
        prefix = None
        shared = getattr(self, "_generation_prefix", None)
        if shared:
            prefix = greedy_generation.cached_prefix(self.model, context, attention_mask, shared["ids"], max_length, shared["made"])
            shared["made"] = shared["made"] or prefix
        return greedy_generation.greedy_generate(
            self.model, self.tokenizer, context, attention_mask, max_length, stop, self.tokenizer.pad_token_id,
            generation_kwargs.get("logits_processor"), prefix=prefix,
        )

    def _apply(self, case: CaseWork) -> AppliedEdit:
        return self._install([case], lambda: self.editor.apply(case.edit))

    def _install(self, cases: list[CaseWork], install) -> AppliedEdit:
        """`install()` (the method installing the edits of `cases`), seeded from the first case; a failed edit
        is recorded for every case of `cases` and nothing is left in force."""
        torch.manual_seed(self.seed + cases[0].case_number)
        self.edit_count += len(cases)
        try:
            with context_limit(self.model, self.max_length):  # a method's own additions must fit too
                return install()
        except EditFailedError as exc:
            for case in cases:
                self._record_failure(case, str(exc))
            return AppliedEdit()

    def _record_failure(self, case: CaseWork, reason: str) -> None:
        logger.warning("edit failed for case %s (%s); its answers come from the unedited model", case.case_key, reason)
        self.failed_edits.append({"case_key": case.case_key, "reason": reason})
        run_state.record_failure(case.case_key, reason)

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        cases = plan_cases(requests)
        # Untokenisable answers and questions too long for the model stop here, before any edit or stored answer.
        preflight.check_requests(
            requests, cases, self.tokenizer, self.max_length, self.protocol, self.max_gen_toks, check_edits=self.method_name != "none"
        )
        run_state.FAILED_EDITS.clear()  # the harness asks once per evaluation; older failures are not ours
        run_state.IMMEDIATE_ANSWERS.clear()
        answers: list[str | None] = [None] * len(requests)
        store = self._answer_store([case.case_key for case in cases])
        signatures: dict[int, str] = {}
        if store is not None:
            for case in cases:
                signatures.update({i: request_signature(requests[i], case.occurrence[i]) for i in case.indices})

        def take_stored(case: CaseWork, entry: dict) -> None:
            self._store(answers, case.indices, [entry["answers"][signatures[i]] for i in case.indices])
            if entry.get("failure"):
                self._record_failure(case, entry["failure"])
            if entry.get("immediate") is not None:
                run_state.record_immediate(case.case_key, entry["immediate"])

        todo = []
        for case in cases:
            entry = store.finished(case.case_key, [signatures[i] for i in case.indices]) if store else None
            if entry is None:
                todo.append(case)
            else:
                take_stored(case, entry)
        if store is not None and len(todo) < len(cases):
            logger.info("answer store %s: %d of %d cases already answered, resuming", store.path, len(cases) - len(todo), len(cases))
        # Counts answers, not cases: a weight-free chunk of many cases is answered in slices that each
        # move the bar (a case-level bar sat still for a whole chunk, 20 minutes with IKE under load).
        waiting = {id(case) for case in todo}
        stored = sum(len(case.indices) for case in cases if id(case) not in waiting)
        progress = tqdm(
            total=sum(len(case.indices) for case in cases),
            initial=stored,
            desc=f"edited-hf {self.method_name} (edit_lang={self.edit_lang})",
            unit="answer",
            disable=disable_tqdm or self.rank != 0,
        )
        progress.set_postfix_str(f"cases {len(cases) - len(todo)}/{len(cases)}", refresh=False)
        self._progress, cases_done = progress, len(cases) - len(todo)
        if todo:
            self.editor.ensure_prepared()
        reference = WeightSnapshot(self.model) if self.verify_restore and self.editor.modifies_weights else None

        def finished(chunk: list[CaseWork], immediate: dict[str, str] | None = None) -> None:
            """Checks and stores answered cases at once, so that an interrupted run loses none of them."""
            nonlocal cases_done
            changed = reference.first_change(self.model) if reference is not None else None
            if changed is not None:
                raise RuntimeError(f"method '{self.method_name}' did not restore the model exactly after case {chunk[-1].case_key}: "
                                   f"{changed} differs from before the first edit")
            if store is not None:
                for case in chunk:
                    store.record(case.case_key, {signatures[i]: answers[i] for i in case.indices}, run_state.FAILED_EDITS.get(case.case_key),
                                 (immediate or {}).get(case.case_key))
            cases_done += len(chunk)
            waiting.difference_update(id(case) for case in chunk)
            progress.set_postfix_str(f"cases {cases_done}/{len(cases)}")

        def pending_chunks(chunks: list[list[CaseWork]]):
            """The chunks in `case_order`, each with its cases still to answer. Before each chunk the store is
            read again: cases another process of this run (case_order=reverse) finished meanwhile are taken
            from it, so the two meet in the middle and neither does a case the other has done."""
            nonlocal cases_done
            for chunk in reversed(chunks) if self.case_order == "reverse" else chunks:
                if store is not None:
                    store.refresh()
                    for case in chunk:
                        entry = store.finished(case.case_key, [signatures[i] for i in case.indices]) if id(case) in waiting else None
                        if entry is not None:
                            take_stored(case, entry)
                            waiting.discard(id(case))
                            cases_done += 1
                            progress.update(len(case.indices))
                            progress.set_postfix_str(f"cases {cases_done}/{len(cases)}")
                pending = [case for case in chunk if id(case) in waiting]
                if pending:
                    yield chunk, pending

        if self.edit_mode == "sequential":
            if todo and len(todo) < len(cases):
                raise ConfigurationError(
                    f"answer store {store.path} holds {len(cases) - len(todo)} of the {len(cases)} cases of an interrupted "
                    "edit_mode=sequential run; it cannot be resumed, since every answer depends on all the edits before it. "
                    f"Delete {store.path} to run the sequence again from the start."
                )
            if todo:
                self._answer_sequence(requests, todo, answers, finished)
            elif self.checkpoint_writer is not None:
                logger.warning("every answer came from the answer store %s: no checkpoint answers were written to %s",
                               store.path, self.checkpoint_writer.path)
        elif self.edit_mode == "batch":
            # Batches are cut from every case, not from those left, so a resumed run installs the same edits together.
            for batch, _ in pending_chunks(cut(cases, self.edits_per_batch)):
                self._answer_batch(requests, batch, answers, finished)
        elif self.editor.modifies_weights:
            # Chunks are cut from every case too: the chunk's δ are optimised in one padded batch whose rounding
            # depends on which cases share it, so a resumed run must form the same chunks to give the same answers.
            for chunk, pending in pending_chunks(cut(cases, self.edit_batch)):
                self._answer_edited_chunk(requests, chunk, pending, answers, finished)
        else:
            for _, pending in pending_chunks(cut(todo, self.cross_case_batch)):
                self._answer_weight_free_chunk(requests, pending, answers)
                finished(pending)
        progress.close()
        self._progress = None
        if self.failed_edits:
            logger.warning("%d edit(s) failed: %s", len(self.failed_edits), self.failed_edits)
        return [answer if answer is not None else "" for answer in answers]

    def _answer_edited_chunk(self, requests: list, chunk: list[CaseWork], pending: list[CaseWork], answers: list, finished) -> None:
        """A chunk of cases for a weight method: pre-edit answers together, the method's shared work
        (`precompute`), then edit, answer and restore case by case, calling `finished([case])` after each.
        Only `pending` cases are edited; the pre-edit answers and `precompute` still take the whole chunk
        (a chunk resumed part-way), since the batch they form decides their rounding."""
        clock = time.perf_counter
        started = clock()
        self._answer_pre_edit(requests, chunk, answers, keep=pending)
        shared_started = clock()
        with context_limit(self.model, self.max_length):
            self.editor.precompute([case.edit for case in chunk])
        # The chunk's shared work is counted in equal shares in every edited case's timings.
        pre_share, apply_share = (shared_started - started) / len(pending), (clock() - shared_started) / len(pending)
        for case in pending:
            edit_started = clock()
            applied = self._apply(case)
            answer_started = clock()
            try:
                post = case.post_edit
                self._answer_and_store(requests, post, [applied] * len(post), answers)
            finally:
                restore_started = clock()
                applied.restore()
                done = clock()
            self._record_timing([case], apply_share + answer_started - edit_started,
                                pre_share + restore_started - answer_started, done - restore_started)
            finished([case])

    def _answer_weight_free_chunk(self, requests: list, cases: list[CaseWork], answers: list) -> None:
        """A chunk of cases for a weight-free method: all edits, then the pre-edit and post-edit answers of
        every case in one call (such an edit only rewrites prompts, so the unedited model answers the
        pre-edit questions whatever edits are in force; one larger call batches questions of similar
        length together), then every restore."""
        clock = time.perf_counter
        started = clock()
        applied = self._apply_all(cases)
        answer_started = clock()
        try:
            pre = [i for case in cases for i in case.pre_edit]
            post = [i for case in cases for i in case.post_edit]
            edits = [AppliedEdit()] * len(pre) + [edit for case, edit in zip(cases, applied) for _ in case.post_edit]
            self._answer_and_store(requests, pre + post, edits, answers)
        finally:
            restore_started = clock()
            for edit in applied:
                edit.restore()
            done = clock()
        self._record_timing(cases, answer_started - started, restore_started - answer_started, done - restore_started)

    def _answer_batch(self, requests: list, cases: list[CaseWork], answers: list, finished) -> None:
        """edit_mode=batch: pre-edit answers, the cases' edits installed together (`apply_many`), every
        post-edit answer, restore. No `precompute`: a method's prepared work for one edit would be stale once
        the others are in force."""
        clock = time.perf_counter
        started = clock()
        self._answer_pre_edit(requests, cases, answers)
        applied = self._install(cases, lambda: self.editor.apply_many([case.edit for case in cases]))
        answer_started = clock()
        try:
            post = [i for case in cases for i in case.post_edit]
            self._answer_and_store(requests, post, [applied] * len(post), answers)
        finally:
            restore_started = clock()
            applied.restore()
            done = clock()
        self._record_timing(cases, answer_started - started, restore_started - answer_started, done - restore_started)
        finished(cases)

    def _answer_sequence(self, requests: list, cases: list[CaseWork], answers: list, finished) -> None:
        """edit_mode=sequential: every pre-edit answer on the unedited model; then the edits one after another
        with no restore between them, each case's reliability questions answered right after its own edit
        (the immediate answers); every post-edit question after the last edit; then the restores, in reverse.

        A weight method's edits pile up in the weights (`apply` per case, without `precompute`, which runs
        on the unedited model). A weight-free method's edits live in its handle, so after each case the
        previous handle is restored and `apply_many` gets every edit so far (the method's memory)."""
        clock = time.perf_counter
        started = clock()
        self._answer_pre_edit(requests, cases, answers)
        handles: list[AppliedEdit] = []
        remembered: list = []  # weight-free: the requests whose edits succeeded, in order
        immediate: dict[str, str] = {}
        self.editor.begin_sequence()
        try:
            if self.checkpoint_writer is not None:
                self.checkpoint_writer.start()
            for number, case in enumerate(cases, start=1):
                if self.editor.modifies_weights:
                    handles.append(self._apply(case))
                else:
                    for handle in handles:
                        handle.restore()
                    handles = []
                    handle = self._install([case], lambda: self.editor.apply_many(remembered + [case.edit]))
                    if case.case_key in run_state.FAILED_EDITS:  # its edit failed: keep the others
                        handle = self.editor.apply_many(remembered) if remembered else AppliedEdit()
                    else:
                        remembered.append(case.edit)
                    handles = [handle]
                in_force = EditStack(handles)
                for answer in self._answer(requests, case.reliability, [in_force] * len(case.reliability)):
                    immediate[case.case_key] = answer
                    run_state.record_immediate(case.case_key, answer)
                self._answer_checkpoint(requests, cases, number, in_force)
                if getattr(self, "_progress", None) is not None:  # the answer count stands still while edits pile up
                    self._progress.set_postfix_str(f"edits {number}/{len(cases)}")
            answer_started = clock()
            post = [i for case in cases for i in case.post_edit]
            self._answer_and_store(requests, post, [in_force] * len(post), answers)
        finally:
            restore_started = clock()
            for handle in reversed(handles):
                handle.restore()
            self.editor.end_sequence()
            done = clock()
        self._record_timing(cases, answer_started - started, restore_started - answer_started, done - restore_started)
        finished(cases, immediate)

    def _answer_checkpoint(self, requests: list, cases: list[CaseWork], edits_done: int, in_force: AppliedEdit) -> None:
        """`sequence_checkpoints`: after the k-th edit, the post-edit questions of the first k cases."""
        writer = self.checkpoint_writer
        if writer is None or not writer.due(edits_done, len(cases)):
            return
        post = [i for case in cases[:edits_done] for i in case.post_edit]
        writer.write(edits_done, requests, post, self._answer(requests, post, [in_force] * len(post)))

    def _answer_pre_edit(self, requests: list, cases: list[CaseWork], answers: list, keep: list[CaseWork] | None = None) -> None:
        """The unedited model's answers to the cases' pre-edit questions, in one call; with `keep`, only those
        cases' answers are stored (the others already hold answers from the store)."""
        pre = [i for case in cases for i in case.pre_edit]
        if keep is None or len(keep) == len(cases):
            self._answer_and_store(requests, pre, [AppliedEdit()] * len(pre), answers)
            return
        computed: list[str | None] = [None] * len(answers)
        self._answer_and_store(requests, pre, [AppliedEdit()] * len(pre), computed)
        kept = [i for case in keep for i in case.pre_edit]
        self._store(answers, kept, [computed[i] for i in kept])
        if getattr(self, "_progress", None) is not None:
            self._progress.update(len(kept) - len(pre))  # the bar counted the answers not kept

    def _answer_and_store(self, requests: list, indices: list[int], edits: list[AppliedEdit], answers: list) -> None:
        """`_answer` in slices sized from the measured time per answer so that each takes about
        PROGRESS_SECONDS; the progress bar moves after each slice. A slice is at least
        MIN_SLICE_BATCHES batches, so batching across questions of similar length is kept, and never
        splits the questions of one edit with a shared prefix (IKE's demonstrations are computed once per
        slice, so a split would compute them twice)."""
        floor = MIN_SLICE_BATCHES * self._teacher_forcing_batch_size()
        start = 0
        while start < len(indices):
            end = start + max(floor, getattr(self, "_slice_size", floor))
            while end < len(indices) and edits[end] is edits[end - 1] and edits[end].shared_prefix:
                end += 1
            part = slice(start, end)
            started = time.perf_counter()
            self._store(answers, indices[part], self._answer(requests, indices[part], edits[part]))
            answered = len(indices[part])
            seconds_per_answer = (time.perf_counter() - started) / answered
            self._slice_size = max(floor, int(PROGRESS_SECONDS / max(seconds_per_answer, 1e-6)))
            if getattr(self, "_progress", None) is not None:
                self._progress.update(answered)
            start += answered

    def _record_timing(self, cases: list[CaseWork], apply_s: float, answer_s: float, restore_s: float) -> None:
        """Timings for the benchmark: one entry per case for weight methods, per chunk for weight-free ones."""
        self.timings.append(
            {
                "cases": len(cases),
                "case_keys": [case.case_key for case in cases],
                "apply_s": apply_s,
                "answer_s": answer_s,
                "restore_s": restore_s,
                "total_s": apply_s + answer_s + restore_s,
            }
        )

    def _apply_all(self, cases: list[CaseWork]) -> list[AppliedEdit]:
        self.edit_count += len(cases)
        torch.manual_seed(self.seed)
        return self.editor.apply_batch([case.edit for case in cases])

    def _answer_store(self, case_keys: list[str]) -> AnswerStore | None:
        if not self.answer_store_dir:
            return None
        identity_parts = {
            "model": self.weights_fingerprint,
            "method": self.method_name,
            "hparams": self.editor.hparams,
            "checkpoint": self.editor.context.checkpoint,
            "edit_lang": self.edit_lang,
            "protocol": self.protocol,
            "seed": self.seed,
            "version": PACKAGE_VERSION,
            **({"generation": "greedy, finished rows dropped, shared prefixes cached" if self.drop_finished_rows else "harness generate"} if self.protocol == "generate" else {}),
            **edit_modes.identity_parts(self.edit_mode, self.edits_per_batch, case_keys),
        }
        # The order is not part of the identity: the chunks are the same either way, and so are the answers.
        worker = "" if self.case_order == "forward" else self.case_order
        return AnswerStore(self.answer_store_dir, run_identity(**identity_parts), identity_parts, rank=self.rank, worker=worker)

    @staticmethod
    def _store(answers: list, indices: list[int], values: list[str]) -> None:
        for index, value in zip(indices, values):
            answers[index] = value
