"""Preference pairs tokenised for a causal language model: the `preference` and `generation` task kinds'
splits and batches.

A pair is a prompt and two responses, the chosen and the rejected one. Each becomes two token sequences,
``prompt + chosen`` and ``prompt + rejected`` (BOS first when the tokenizer has one, EOS last), sharing the
prompt's tokens; `prompt_lengths` says where the responses start. Only response tokens are scored: the
log-probability of a sequence is the sum over its response tokens of log p(token | everything before it).

`PairSplit` and `PairBatch` offer what the runner, `BatchPlan` and the episodic memories use of
`EncodedSplit` and `Batch` (lengths, batch, subset, concat, labels, task ids), so every part of the harness
that only moves examples around works on pairs unchanged. Where both responses are scored (DPO, evaluation) a
batch of B pairs goes through the model as one forward pass over 2B rows, the B chosen sequences then the B
rejected ones (`model_inputs`). A `generation` task stores its target answer as the chosen response and an
alternative answer as the rejected one: evaluation scores both, but training reads only the target's
likelihood, so its training forward passes take the B chosen rows alone (`chosen_inputs`, as
`RunContext.training_inputs` says).

`reference` holds, per pair, the log-probabilities of the chosen and the rejected response under the DPO
reference model (the model at the start of the task being trained), computed once per task by the runner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from clbench.data.render import split_preference


@dataclass(frozen=True)
class PairBatch:
    """B preference pairs, right-padded: chosen and rejected ids [B, W], the prompts' lengths and labels."""

    chosen_ids: Tensor  # [B, W]
    chosen_mask: Tensor  # [B, W]
    rejected_ids: Tensor  # [B, W]
    rejected_mask: Tensor  # [B, W]
    prompt_lengths: Tensor  # [B]: tokens before the first response token (BOS and prompt)
    labels: Tensor  # [B] global label of "chosen" (accuracy records count a pair as one example)
    task_ids: Tensor  # [B]
    index: Tensor | None = None  # [B] rows of the split the batch was cut from
    reference: Tensor | None = None  # [B, 2] reference log-probs of (chosen, rejected) responses

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def model_inputs(self) -> dict[str, Tensor]:
        """One forward pass over 2B rows: the chosen sequences, then the rejected ones."""
        return {"input_ids": torch.cat([self.chosen_ids, self.rejected_ids]),
                "attention_mask": torch.cat([self.chosen_mask, self.rejected_mask])}

    def chosen_inputs(self) -> dict[str, Tensor]:
        """Only the B chosen sequences: a generation task's targets for training, FIP's anchors, general text."""
        return {"input_ids": self.chosen_ids, "attention_mask": self.chosen_mask}

    def response_mask(self, rows: str = "both") -> Tensor:
        """[rows, W] bool, True where the token at that position is a response token (the model predicts it
        from the logits one position earlier). `rows`: "both" (chosen then rejected) or "chosen"."""
        masks = [self.chosen_mask] if rows == "chosen" else [self.chosen_mask, self.rejected_mask]
        prompts = self.prompt_lengths.repeat(len(masks))
        mask = torch.cat(masks).bool()
        positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
        return mask & (positions >= prompts.to(mask.device).unsqueeze(1))

    def to(self, device: torch.device) -> PairBatch:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return PairBatch(self.chosen_ids.to(device, non_blocking=True), self.chosen_mask.to(device, non_blocking=True),
                         self.rejected_ids.to(device, non_blocking=True),
                         self.rejected_mask.to(device, non_blocking=True),
                         self.prompt_lengths.to(device, non_blocking=True), self.labels.to(device, non_blocking=True),
                         self.task_ids.to(device, non_blocking=True), self.index, move(self.reference))

    def concat(self, other: PairBatch) -> PairBatch:
        """This batch's pairs followed by `other`'s, right-padded to the wider of the two.

        `chosen_inputs` of the result has this batch's chosen rows, then `other`'s; `model_inputs` has both
        batches' chosen rows, then both batches' rejected rows.
        """
        width = max(self.chosen_ids.shape[1], other.chosen_ids.shape[1])

        def pad(t: Tensor) -> Tensor:
            return torch.nn.functional.pad(t, (0, width - t.shape[1]))

        reference = None if self.reference is None or other.reference is None else \
            torch.cat([self.reference, other.reference])
        chosen_ids, chosen_mask, rejected_ids, rejected_mask = (torch.cat([pad(a), pad(b)]) for a, b in (
            (self.chosen_ids, other.chosen_ids), (self.chosen_mask, other.chosen_mask),
            (self.rejected_ids, other.rejected_ids), (self.rejected_mask, other.rejected_mask)))
        return PairBatch(chosen_ids, chosen_mask, rejected_ids, rejected_mask,
                         torch.cat([self.prompt_lengths, other.prompt_lengths]), torch.cat([self.labels, other.labels]),
                         torch.cat([self.task_ids, other.task_ids]), None, reference)

    @property
    def num_tokens(self) -> int:
        return int(self.chosen_mask.sum() + self.rejected_mask.sum())


