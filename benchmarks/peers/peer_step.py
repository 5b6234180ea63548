"""PyTorch peer worker for benchmarks/bench_step.py (runs inside the peers' venv).

The same train step a PyTorch user would run: AdapterHub ``adapters`` (Pfeiffer =
``SeqBnConfig``, Houlsby = ``DoubleSeqBnConfig``, bottleneck 64, ``train_adapter`` + a
classification head), ``peft`` LoRA (r 8, alpha 8, query/value, no LoRA dropout), AdapterFusion over three
Pfeiffer adapters (``add_adapter_fusion(Fuse(...))`` + ``train_adapter_fusion``, the fusion
regularisation added to the loss as ``AdapterTrainer`` adds it), or plain
``transformers`` full fine-tuning; forward + cross-entropy + backward + grad-norm clipping 1.0
+ ``torch.optim.AdamW``, dropout on. ``--dtype bfloat16`` runs forward and loss under
``torch.autocast(device, bfloat16)`` (what HF Trainer's ``bf16=True`` does). ``--device cuda``
runs on the GPU (benchmarks/bench_gpu.py); ``--model-path random`` gives a random model of the
MiniLM shape (6 x 384, for machines without the packaged weights).

Protocol (lines on stdin / stdout, so the driver can interleave repetitions with jadapt):
prints ``READY {json}`` after warm-up, then answers ``train N`` / ``eval N`` with
``TIMES [seconds, ...]`` and ``quit`` with ``DONE {"maxrss_mb": ...}``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time


def build(args):
    import torch  # noqa: F401  (fail here, before transformers, if torch is missing)
    import transformers

    if args.model == "minilm" and args.model_path == "random":
        path = None
        config = transformers.BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                         intermediate_size=1536)
    elif args.model == "minilm":
        path = args.model_path
        config = transformers.AutoConfig.from_pretrained(path)
    else:  # bert-base-sized random model, same config as jadapt's side
        path = None
        config = transformers.BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                         intermediate_size=3072)
    config.num_labels = 2
    hidden = config.hidden_size

    if args.method in ("pfeiffer", "houlsby"):
        import adapters

        cls = adapters.SeqBnConfig if args.method == "pfeiffer" else adapters.DoubleSeqBnConfig
        if path:
            model = adapters.AutoAdapterModel.from_pretrained(path, config=config)
        else:
            model = adapters.AutoAdapterModel.from_config(config)
        model.add_adapter("a", config=cls(reduction_factor=hidden / args.bottleneck))
        model.add_classification_head("a", num_labels=2)
        model.train_adapter("a")
    elif args.method == "fusion":
        import adapters
        from adapters.composition import Fuse

        model = (adapters.AutoAdapterModel.from_pretrained(path, config=config) if path
                 else adapters.AutoAdapterModel.from_config(config))
        for name in ("a", "b", "c"):
            model.add_adapter(name, config=adapters.SeqBnConfig(reduction_factor=hidden / args.bottleneck))
        fuse = Fuse("a", "b", "c")
        model.add_adapter_fusion(fuse)  # AdapterHub's default "dynamic" config
        model.add_classification_head("fusion_head", num_labels=2)
        model.train_adapter_fusion(fuse)
        model.active_head = "fusion_head"
    elif args.method == "lora":
        import peft

        base = (transformers.AutoModelForSequenceClassification.from_pretrained(path, config=config) if path
                else transformers.AutoModelForSequenceClassification.from_config(config))
        lcfg = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=8, lora_alpha=8, lora_dropout=0.0,
                               target_modules=["query", "value"])
        model = peft.get_peft_model(base, lcfg)
    elif args.method == "full":
        model = (transformers.AutoModelForSequenceClassification.from_pretrained(path, config=config) if path
                 else transformers.AutoModelForSequenceClassification.from_config(config))
    else:
        raise SystemExit(f"unknown method {args.method}")
    return model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="minilm", choices=("minilm", "bert-base"))
    p.add_argument("--model-path", default=None)
    p.add_argument("--method", required=True)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--bottleneck", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args()

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    dev = torch.device(args.device)
    model = build(args).to(dev)
    trainable = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (args.batch, args.seq), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    batch = {k: v.to(dev) for k, v in batch.items()}
    labels = torch.randint(0, 2, (args.batch,), generator=g).to(dev)
    amp = args.dtype == "bfloat16"
    fusion_reg = args.method == "fusion"

    def train_step():
        model.train()
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=amp):
            logits = model(**batch).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        if fusion_reg:  # AdapterTrainer's callback backpropagates this term every step
            loss = loss + model.base_model.get_fusion_regularization_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def eval_step():
        model.eval()
        with torch.inference_mode(), torch.autocast(args.device, dtype=torch.bfloat16, enabled=amp):
            logits = model(**batch).logits
            return logits.float().argmax(-1).cpu()  # .cpu() waits for the GPU

    fns = {"train": train_step, "eval": eval_step}
    for _ in range(args.warmup):
        train_step()
        eval_step()
    info = {"setup_s": time.perf_counter() - t0, "torch": torch.__version__,
            "trainable_params": sum(q.numel() for q in trainable), "threads": torch.get_num_threads(),
            "transformers": __import__("transformers").__version__, "device": args.device}
    print("READY " + json.dumps(info), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "quit":
            break
        fn, times = fns[cmd[0]], []
        for _ in range(int(cmd[1])):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        print("TIMES " + json.dumps(times), flush=True)
    done = {"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if args.device == "cuda":
        done["device_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("DONE " + json.dumps(done), flush=True)


if __name__ == "__main__":
    main()
