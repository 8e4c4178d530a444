"""Why naive fine-tuning stopped learning new tasks (issue #20): readout comparison for naive sequential fine-tuning of MiniLM on the `reviews` stream.

Reproduces the clbench runner defaults (AdamW lr 1e-4, wd 0.01, fused; batch 16; 3 epochs/task; warm-up 10% then
linear decay per task; fresh optimizer per task; grad clip 1.0 over all params; CE over all 7 logits; argmax over
all 7 logits at eval; BatchPlan order from one torch.Generator(seed) shared across tasks; build_model(seed)).

Readouts:
  cls_pooler : the HF BertForSequenceClassification as built (CLS -> pooler dense+tanh -> dropout -> linear)
  mean       : masked mean of last-layer token states -> same dropout -> same (identically initialised) linear
  cls_nopool : last-layer CLS state (no pooler) -> same dropout -> same linear

Usage: python benchmarks/research/readout_collapse.py --readout cls_pooler --seed 0 [--labels-trick] [--probe]
           --out results/x.json

It trains on each task's training part (the validation part held out, as `clbench run` does) and
evaluates on its test set. Findings and figures: benchmarks/README.md, "Readout collapse".
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import time

import torch
from torch import nn

torch.set_num_threads(int(os.environ.get("READOUT_THREADS", "1")))  # 1: leaves a core to other work

from clbench.config import build_config
from clbench.data import BatchPlan
from clbench.data.prepare import prepare
from clbench.models import build_model
from clbench.training.runner import lr_schedule

NUM_LABELS = 7
PROBE_STEPS = (0, 5, 20, 50)  # task-2 steps at which features are probed (plus the last step)


class Readout(nn.Module):
    """Wraps the built BertForSequenceClassification; reuses its encoder, dropout and classifier (same init)."""

    def __init__(self, hf: nn.Module, kind: str):
        super().__init__()
        self.hf, self.kind = hf, kind
        self.last = {}  # tensors of the last forward pass (for probes / gradient hooks)

    def features(self, input_ids, attention_mask):
        out = self.hf.bert(input_ids=input_ids, attention_mask=attention_mask)
        h = out.last_hidden_state  # [B, T, H]
        cls = h[:, 0]
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        mean = (h * m).sum(1) / m.sum(1).clamp(min=1)
        pooler = self.hf.bert.pooler
        pre = pooler.dense(cls)  # same as HF pooler: dense(h[:,0]) -> tanh
        post = torch.tanh(pre)
        feats = {"cls": cls, "mean": mean, "pre_tanh": pre, "pooled": post}
        if self.kind == "cls_pooler":
            feats["readout"] = post
        elif self.kind == "mean":
            feats["readout"] = mean
        else:
            feats["readout"] = cls
        return feats

    def forward(self, input_ids, attention_mask):
        f = self.features(input_ids, attention_mask)
        self.last = f
        return self.hf.classifier(self.hf.dropout(f["readout"]))


def predict(model, split, bs=64):
    model.eval()
    logits = torch.empty(len(split), NUM_LABELS)
    with torch.inference_mode():
        for idx in BatchPlan(split, bs, shuffle=False).indices():
            b = split.batch(idx)
            logits[idx] = model(b.input_ids, b.attention_mask).float()
    return logits


def acc(logits, split):
    return float((logits.argmax(1) == split.labels).float().mean())


def eff_rank(x):
    """Participation ratio (sum l)^2/sum l^2 and entropy effective rank exp(H(l/sum l)) of the centred covariance."""
    xc = x - x.mean(0, keepdim=True)
    s = torch.linalg.svdvals(xc.double())
    lam = s ** 2
    pr = float(lam.sum() ** 2 / (lam ** 2).sum())
    p = lam / lam.sum()
    p = p[p > 0]
    er = float(torch.exp(-(p * p.log()).sum()))
    top1 = float(lam[0] / lam.sum())
    return pr, er, top1


def mean_offdiag_cos(x):
    xn = nn.functional.normalize(x.double(), dim=1)
    c = xn @ xn.T
    n = len(x)
    return float((c.sum() - c.diagonal().sum()) / (n * (n - 1)))


def probe(model, split, n=128):
    """Features of the first n examples of `split` in eval mode (dropout off)."""
    model.eval()
    sub = split.subset(torch.arange(min(n, len(split))))
    feats = {k: [] for k in ("cls", "mean", "pre_tanh", "pooled")}
    logits = []
    with torch.inference_mode():
        for idx in BatchPlan(sub, 32, shuffle=False).indices():
            b = sub.batch(idx)
            f = model.features(b.input_ids, b.attention_mask)
            for k, kept in feats.items():
                kept.append(f[k])
            logits.append(model.hf.classifier(f["readout"]))
    feats = {k: torch.cat(v) for k, v in feats.items()}
    logits = torch.cat(logits)
    res = {}
    for k in ("cls", "mean", "pooled"):
        pr, er, top1 = eff_rank(feats[k])
        res[k] = {"part_ratio": pr, "entropy_rank": er, "top1_var_frac": top1, "mean_cos": mean_offdiag_cos(feats[k]),
                  "mean_norm": float(feats[k].norm(dim=1).mean()),
                  # spread of features around their mean, relative to the mean vector's norm
                  "spread_over_mean": float((feats[k] - feats[k].mean(0)).norm(dim=1).mean() / feats[k].mean(0).norm())}
    pooled, pre = feats["pooled"], feats["pre_tanh"]
    res["pooler_sat_frac_099"] = float((pooled.abs() > 0.99).float().mean())
    res["pooler_sat_frac_09"] = float((pooled.abs() > 0.9).float().mean())
    res["pooler_mean_tanh_deriv"] = float((1 - pooled ** 2).mean())  # mean of tanh'(z)
    res["pre_tanh_abs_mean"] = float(pre.abs().mean())
    # units that are saturated with the same sign for >=95% of the examples
    sign_const = ((pooled > 0.99).float().mean(0) >= 0.95) | ((pooled < -0.99).float().mean(0) >= 0.95)
    res["pooler_units_const_saturated_frac"] = float(sign_const.float().mean())
    res["logits_mean"] = [round(float(v), 3) for v in logits.mean(0)]
    res["logit_new_minus_maxold"] = float((logits[:, 5:].max(1).values - logits[:, :5].max(1).values).mean())
    res["logit_5_minus_6_mean"] = float((logits[:, 5] - logits[:, 6]).mean())
    res["logit_5_minus_6_std"] = float((logits[:, 5] - logits[:, 6]).std())
    res["pred_hist"] = torch.bincount(logits.argmax(1), minlength=NUM_LABELS).tolist()
    return res


def grad_norms(model):
    groups = {"pooler": 0.0, "encoder": 0.0, "embeddings": 0.0, "head": 0.0}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        g = float(p.grad.detach().pow(2).sum())
        if ".pooler." in name:
            groups["pooler"] += g
        elif ".encoder." in name:
            groups["encoder"] += g
        elif ".embeddings." in name:
            groups["embeddings"] += g
        else:
            groups["head"] += g
    return {k: math.sqrt(v) for k, v in groups.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--readout", default="cls_pooler", choices=["cls_pooler", "mean", "cls_nopool"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--labels-trick", action="store_true")
    ap.add_argument("--probe", action="store_true")
    ap.add_argument("--max-steps", type=int, default=0, help="debug: cap steps per task")
    ap.add_argument("--out", required=True)
    ap.add_argument("--save-task1", default="", help="save model + RNG states after task 1 here")
    ap.add_argument("--load-task1", default="", help="skip training task 1: load this state (same readout+seed)")
    args = ap.parse_args()
    t0 = time.time()
    p = prepare(build_config({"stream": "reviews", "model": "minilm"}))
    seed = args.seed
    generator = torch.Generator().manual_seed(seed)
    hf = build_model("minilm", NUM_LABELS, seed, pooling="cls")  # transformers' own readout; Readout swaps it
    model = Readout(hf, args.readout)
    # check the wrapper reproduces the HF forward for the default readout (eval mode)
    if args.readout == "cls_pooler":
        b = p.splits[0].test.batch(torch.arange(8))
        hf.eval()
        with torch.inference_mode():
            d = (hf(input_ids=b.input_ids, attention_mask=b.attention_mask).logits - model(b.input_ids, b.attention_mask)).abs().max()
        assert d < 1e-5, d
    res = {"args": vars(args), "tasks": [], "pooler_init_weight_std": float(hf.bert.pooler.dense.weight.std())}
    for ti, train in enumerate(split.train for split in p.splits):
        info = p.infos[ti]
        params = [q for q in model.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=True)
        plan = BatchPlan(train, 16, shuffle=True, generator=generator)
        total = 3 * len(plan)
        if args.max_steps:
            total = min(total, args.max_steps)
        warmup = int(0.1 * total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(lr_schedule, total=total, warmup=warmup))
        mask = torch.full((NUM_LABELS,), float("-inf"))
        mask[info.label_offset:info.label_offset + info.num_classes] = 0.0
        log, probes = [], {}
        step = 0
        ts = time.time()
        if ti == 0 and args.load_task1:
            ck = torch.load(args.load_task1, weights_only=False)
            assert ck["readout"] == args.readout and ck["seed"] == seed
            model.load_state_dict(ck["model"])
            generator.set_state(ck["gen"])
            torch.set_rng_state(ck["rng"])
            log = ck["log"]
            step = total
            res["loaded_task1"] = args.load_task1
        while step < total:
            for batch in plan:
                if step >= total:
                    break
                if args.probe and ti == 1 and step in PROBE_STEPS:
                    probes[step] = probe(model, train)
                model.train()
                logits = model(batch.input_ids, batch.attention_mask)
                if ti == 1 or args.probe:
                    for k in ("pooled", "cls", "mean", "pre_tanh"):
                        if model.last[k].requires_grad:
                            model.last[k].retain_grad()
                tl = logits + mask if args.labels_trick else logits
                loss = nn.functional.cross_entropy(tl.float(), batch.labels)
                loss.backward()
                entry = {"step": step, "loss": float(loss)}
                if ti == 1 or args.probe:
                    entry.update({f"g_{k}": v for k, v in grad_norms(model).items()})
                    for k in ("pooled", "pre_tanh", "cls", "mean"):
                        g = model.last[k].grad
                        entry[f"gfeat_{k}"] = None if g is None else float(g.norm())
                    lg = logits.detach()
                    entry["logit_new_minus_maxold"] = float((lg[:, 5:].max(1).values - lg[:, :5].max(1).values).mean())
                    entry["pred_hist"] = torch.bincount(lg.argmax(1), minlength=NUM_LABELS).tolist()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                log.append(entry)
        train_s = time.time() - ts
        if ti == 0 and args.save_task1:
            torch.save({"readout": args.readout, "seed": seed, "model": model.state_dict(), "gen": generator.get_state(),
                        "rng": torch.get_rng_state(), "log": log}, args.save_task1)
        if args.probe and ti == 1:
            probes[step] = probe(model, train)
        if args.probe and ti == 0:
            # features of the task-2 reviews and task-1 sentences right after task 1 are probed at task-2 step 0;
            # also probe task-1 training sentences for comparison
            probes["task1_sentences_after_task1"] = probe(model, train)
        te = time.time()
        evals = []
        for tj, test in enumerate(split.test for split in p.splits):
            lg = predict(model, test)
            evals.append({"task": p.infos[tj].name, "acc": acc(lg, test),
                          "pred_hist": torch.bincount(lg.argmax(1), minlength=NUM_LABELS).tolist()})
        res["tasks"].append({"task": info.name, "steps": step, "train_s": train_s, "eval_s": time.time() - te,
                             "eval": evals, "log": log, "probes": probes})
        print(f"[{args.readout} s{seed}{' LT' if args.labels_trick else ''}] after {info.name}: "
              + ", ".join(f"{e['task']}={e['acc']:.3f} {e['pred_hist']}" for e in evals)
              + f" (train {train_s:.0f}s)", flush=True)
    res["wall_s"] = time.time() - t0
    with open(args.out, "w") as f:
        json.dump(res, f)
    print(f"wall {res['wall_s']:.0f}s -> {args.out}")


if __name__ == "__main__":
    main()
