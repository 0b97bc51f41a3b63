"""Fine-tuning on the device: validate chat data, tokenize it once, train LoRA adapters with
mlx-lm's tuner, keep them in a registry, export them in the PEFT layout that vLLM loads.

Errors, as a tree (each message is one or two sentences for a person)::

    FinetuneError                  any failure of this package a caller can act on
    ├── DataError                  the training data has invalid lines (see .issues)
    ├── AdapterNotFound            no adapter of that name in the registry
    ├── BaseMismatch               the adapter was trained on other weights than this model's
    ├── ExportRefused              the adapter kind cannot be written in the PEFT layout
    └── ResumeError                --resume found no checkpoint that fits the run

Modules: `data` (JSONL validation and split), `pipeline` (tokenize once, cache, length
buckets, `iterate_batches` for mlx-lm's trainer), `train` (+ `hooks`: progress, Ctrl-C),
`registry`, `export`, `evaluate`.
Only `data`, `registry` and `errors` import without MLX.
"""

from local.finetune.errors import (
    AdapterNotFound,
    BaseMismatch,
    DataError,
    ExportRefused,
    FinetuneError,
    ResumeError,
)

__all__ = [
    "AdapterNotFound",
    "BaseMismatch",
    "DataError",
    "ExportRefused",
    "FinetuneError",
    "ResumeError",
]