@dataclass(frozen=True)
class PairSplit:
    """One tokenised split of a preference task: both sequences of every pair, right-padded with `pad_id`."""

    chosen_ids: Tensor  # [n, W]
    chosen_lengths: Tensor  # [n]
    rejected_ids: Tensor  # [n, W]
    rejected_lengths: Tensor  # [n]
    prompt_lengths: Tensor  # [n]
    labels: Tensor  # [n] global label of "chosen"
    task_ids: Tensor  # [n]
    pad_id: int = 0
    reference: Tensor | None = None  # [n, 2] the DPO reference's log-probs, attached by the runner per task

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def lengths(self) -> Tensor:
        """[n] the longer of each pair's two sequences (what a batch is padded to; `BatchPlan` sorts by it)."""
        return torch.maximum(self.chosen_lengths, self.rejected_lengths)

    def batch(self, index: Tensor) -> PairBatch:
        """Gather pairs `index`, trimmed to the longest of their sequences."""
        width = max(int(self.lengths[index].max()), 1) if len(index) else 1
        positions = torch.arange(width).unsqueeze(0)
        chosen_mask = (positions < self.chosen_lengths[index].unsqueeze(1)).long()
        rejected_mask = (positions < self.rejected_lengths[index].unsqueeze(1)).long()
        reference = None if self.reference is None else self.reference[index]
        return PairBatch(self.chosen_ids[index, :width], chosen_mask, self.rejected_ids[index, :width], rejected_mask,
                         self.prompt_lengths[index], self.labels[index], self.task_ids[index], index, reference)

    def subset(self, index: Tensor) -> PairSplit:
        reference = None if self.reference is None else self.reference[index]
        return PairSplit(self.chosen_ids[index], self.chosen_lengths[index], self.rejected_ids[index],
                         self.rejected_lengths[index], self.prompt_lengths[index], self.labels[index],
                         self.task_ids[index], self.pad_id, reference)

    def with_reference(self, reference: Tensor | None) -> PairSplit:
        """This split with the reference log-probs [n, 2] attached (None drops them)."""
        if reference is not None and tuple(reference.shape) != (len(self), 2):
            raise ValueError(f"reference log-probs must be [{len(self)}, 2], got {list(reference.shape)}")
        return replace(self, reference=reference)

    @staticmethod
    def concat(splits: Sequence[PairSplit]) -> PairSplit:
        width = max(max(s.chosen_ids.shape[1], s.rejected_ids.shape[1]) for s in splits)
        pad_id = splits[0].pad_id

        def padded(t: Tensor) -> Tensor:
            return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=pad_id)

        references = [s.reference for s in splits]
        reference = None if any(r is None for r in references) else torch.cat(references)  # type: ignore[arg-type]
        return PairSplit(torch.cat([padded(s.chosen_ids) for s in splits]),
                         torch.cat([s.chosen_lengths for s in splits]),
                         torch.cat([padded(s.rejected_ids) for s in splits]),
                         torch.cat([s.rejected_lengths for s in splits]),
                         torch.cat([s.prompt_lengths for s in splits]), torch.cat([s.labels for s in splits]),
                         torch.cat([s.task_ids for s in splits]), pad_id, reference)

    @property
    def num_tokens(self) -> int:
        return int(self.chosen_lengths.sum() + self.rejected_lengths.sum())


