"""One epoch of Pfeiffer adapter training on SST-2 with AdapterHub's AdapterTrainer (the peer
side of benchmarks/bench_e2e.py). Runs in the peers' venv; prints one JSON line."""
import argparse
import json
import resource
import time

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--data-dir", required=True)
ap.add_argument("--train-size", type=int, default=8000)
ap.add_argument("--batch-size", type=int, default=32)
ap.add_argument("--max-length", type=int, default=128)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--out", default="/tmp/peer_e2e")
a = ap.parse_args()

t0 = time.time()
import adapters  # noqa: E402
import datasets  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, DataCollatorWithPadding, TrainingArguments  # noqa: E402

torch.manual_seed(0)
ds = datasets.load_dataset("json", data_files={"train": f"{a.data_dir}/sst2/train.jsonl",
                                                "validation": f"{a.data_dir}/sst2/validation.jsonl"})
train = ds["train"].shuffle(seed=0).select(range(a.train_size))
tok = AutoTokenizer.from_pretrained(a.model)
enc = lambda b: tok(b["sentence"], truncation=True, max_length=a.max_length)  # noqa: E731
train = train.map(enc, batched=True, remove_columns=["sentence", "idx"])
dev = ds["validation"].map(enc, batched=True, remove_columns=["sentence", "idx"])
model = adapters.AutoAdapterModel.from_pretrained(a.model)
model.add_adapter("sst2", config=adapters.SeqBnConfig(reduction_factor=384 / 64))  # Pfeiffer, bottleneck 64
model.add_classification_head("sst2", num_labels=2)
model.train_adapter("sst2")
args = TrainingArguments(output_dir=a.out, per_device_train_batch_size=a.batch_size, per_device_eval_batch_size=64,
                         learning_rate=a.lr, num_train_epochs=1, warmup_ratio=0.1, lr_scheduler_type="linear",
                         weight_decay=0.01, logging_steps=50, save_strategy="no", report_to=[], seed=0,
                         dataloader_num_workers=0, use_cpu=True)


def metrics(p):
    return {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())}


trainer = adapters.AdapterTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                                  data_collator=DataCollatorWithPadding(tok), compute_metrics=metrics)
setup = time.time() - t0
t1 = time.time()
trainer.train()
train_s = time.time() - t1
ev = trainer.evaluate()
print(json.dumps({"side": "adapters", "setup_s": round(setup, 1), "train_s": round(train_s, 1),
                  "total_s": round(time.time() - t0, 1), "dev_accuracy": ev["eval_accuracy"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