def prompt_text(tokenizer: object, prompt: str) -> str:
    """The prompt as the model reads it: through the tokenizer's chat template when it has one (an
    instruction-tuned model such as SmolLM2-Instruct), else the plain prompt followed by a newline."""
    template = getattr(tokenizer, "chat_template", None)
    if template:
        return str(tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True))
    return prompt + "\n"


def encode_pairs(texts: Sequence[str], labels: Sequence[int], offset: int, task_index: int, tokenizer: object,
                 max_length: int) -> PairSplit:
    """Preference texts (`join_preference`) -> a PairSplit of at most `max_length` tokens per sequence.

    The prompt keeps at most half the budget (its last tokens: the instruction's end and the template's
    assistant header stay next to the response); each response is cut to what remains, from its end. BOS
    starts and EOS ends every sequence when the tokenizer defines them (EOS is scored: ending the response is
    part of it). BOS is added only where the prompt does not already start with it (a chat template that
    opens with the BOS token, as SmolLM2's ChatML does, would otherwise put it there twice), and a prompt cut
    to its half keeps its BOS first.
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad_id = int(pad if pad is not None else (eos or 0))
    prefix = [bos] if bos is not None else []
    suffix = [eos] if eos is not None else []
    half = max(1, (max_length - len(suffix)) // 2)
    rows: list[tuple[list[int], list[int], int]] = []
    for text in texts:
        prompt, chosen, rejected = split_preference(text)
        ids = tokenizer([prompt_text(tokenizer, prompt), chosen, rejected],  # type: ignore[operator]
                        add_special_tokens=False)["input_ids"]
        body = ids[0][1:] if bos is not None and ids[0][:1] == [bos] else ids[0]
        keep = max(0, half - len(prefix))  # the prompt's last tokens that fit beside BOS
        head = prefix + body[max(0, len(body) - keep):]
        room = max_length - len(head) - len(suffix)
        rows.append((head + ids[1][:room] + suffix, head + ids[2][:room] + suffix, len(head)))
    width = max([max(len(c), len(r)) for c, r, _ in rows], default=1)

    def matrix(seqs: list[list[int]]) -> Tensor:
        out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        for i, seq in enumerate(seqs):
            out[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        return out

    chosen_rows = [c for c, _, _ in rows]
    rejected_rows = [r for _, r, _ in rows]
    global_labels = torch.tensor(list(labels), dtype=torch.long) + offset
    return PairSplit(matrix(chosen_rows), torch.tensor([len(c) for c in chosen_rows], dtype=torch.long),
                     matrix(rejected_rows), torch.tensor([len(r) for r in rejected_rows], dtype=torch.long),
                     torch.tensor([p for _, _, p in rows], dtype=torch.long), global_labels,
                     torch.full_like(global_labels, task_index), pad_id)


def encode_general(texts: Sequence[str], tokenizer: object, max_length: int) -> PairSplit:
    """Plain texts as a PairSplit whose chosen and rejected sequences are both the text (BOS first when the
    tokenizer has one, at most `max_length` tokens) and whose "response" is everything after the first token,
    so `clbench.preference` scores whole texts: perplexity and distances on general language."""
    bos = getattr(tokenizer, "bos_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    pad_id = int(pad if pad is not None else (eos or 0))
    rows = [([bos] if bos is not None else []) + ids
            for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]  # type: ignore[operator]
    rows = [row[:max_length] for row in rows if len(row) >= 2]
    width = max((len(r) for r in rows), default=1)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    zeros = torch.zeros(len(rows), dtype=torch.long)
    return PairSplit(ids, lengths, ids.clone(), lengths.clone(), torch.ones(len(rows), dtype=torch.long), zeros,
                     zeros.clone(), pad_id)
